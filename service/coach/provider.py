"""A provider's own records: redemptions (with reversal), reservations, offers, statements.
Every query is limited to the signed-in coach's provider."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import i18n, offers, payouts, providers, spreadsheet, vouchers
from ..auth import Principal, requires
from ..db import run_in_transaction
from ..errors import N_, DomainError, InvalidInput
from ..models import Application, Enrolment, Provider, Redemption, Scheme, Voucher, utcnow
from ..runtime import Runtime
from .common import CATEGORY_LABELS, NO_STORE, errors_of, page, parse_euros, principal, status, to_login

__all__ = ("ProviderPages",)

Short = Annotated[str, msgspec.Meta(max_length=300)]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class ReasonForm(msgspec.Struct, frozen=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class OfferForm(msgspec.Struct, frozen=True, kw_only=True):
    scheme: Short = ""
    title: Short = ""
    category: Short = ""
    price: Short = ""
    duration: Short = ""
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class LanguageForm(msgspec.Struct, frozen=True, kw_only=True):
    locale: Short = ""


class EmptyForm(msgspec.Struct, frozen=True, kw_only=True):
    """Buttons that only carry the CSRF token."""


async def _redemptions(session: AsyncSession, provider_id: int) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(Redemption, Application.company_name, Scheme.reversal_days)
        .join(Voucher, Voucher.id == Redemption.voucher_id)
        .join(Application, Application.id == Voucher.application_id)
        .join(Scheme, Scheme.id == Redemption.scheme_id)
        .where(Redemption.provider_id == provider_id)
        .order_by(Redemption.created_at.desc(), Redemption.id.desc())
        .limit(200)
    )
    now = utcnow()
    return [{"r": r, "company": company, "reversible": r.reversed_at is None
             and now <= r.created_at + dt.timedelta(days=days), "until": r.created_at + dt.timedelta(days=days)}
            for r, company, days in rows.all()]


class ProviderPages(Controller):
    path = "/coach"
    include_in_schema = False
    guards = [requires("coach")]
    exception_handlers = {NotAuthorizedException: to_login}

    # --- redemptions ---------------------------------------------------------------------------

    @get("/redemptions")
    async def redemptions(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                          reversed_: Annotated[int | None, QueryParameter(name="reversed")] = None) -> Template:
        return await _redemptions_page(rt, principal(request), reversed_id=reversed_)

    @post("/redemptions/{redemption_id:int}/reversal")
    async def reverse(self, request: Request[Any, Any, Any], redemption_id: FromPath[int],
                      data: Annotated[ReasonForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        reason = data.reason.strip()
        try:
            if len(reason) < 3:
                raise InvalidInput("reason-missing", N_("Write briefly why you reverse this (at least 3 characters)."),
                                  field="reason")
            await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(
                s, redemption_id, reason=reason, provider_id=who.provider_id))
        except DomainError as exc:
            return await _redemptions_page(rt, who, failed=(redemption_id, errors_of(exc), reason),
                                           status_code=status(exc))
        return Redirect(f"/coach/redemptions?reversed={redemption_id}", status_code=303, headers=NO_STORE)

    # --- reservations (holds) ------------------------------------------------------------------

    @get("/reservations")
    async def reservations(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                           done: FromQuery[str | None] = None) -> Template:
        return await _reservations_page(rt, principal(request), done=done)

    @post("/reservations/{hold_id:int}/confirm")
    async def confirm(self, request: Request[Any, Any, Any], hold_id: FromPath[int],
                      data: Annotated[EmptyForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        try:
            await run_in_transaction(rt.sessionmaker, lambda s: offers.confirm_reservation(
                s, rt, hold_id, provider_id=who.provider_id, recorded_by=who.actor))
        except DomainError as exc:
            return await _reservations_page(rt, who, failed=(hold_id, errors_of(exc)), status_code=status(exc))
        return Redirect("/coach/reservations?done=confirmed", status_code=303, headers=NO_STORE)

    @post("/reservations/{hold_id:int}/decline")
    async def decline(self, request: Request[Any, Any, Any], hold_id: FromPath[int],
                      data: Annotated[EmptyForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        try:
            await run_in_transaction(rt.sessionmaker, lambda s: offers.decline_reservation(
                s, hold_id, provider_id=who.provider_id))
        except DomainError as exc:
            return await _reservations_page(rt, who, failed=(hold_id, errors_of(exc)), status_code=status(exc))
        return Redirect("/coach/reservations?done=declined", status_code=303, headers=NO_STORE)

    # --- offers --------------------------------------------------------------------------------

    @get("/offers")
    async def offers_page(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Template:
        return await _offers_page(rt, principal(request), {}, {})

    @post("/offers")
    async def publish(self, request: Request[Any, Any, Any], data: Annotated[OfferForm, Form],
                      rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        values = msgspec.structs.asdict(data)
        try:
            offer_in = _offer_in(data)
            await run_in_transaction(rt.sessionmaker, lambda s: offers.publish_offer(s, who.provider_id, offer_in))
        except DomainError as exc:
            return await _offers_page(rt, who, values, errors_of(exc), status_code=status(exc))
        return Redirect("/coach/offers", status_code=303, headers=NO_STORE)

    @post("/offers/{offer_id:int}/hide")
    async def hide(self, request: Request[Any, Any, Any], offer_id: FromPath[int], data: Annotated[EmptyForm, Form],
                   rt: NamedDependency[Runtime]) -> Redirect:
        who = principal(request)
        await run_in_transaction(rt.sessionmaker, lambda s: offers.hide_offer(
            s, offer_id, by="provider", reason="withdrawn by provider", provider_id=who.provider_id))
        return Redirect("/coach/offers", status_code=303, headers=NO_STORE)

    # --- settings ------------------------------------------------------------------------------

    @get("/settings")
    async def settings_page(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                            done: FromQuery[bool] = False) -> Template:
        who = principal(request)
        async with rt.reader() as session:
            provider = await session.get_one(Provider, who.provider_id)
        return page("coach/settings.html", values={"locale": provider.locale}, errors={}, done=done,
                    provider=provider.name, who=who)

    @post("/settings")
    async def save_settings(self, request: Request[Any, Any, Any], data: Annotated[LanguageForm, Form],
                            rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        try:
            await run_in_transaction(
                rt.sessionmaker, lambda s: providers.set_mail_locale(s, who.provider_id, data.locale))
        except DomainError as exc:
            async with rt.reader() as session:
                name = (await session.get_one(Provider, who.provider_id)).name
            return page("coach/settings.html", status=status(exc), values={"locale": data.locale},
                        errors=errors_of(exc), done=False, provider=name, who=who)
        return Redirect("/coach/settings?done=true", status_code=303, headers=NO_STORE)

    # --- statement -----------------------------------------------------------------------------

    @get("/statement")
    async def statement(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                        month: FromQuery[str | None] = None) -> Template:
        who = principal(request)
        start, end = payouts.month_period(month)
        async with rt.sessionmaker() as session:
            st = await payouts.statement(session, who.provider_id, start, end)
        previous = (start - dt.timedelta(days=1)).strftime("%Y-%m")
        return page("coach/statement.html", st=st, month=start.strftime("%Y-%m"), month_start=start, previous=previous,
                    next_month=end.strftime("%Y-%m"), categories=CATEGORY_LABELS, who=who)

    @get("/statement.csv")
    async def statement_csv(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                            month: FromQuery[str | None] = None) -> Response[bytes]:
        who = principal(request)
        start, end = payouts.month_period(month)
        async with rt.sessionmaker() as session:
            st = await payouts.statement(session, who.provider_id, start, end)
        _ = i18n.gettext
        headers = [_("Date"), _("Kind"), _("Redemption"), _("Scheme"), _("Category"), _("Reference"),
                   _("Invoice amount"), _("Paid from voucher"), _("Payment batch")]
        labels = {k: _(v) for k, v in CATEGORY_LABELS.items()} | {"redemption": _("Redemption"),
                                                                  "reversal": _("Reversal")}
        body = payouts.statement_csv(st, headers=headers, labels=labels)
        name = f"statement-{start.strftime('%Y-%m')}.csv"
        return Response(body, media_type=spreadsheet.MEDIA_TYPE,
                        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'})


def _offer_in(data: OfferForm) -> offers.OfferIn:
    price = parse_euros(data.price, field="price")
    if data.category not in CATEGORY_LABELS:
        raise InvalidInput("category-missing", N_("Choose what you offer."), field="category")
    if len(data.title.strip()) < 3 or len(data.title) > 120:
        raise InvalidInput("title-missing", N_("Give the offer a title of 3 to 120 characters."), field="title")
    if not data.duration.strip() or len(data.duration) > 120:
        raise InvalidInput("duration-missing", N_("Say how long it takes or how many sessions it has."),
                          field="duration")
    return offers.OfferIn(scheme=data.scheme, title=data.title.strip(), category=data.category,  # type: ignore[arg-type]
                          price_cents=price, duration=data.duration.strip(), description=data.description.strip())


async def _redemptions_page(rt: Runtime, who: Principal, *, reversed_id: int | None = None,
                            failed: tuple[int, dict[str, str], str] | None = None, status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        rows = await _redemptions(session, who.provider_id or 0)
    return page("coach/redemptions.html", status=status_code, rows=rows, reversed_id=reversed_id, failed=failed,
                categories=CATEGORY_LABELS, who=who)


async def _reservations_page(rt: Runtime, who: Principal, *, done: str | None = None,
                             failed: tuple[int, dict[str, str]] | None = None, status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        holds = await offers.provider_holds(session, who.provider_id or 0)
    return page("coach/reservations.html", status=status_code, holds=holds, done=done, failed=failed,
                categories=CATEGORY_LABELS, who=who)


async def _offers_page(rt: Runtime, who: Principal, values: dict[str, Any], errors: dict[str, str],
                       status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        mine = await offers.provider_offers(session, who.provider_id or 0)
        schemes = list(await session.scalars(
            select(Scheme).join(Enrolment, Enrolment.scheme_id == Scheme.id)
            .where(Enrolment.provider_id == who.provider_id, Enrolment.status == "approved")))
    slugs = {s.id: s for s in schemes}
    return page("coach/offers.html", status=status_code, offers=mine, schemes=schemes, slugs=slugs, values=values,
                errors=errors, categories=CATEGORY_LABELS, who=who)
