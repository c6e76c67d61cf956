"""JSON API under ``/api/v1``. Handlers translate HTTP into calls of the domain functions and
back; the rules live in the domain modules."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import applications, fastwrite, ratelimit, schemes, vouchers
from . import offers as offers_domain
from . import interventions, payouts, staff, validity
from .admin.api import AdminOperationsController
from .api_idempotent import run_idempotent, strict_decode
from .apidoc import (PUBLIC_PROBLEMS, TOKEN, TOKEN_PROBLEMS, WRITE_PROBLEMS, ApiController, IdempotentOperation, Month,
                     PublicId, RowId, SchemeFilter, Slug, VoucherCode, answer, problems)
from .auth import Principal, requires
from .db import run_in_transaction
from .errors import N_, Forbidden, NotFound
from .models import Enrolment, Provider, Redemption, Scheme, Voucher
from .runtime import Runtime
from .web import NO_STORE, client_ip

__all__ = ("api_router",)

Cents = Annotated[int, msgspec.Meta(gt=0, le=100_000_000, description="Amount in euro cents")]
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Reason = Annotated[str, msgspec.Meta(min_length=3, max_length=1000)]
Category = Literal["coaching", "retraining", "financial_advice"]


class RedeemIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_cents: Cents
    """The invoice amount; the voucher pays it less the scheme's own contribution."""
    category: Category
    reference: Reference
    """Invoice number or the coach's own reference."""
    session_date: dt.date | None = None


class HoldIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_cents: Cents
    category: Category
    reference: Reference


class ReasonIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason


class SeedIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seed: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class VoucherOut(msgspec.Struct, frozen=True, kw_only=True):
    """What a coach needs to see: validity, money, the company. No contact details."""

    voucher_id: int
    scheme: str
    status: str
    valid: bool
    company_name: str
    value_cents: int
    balance_cents: int
    held_cents: int
    redeemed_cents: int
    expires_at: dt.datetime
    """The moment it stops working: 00:00 Dutch time after ``valid_until``."""
    valid_until: dt.date
    """The last day it can be used (Dutch time)."""
    categories: list[str]
    own_contribution_percent: int


class RedemptionOut(msgspec.Struct, frozen=True, kw_only=True):
    redemption_id: int
    voucher_id: int
    category: str
    invoice_cents: int
    amount_cents: int
    own_contribution_cents: int
    reference: str
    created_at: dt.datetime
    reversed_at: dt.datetime | None
    voucher_balance_cents: int


class HoldOut(msgspec.Struct, frozen=True, kw_only=True):
    hold_id: int
    voucher_id: int
    status: str
    category: str
    invoice_cents: int
    amount_cents: int
    expires_at: dt.datetime


class VoucherEnded(msgspec.Struct, frozen=True, kw_only=True):
    voucher_id: int
    status: str
    returned_cents: int


class EnrolmentOut(msgspec.Struct, frozen=True, kw_only=True):
    enrolment_id: int
    provider_id: int
    scheme_id: int
    status: str
    categories: list[str]


def _principal(request: Request[Any, Any, Any]) -> Principal:
    return request.scope["user"]  # guards have checked it is there


def _voucher_out(voucher: vouchers.ScannedVoucher) -> VoucherOut:
    status = vouchers.effective_status(voucher)
    return VoucherOut(
        voucher_id=voucher.voucher_id,
        scheme=voucher.scheme,
        status=status,
        valid=status == "active" and not voucher.scheme_closed and voucher.balance_cents > 0,
        company_name=voucher.company_name,
        value_cents=voucher.value_cents,
        balance_cents=voucher.balance_cents,
        held_cents=voucher.held_cents,
        redeemed_cents=voucher.redeemed_cents,
        expires_at=voucher.expires_at,
        valid_until=validity.last_day(voucher.expires_at),
        categories=voucher.categories,
        own_contribution_percent=voucher.own_contribution_percent,
    )


async def find_voucher_limited(rt: Runtime, session: AsyncSession, code: str, client: str) -> Voucher:
    """Look up a code, refusing clients that have guessed wrong too often. Wrong guesses are
    counted by :func:`failed_lookups_counted` around the caller's transaction."""
    return await vouchers.find_voucher(session, rt, code, attempts_key=f"lookup:{client}")


def failed_lookups_counted(rt: Runtime, client: str) -> AbstractAsyncContextManager[None]:
    """Around a code lookup: the client's unknown and mistyped codes are limited in the database,
    counted before the lookup so that concurrent requests cannot slip past the limit
    (``ratelimit.failed_lookups_limited``)."""
    return ratelimit.failed_lookups_limited(rt, client)


def lookup_client(request: Request[Any, Any, Any]) -> str:
    principal = request.scope.get("user")
    if principal is not None:
        return principal.actor
    return f"ip:{client_ip(request)}"


async def _provider_name(session: AsyncSession, provider_id: int | None) -> str:
    if provider_id is None:
        raise Forbidden("provider-required", N_("Only a provider's account can do this."))
    return (await session.get_one(Provider, provider_id)).name


async def _redemption_out(session: AsyncSession, redemption: Any) -> RedemptionOut:
    voucher = await session.get(Voucher, redemption.voucher_id)  # already in the session: no query
    return _redemption_out_of(redemption, voucher.balance_cents if voucher is not None else 0)


def _redemption_out_of(redemption: Any, balance: int) -> RedemptionOut:
    return RedemptionOut(
        redemption_id=redemption.id,
        voucher_id=redemption.voucher_id,
        category=redemption.category,
        invoice_cents=redemption.invoice_cents,
        amount_cents=redemption.amount_cents,
        own_contribution_cents=redemption.own_contribution_cents,
        reference=redemption.reference,
        created_at=redemption.created_at,
        reversed_at=redemption.reversed_at,
        voucher_balance_cents=balance,
    )


def _hold_out(hold: Any) -> HoldOut:
    return HoldOut(hold_id=hold.id, voucher_id=hold.voucher_id, status=hold.status, category=hold.category,
                   invoice_cents=hold.invoice_cents, amount_cents=hold.amount_cents, expires_at=hold.expires_at)


class PublicController(ApiController):
    """Open to everyone: scheme figures, application status, the lottery draw. No personal data."""

    path = "/"
    tags = ["public"]
    problem_statuses = PUBLIC_PROBLEMS

    @get("/schemes")
    async def list_schemes(self, rt: NamedDependency[Runtime]) -> list[schemes.SchemeSummary]:
        async with rt.reader() as session:
            return [await schemes.summary(session, s) for s in await session.scalars(select(Scheme).order_by(Scheme.id))]

    @get("/schemes/{slug:str}", responses=problems(404))
    async def scheme_summary(self, slug: Slug, rt: NamedDependency[Runtime]) -> schemes.SchemeSummary:
        async with rt.reader() as session:
            return await schemes.summary(session, await schemes.get_scheme(session, slug))

    @get("/schemes/{slug:str}/draw", responses=problems(404))
    async def scheme_draw(self, slug: Slug, rt: NamedDependency[Runtime]) -> applications.DrawResult:
        async with rt.reader() as session:
            return await applications.published_draw(session, await schemes.get_scheme(session, slug))

    @get("/applications/{application_id:str}", responses=problems(404))
    async def application_state(
        self, application_id: PublicId, rt: NamedDependency[Runtime]
    ) -> applications.ApplicationState:
        async with rt.reader() as session:
            return await applications.application_state(session, application_id)


class VoucherController(ApiController):
    """What a coach does with a code: check it, redeem it, reserve against it."""

    path = "/vouchers"
    tags = ["coach"]
    guards = [requires("coach", "admin")]
    security = TOKEN
    problem_statuses = (*TOKEN_PROBLEMS, 404, 422, 429)

    @get("/{code:str}", response_headers=NO_STORE)
    async def lookup(self, request: Request[Any, Any, Any], code: VoucherCode, rt: NamedDependency[Runtime]) -> VoucherOut:
        client = lookup_client(request)
        async with failed_lookups_counted(rt, client):
            return _voucher_out(await vouchers.scan(rt, code, attempts_key=f"lookup:{client}"))

    @post("/{code:str}/redemptions", operation_class=IdempotentOperation,
          responses={201: answer(RedemptionOut, "Redeemed; the voucher's balance after it."), **WRITE_PROBLEMS})
    async def redeem(self, request: Request[Any, Any, Any], code: VoucherCode, data: JSONBody[RedeemIn],
                     rt: NamedDependency[Runtime]) -> Response[bytes]:
        principal = _principal(request)

        async def work(session: AsyncSession) -> RedemptionOut:
            voucher = await find_voucher_limited(rt, session, code, principal.actor)
            if principal.provider_id is None:
                raise Forbidden("provider-required", N_("Only a provider's account can do this."))
            redemption = await vouchers.redeem(
                session, rt, voucher, provider_id=principal.provider_id, category=data.category,
                invoice_cents=data.amount_cents, reference=data.reference, session_date=data.session_date,
                recorded_by=principal.actor)
            return await _redemption_out(session, redemption)

        async with failed_lookups_counted(rt, principal.actor):
            if "idempotency-key" in request.headers:
                return await run_idempotent(request, rt, work, body_type=RedeemIn)
            # One read and one short write (see ``service.fastwrite``); a stored answer for an
            # Idempotency-Key must commit with the redemption, so those take the session above.
            strict_decode(await request.body(), RedeemIn)
            redemption, balance = await fastwrite.redeem(
                rt, code, attempts_key=f"lookup:{principal.actor}", provider_id=principal.provider_id,
                category=data.category, invoice_cents=data.amount_cents, reference=data.reference,
                session_date=data.session_date, recorded_by=principal.actor)
            return Response(msgspec.json.encode(_redemption_out_of(redemption, balance)), status_code=201,
                            media_type="application/json", headers=NO_STORE)

    @post("/{code:str}/holds", operation_class=IdempotentOperation,
          responses={201: answer(HoldOut, "The amount is reserved until the hold expires."), **WRITE_PROBLEMS})
    async def hold(self, request: Request[Any, Any, Any], code: VoucherCode, data: JSONBody[HoldIn],
                   rt: NamedDependency[Runtime]) -> Response[bytes]:
        principal = _principal(request)

        async def work(session: AsyncSession) -> HoldOut:
            voucher = await find_voucher_limited(rt, session, code, principal.actor)
            await _provider_name(session, principal.provider_id)
            hold = await vouchers.create_hold(session, rt, voucher, provider_id=principal.provider_id or 0,
                                              category=data.category, invoice_cents=data.amount_cents,
                                              reference=data.reference, created_by=principal.actor)
            return _hold_out(hold)

        async with failed_lookups_counted(rt, principal.actor):
            return await run_idempotent(request, rt, work, body_type=HoldIn)


class HoldController(ApiController):
    path = "/holds"
    tags = ["coach"]
    guards = [requires("coach", "admin")]
    security = TOKEN
    problem_statuses = (*TOKEN_PROBLEMS, 404)

    @post("/{hold_id:int}/confirm", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(RedemptionOut, "The reserved amount is redeemed."), **WRITE_PROBLEMS})
    async def confirm(self, request: Request[Any, Any, Any], hold_id: RowId,
                      rt: NamedDependency[Runtime]) -> Response[bytes]:
        principal = _principal(request)

        async def work(session: AsyncSession) -> RedemptionOut:
            await _provider_name(session, principal.provider_id)  # only a provider delivers
            redemption = await offers_domain.confirm_reservation(
                session, rt, hold_id, provider_id=principal.provider_id or 0, recorded_by=principal.actor)
            return await _redemption_out(session, redemption)

        return await run_idempotent(request, rt, work, status_code=200)

    @post("/{hold_id:int}/release", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(HoldOut, "The hold is released; the money is free again."), **WRITE_PROBLEMS})
    async def release(self, request: Request[Any, Any, Any], hold_id: RowId,
                      rt: NamedDependency[Runtime]) -> Response[bytes]:
        principal = _principal(request)
        provider_id = principal.provider_id if principal.role == "coach" else None

        async def work(session: AsyncSession) -> HoldOut:
            if provider_id is not None:  # the provider declines: both sides are mailed
                return _hold_out(await offers_domain.decline_reservation(session, hold_id, provider_id=provider_id))
            return _hold_out(await vouchers.release_hold(session, hold_id, reason="municipality"))

        return await run_idempotent(request, rt, work, status_code=200)


class RedemptionController(ApiController):
    path = "/redemptions"
    tags = ["coach"]
    guards = [requires("coach", "admin")]
    security = TOKEN
    problem_statuses = (*TOKEN_PROBLEMS, 404)

    @post("/{redemption_id:int}/reversal", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(RedemptionOut, "Reversed; the money is back on the voucher."), **WRITE_PROBLEMS})
    async def reverse(self, request: Request[Any, Any, Any], redemption_id: RowId, data: JSONBody[ReasonIn],
                      rt: NamedDependency[Runtime]) -> Response[bytes]:
        principal = _principal(request)
        provider_id = principal.provider_id if principal.role == "coach" else None

        async def work(session: AsyncSession) -> RedemptionOut:
            redemption = await vouchers.reverse_redemption(session, redemption_id, reason=data.reason,
                                                           provider_id=provider_id)
            return await _redemption_out(session, redemption)

        return await run_idempotent(request, rt, work, status_code=200, body_type=ReasonIn)


class AdminController(ApiController):
    """The municipality's operations for systems; the back-office screens call the same code."""

    path = "/admin"
    tags = ["admin"]
    guards = [requires("admin")]
    security = TOKEN
    problem_statuses = (*TOKEN_PROBLEMS, 404)

    @post("/schemes/{slug:str}/applications", operation_class=IdempotentOperation,
          responses={201: answer(applications.ApplicationState, "Registered and decided."), **WRITE_PROBLEMS})
    async def apply(self, request: Request[Any, Any, Any], slug: Slug, data: JSONBody[applications.ApplicantDetails],
                    rt: NamedDependency[Runtime]) -> Response[bytes]:
        """Register an application (for example from the municipality's intake) and decide it."""

        async def work(session: AsyncSession) -> applications.ApplicationState:
            scheme = await schemes.get_scheme(session, slug)
            application = await applications.submit(session, scheme, data)
            await applications.decide(session, rt, scheme, application, employees=data.employees,
                                      postcode=data.postcode)
            return await applications.state_after_decision(session, scheme, application)

        if "idempotency-key" not in request.headers:
            # One read and one short write (see ``service.fastwrite``) for what it decides.
            strict_decode(await request.body(), applications.ApplicantDetails)
            state = await fastwrite.apply(rt, slug, data)
            if state is not None:
                return Response(msgspec.json.encode(state), status_code=201, media_type="application/json",
                                headers=NO_STORE)
        return await run_idempotent(request, rt, work, body_type=applications.ApplicantDetails)

    @post("/vouchers/{voucher_id:int}/revocation", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(VoucherEnded, "Revoked; what was left returns to the budget."), **WRITE_PROBLEMS})
    async def revoke(self, request: Request[Any, Any, Any], voucher_id: RowId, data: JSONBody[ReasonIn],
                     rt: NamedDependency[Runtime]) -> Response[bytes]:
        before: dict[str, int] = {}

        async def work(session: AsyncSession) -> VoucherEnded:
            voucher = await session.get(Voucher, voucher_id)
            if voucher is None:
                raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
            before["returned"] = voucher.returned_cents
            ended = await vouchers.end_voucher(session, rt, voucher_id, status="revoked", reason=data.reason)
            return VoucherEnded(voucher_id=ended.id, status=ended.status,
                                returned_cents=ended.returned_cents - before["returned"])

        return await run_idempotent(request, rt, work, status_code=200, body_type=ReasonIn)

    @post("/schemes/{slug:str}/draw", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(applications.DrawResult, "The lottery's result."), **WRITE_PROBLEMS})
    async def draw(self, request: Request[Any, Any, Any], slug: Slug, data: JSONBody[SeedIn],
                   rt: NamedDependency[Runtime]) -> Response[bytes]:
        async def work(session: AsyncSession) -> applications.DrawResult:
            scheme = await schemes.get_scheme(session, slug)
            return await applications.draw(session, rt, scheme, data.seed)

        return await run_idempotent(request, rt, work, status_code=200, body_type=SeedIn)

    @post("/enrolments/{enrolment_id:int}/approval", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(EnrolmentOut, "The provider takes part."), **WRITE_PROBLEMS})
    async def approve_enrolment(self, request: Request[Any, Any, Any], enrolment_id: RowId,
                                rt: NamedDependency[Runtime]) -> Response[bytes]:
        async def work(session: AsyncSession) -> EnrolmentOut:
            return _enrolment_out(await interventions.decide_provider(session, rt, enrolment_id, approve=True))

        return await run_idempotent(request, rt, work, status_code=200)

    @post("/enrolments/{enrolment_id:int}/refusal", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(EnrolmentOut, "Refused; the provider is mailed the reason."), **WRITE_PROBLEMS})
    async def refuse_enrolment(self, request: Request[Any, Any, Any], enrolment_id: RowId, data: JSONBody[ReasonIn],
                               rt: NamedDependency[Runtime]) -> Response[bytes]:
        async def work(session: AsyncSession) -> EnrolmentOut:
            return _enrolment_out(await interventions.decide_provider(session, rt, enrolment_id, approve=False,
                                                                      reason=data.reason))

        return await run_idempotent(request, rt, work, status_code=200, body_type=ReasonIn)


def _enrolment_out(enrolment: Enrolment) -> EnrolmentOut:
    return EnrolmentOut(enrolment_id=enrolment.id, provider_id=enrolment.provider_id, scheme_id=enrolment.scheme_id,
                        status=enrolment.status, categories=list(enrolment.categories))


# --- provider applications, offers, statements, flagged redemptions --------------------------


class FlaggedOut(msgspec.Struct, frozen=True, kw_only=True):
    redemption_id: int
    provider_id: int
    voucher_id: int
    amount_cents: int
    created_at: dt.datetime
    flagged_at: dt.datetime
    note: str | None
    reversed: bool


class ProviderApplicationController(ApiController):
    """A provider applies to take part in a scheme; the municipality decides (admin API, CLI)."""

    path = "/provider-applications"
    tags = ["provider"]
    problem_statuses = PUBLIC_PROBLEMS

    @post("/", responses={201: answer(EnrolmentOut, "Received; the municipality decides."), **WRITE_PROBLEMS,
                          **problems(404, 429)})
    async def apply(self, request: Request[Any, Any, Any], data: JSONBody[staff.ProviderApplication],
                    rt: NamedDependency[Runtime]) -> Response[bytes]:
        client = client_ip(request)
        async with rt.sessionmaker() as session, session.begin():
            await ratelimit.check_limit(session, f"provider-apply:{client}", limit=rt.settings.limit_per_ip,
                                        window_seconds=rt.settings.limit_window_seconds)

        async def work(session: AsyncSession) -> EnrolmentOut:
            return _enrolment_out(await staff.apply(session, data))

        body = await run_in_transaction(rt.sessionmaker, lambda s: work(s))
        return Response(msgspec.json.encode(body), status_code=201, media_type="application/json")


class ProviderController(ApiController):
    """A provider's own offers, reservations and statements, for systems with a coach token."""

    path = "/provider"
    tags = ["provider"]
    guards = [requires("coach")]
    security = TOKEN
    problem_statuses = TOKEN_PROBLEMS

    @get("/statement", response_headers=NO_STORE, responses=problems(422))
    async def statement(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                        month: Month = None) -> payouts.Statement:
        start, end = payouts.month_period(month)
        async with rt.sessionmaker() as session:
            return await payouts.statement(session, _principal(request).provider_id or 0, start, end)

    @get("/offers")
    async def my_offers(self, request: Request[Any, Any, Any],
                        rt: NamedDependency[Runtime]) -> list[offers_domain.OfferOut]:
        async with rt.sessionmaker() as session:
            mine = await offers_domain.provider_offers(session, _principal(request).provider_id or 0)
            return [await offers_domain.offer_out(session, o) for o in mine]

    @post("/offers", operation_class=IdempotentOperation,
          responses={201: answer(offers_domain.OfferOut, "Published."), **WRITE_PROBLEMS, **problems(404)})
    async def publish(self, request: Request[Any, Any, Any], data: JSONBody[offers_domain.OfferIn],
                      rt: NamedDependency[Runtime]) -> Response[bytes]:
        principal = _principal(request)

        async def work(session: AsyncSession) -> offers_domain.OfferOut:
            offer = await offers_domain.publish_offer(session, principal.provider_id or 0, data)
            return await offers_domain.offer_out(session, offer)

        return await run_idempotent(request, rt, work, body_type=offers_domain.OfferIn)

    @get("/holds", response_headers=NO_STORE)
    async def holds(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> list[HoldOut]:
        async with rt.sessionmaker() as session:
            rows = await offers_domain.provider_holds(session, _principal(request).provider_id or 0)
            return [_hold_out(hold) for hold, _company in rows]


class OfferListController(ApiController):
    path = "/offers"
    tags = ["public"]
    problem_statuses = PUBLIC_PROBLEMS

    @get("/")
    async def visible(self, rt: NamedDependency[Runtime],
                      scheme: SchemeFilter = None) -> list[offers_domain.OfferOut]:
        async with rt.sessionmaker() as session:
            return [await offers_domain.offer_out(session, o)
                    for o in await offers_domain.visible_offers(session, scheme)]


class AdminCoachController(ApiController):
    path = "/admin"
    tags = ["admin"]
    guards = [requires("admin")]
    security = TOKEN
    problem_statuses = TOKEN_PROBLEMS

    @post("/offers/{offer_id:int}/hidden", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(offers_domain.OfferOut, "Hidden from the public list."), **WRITE_PROBLEMS,
                     **problems(404)})
    async def hide_offer(self, request: Request[Any, Any, Any], offer_id: RowId, data: JSONBody[ReasonIn],
                         rt: NamedDependency[Runtime]) -> Response[bytes]:
        async def work(session: AsyncSession) -> offers_domain.OfferOut:
            offer = await offers_domain.hide_offer(session, offer_id, by="municipality", reason=data.reason)
            return await offers_domain.offer_out(session, offer)

        return await run_idempotent(request, rt, work, status_code=200, body_type=ReasonIn)

    @get("/redemptions/flagged", response_headers=NO_STORE)
    async def flagged(self, rt: NamedDependency[Runtime]) -> list[FlaggedOut]:
        async with rt.sessionmaker() as session:
            rows = await session.scalars(
                select(Redemption).where(Redemption.flagged_at.is_not(None)).order_by(Redemption.flagged_at))
            return [FlaggedOut(redemption_id=r.id, provider_id=r.provider_id, voucher_id=r.voucher_id,
                               amount_cents=r.amount_cents, created_at=r.created_at, flagged_at=r.flagged_at,
                               note=r.flag_note, reversed=r.reversed_at is not None) for r in rows]


api_router = Router(
    path="/api/v1",
    route_handlers=[PublicController, VoucherController, HoldController, RedemptionController, AdminController,
                    ProviderApplicationController, ProviderController, OfferListController, AdminCoachController,
                    AdminOperationsController],
)
