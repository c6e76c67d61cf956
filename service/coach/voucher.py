"""The voucher as a coach meets it: the QR code's URL ``/v/{code}``, a typed code, and the form
that records what was delivered. Plus the page where an entrepreneur reports a redemption."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from .. import fastwrite, idempotency, signin, vouchers
from ..api import failed_lookups_counted, find_voucher_limited
from ..auth import requires
from ..codes import format_code, normalise_code
from ..db import run_in_transaction
from ..errors import N_, Conflict, DomainError, InvalidInput, NotFound
from ..models import Provider, Redemption, utcnow
from ..runtime import Runtime
from .common import CATEGORY_LABELS, NO_STORE, errors_of, page, parse_euros, principal, status, to_login

__all__ = ("CoachVoucherPages", "PublicVoucherPages")

Short = Annotated[str, msgspec.Meta(max_length=300)]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class CodeForm(msgspec.Struct, frozen=True, kw_only=True):
    code: Short = ""


class RedeemForm(msgspec.Struct, frozen=True, kw_only=True):
    amount: Short = ""
    category: Short = ""
    session_date: Short = ""
    reference: Short = ""
    idempotency_key: Short = ""


class ReportForm(msgspec.Struct, frozen=True, kw_only=True):
    note: Annotated[str, msgspec.Meta(max_length=1000)] = ""


def _new_key() -> str:
    return secrets.token_urlsafe(18)


def _voucher_context(found: vouchers.ScannedVoucher) -> dict[str, Any]:
    """What the coach sees: validity, money, expiry, the company. No contact details."""
    effective = vouchers.effective_status(found)
    if found.scheme_closed:
        effective = "scheme_closed"
    elif effective == "active" and found.balance_cents == 0:
        effective = "used_up"
    approved = found.enrolment_status == "approved"
    allowed = [c for c in found.categories if c in found.enrolment_categories]
    return {
        "voucher": found, "state": effective, "valid": effective == "active",
        "scheme": {"name": found.scheme_name, "name_en": found.scheme_name_en},
        "company_name": found.company_name, "approved": approved, "allowed": allowed, "categories": CATEGORY_LABELS,
        "own_percent": found.own_contribution_percent, "done": found.delivered,
    }


class PublicVoucherPages(Controller):
    """Pages reached without signing in: the QR code's landing page and the report link."""

    path = "/"
    include_in_schema = False

    @get("/v/{code:str}")
    async def voucher_page(self, request: Request[Any, Any, Any], code: FromPath[str], rt: NamedDependency[Runtime],
                           done: FromQuery[int | None] = None) -> Template:
        who = request.scope.get("user")
        if who is None or who.role != "coach" or who.provider_id is None:
            # Nothing is looked up: a stranger with the code learns only that this is a voucher.
            return page("coach/voucher_public.html", next=request.url.path)
        return await _coach_view(rt, who, code, done=done)

    @get("/report/{token:str}")
    async def report_page(self, token: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
        async with rt.sessionmaker() as session:
            redemption, provider = await _reported(session, rt, token)
        return page("coach/report.html", redemption=redemption, provider=provider, token=token,
                    categories=CATEGORY_LABELS, errors={}, values={})

    @post("/report/{token:str}")
    async def report(self, token: FromPath[str], data: Annotated[ReportForm, Form],
                     rt: NamedDependency[Runtime]) -> Template:
        async def work(session: AsyncSession) -> tuple[Redemption, Provider]:
            redemption, provider = await _reported(session, rt, token)
            # Only the first report sets the time and note: reloading the page changes nothing.
            await session.execute(
                update(Redemption).where(Redemption.id == redemption.id, Redemption.flagged_at.is_(None))
                .values(flagged_at=utcnow(), flag_note=data.note.strip() or None))
            await session.refresh(redemption)
            return redemption, provider

        redemption, provider = await run_in_transaction(rt.sessionmaker, work)
        return page("coach/report.html", redemption=redemption, provider=provider, token=token,
                    categories=CATEGORY_LABELS, reported=True, errors={}, values={})


async def _reported(session: AsyncSession, rt: Runtime, token: str) -> tuple[Redemption, Provider]:
    value = rt.unsign(signin.REPORT_REDEMPTION, token)
    redemption = await session.get(Redemption, int(value)) if value and value.isdigit() else None
    if redemption is None:
        raise NotFound("report-link-invalid", N_("This link is not valid or has expired. "
                                                 "Please call the municipality to report a redemption."))
    return redemption, await session.get_one(Provider, redemption.provider_id)


async def _coach_view(rt: Runtime, who: Any, code: str, *, done: int | None = None, values: dict[str, str] | None = None,
                      errors: dict[str, str] | None = None, status_code: int = 200) -> Template:
    context: dict[str, Any] = {"code": code, "values": values or {"session_date": dt.date.today().isoformat()},
                               "errors": errors or {}, "key": _new_key()}
    try:
        # The whole page in one read, the API's scan (``vouchers.scan``), without a session.
        async with failed_lookups_counted(rt, who.actor):
            context.update(_voucher_context(await vouchers.scan(
                rt, code, attempts_key=f"lookup:{who.actor}", provider_id=who.provider_id, delivered=done)))
    except DomainError as exc:
        return page("coach/voucher.html", status=status(exc), code=code, lookup_error=errors_of(exc),
                    values={"code": code}, errors={}, key="", who=who)
    return page("coach/voucher.html", status=status_code, who=who, **context)


class CoachVoucherPages(Controller):
    path = "/"
    include_in_schema = False
    guards = [requires("coach")]
    exception_handlers = {NotAuthorizedException: to_login}

    @get("/coach")
    async def home(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Template:
        return page("coach/home.html", values={}, errors={}, who=principal(request))

    @post("/coach/code")
    async def typed_code(self, request: Request[Any, Any, Any], data: Annotated[CodeForm, Form],
                         rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        try:
            async with failed_lookups_counted(rt, who.actor), rt.sessionmaker() as session:
                await find_voucher_limited(rt, session, data.code, who.actor)
        except DomainError as exc:
            errors = errors_of(exc)
            return page("coach/home.html", status=status(exc), values={"code": data.code}, who=who,
                        errors={"code": next(iter(errors.values()))})
        return Redirect(f"/v/{format_code(normalise_code(data.code))}", status_code=303, headers=NO_STORE)

    @post("/v/{code:str}")
    async def redeem(self, request: Request[Any, Any, Any], code: FromPath[str], data: Annotated[RedeemForm, Form],
                     rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        values = {"amount": data.amount, "category": data.category, "session_date": data.session_date,
                  "reference": data.reference}
        fields, errors = _checked(data)
        if errors:
            return await _coach_view(rt, who, code, values=values, errors=errors, status_code=422)
        # The key was made when the form was shown, so a double tap or a reload of the POST
        # claims the same key and gets the first answer instead of a second debit.
        fingerprint = idempotency.request_fingerprint("POST", request.url.path, msgspec.json.encode(fields))
        try:
            claimed = await idempotency.claim(rt.sessionmaker, scope=who.actor, key=f"form:{data.idempotency_key}",
                                              fingerprint=fingerprint)
        except (Conflict, InvalidInput):
            errors = {"form": _ALREADY_SENT}
            return await _coach_view(rt, who, code, values=values, errors=errors, status_code=409)
        if isinstance(claimed, idempotency.StoredAnswer):
            redemption_id = msgspec.json.decode(claimed.body)["redemption_id"]
            return Redirect(f"/v/{code}?done={redemption_id}", status_code=303, headers=NO_STORE)

        # One read and one write, the API's (``fastwrite.redeem``); the key's answer is stored in
        # that write, so a stored answer always means the redemption happened.
        answer = vouchers.Answer(claimed, 201, lambda redemption_id: msgspec.json.encode(
            {"redemption_id": redemption_id}))
        try:
            async with failed_lookups_counted(rt, who.actor):
                redemption, _balance = await fastwrite.redeem(
                    rt, code, attempts_key=f"lookup:{who.actor}", provider_id=who.provider_id,
                    category=fields["category"], invoice_cents=fields["amount_cents"], reference=fields["reference"],
                    session_date=dt.date.fromisoformat(fields["session_date"]) if fields["session_date"] else None,
                    recorded_by=who.actor, answer=answer)
        except DomainError as exc:
            # Nothing was recorded: forget the key, the form is shown again with a fresh one.
            await idempotency.release(rt.sessionmaker, claimed)
            return await _coach_view(rt, who, code, values=values, errors=errors_of(exc), status_code=status(exc))
        except BaseException:
            await idempotency.release(rt.sessionmaker, claimed)
            raise
        redemption_id = redemption.id
        return Redirect(f"/v/{code}?done={redemption_id}", status_code=303, headers=NO_STORE)


_ALREADY_SENT = N_("This form was already sent. Check the list of redemptions before you try again.")


def _checked(data: RedeemForm) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's fields as the domain needs them, and every mistake keyed by its field, so the
    coach corrects them all at once."""
    errors: dict[str, str] = {}

    def check(rule: Callable[[], Any]) -> Any:
        try:
            return rule()
        except DomainError as exc:
            errors.update(errors_of(exc))
            return None

    amount = check(lambda: parse_euros(data.amount))
    check(lambda: _category(data.category))
    day = data.session_date.strip()
    check(lambda: _session_date(day))
    reference = data.reference.strip()
    check(lambda: _reference(reference))
    if not 1 <= len(data.idempotency_key) <= 100:
        check(lambda: _raise(InvalidInput("form-expired", N_("This form is no longer valid. Please fill it in again."))))
    return {"amount_cents": amount, "category": data.category, "session_date": day, "reference": reference}, errors


def _raise(exc: DomainError) -> None:
    raise exc


def _category(category: str) -> None:
    if category not in CATEGORY_LABELS:
        raise InvalidInput("category-missing", N_("Choose what you delivered."), field="category")


def _session_date(day: str) -> None:
    if not day:
        return
    try:
        parsed = dt.date.fromisoformat(day)
    except ValueError:
        raise InvalidInput("date-invalid", N_("Type the date as year-month-day, for example 2026-11-23."),
                           field="session_date") from None
    if parsed > dt.date.today() + dt.timedelta(days=1):
        raise InvalidInput("date-in-future", N_("The date of the session cannot be in the future."),
                           field="session_date")


def _reference(reference: str) -> None:
    if not reference or len(reference) > 100:
        raise InvalidInput("reference-missing", N_("Fill in your invoice number or reference (at most 100 characters)."),
                           field="reference")
