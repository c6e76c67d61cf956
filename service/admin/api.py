"""The municipality's operations in the JSON API (``/api/v1/admin/…``, bearer token with role
``admin``): the same domain functions the staff pages under ``/beheer`` call
(``interventions``, ``reports``, ``service.audit``, ``service.privacy``), with strict bodies and
the answers as msgspec structs. Domain refusals become problem details in ``service.problems``.

``service.api`` registers these controllers; both run their writes through
``service.api_idempotent``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import applications, audit, history, privacy, schemes, spreadsheet, validity
from ..apidoc import (TEXT, TOKEN, TOKEN_PROBLEMS, WRITE_PROBLEMS, ApiController, IdempotentOperation, RowId, Slug, answer,
                      problems)
from ..auth import requires
from ..api_idempotent import run_idempotent
from ..db import run_in_transaction
from ..errors import N_, InvalidInput, NotFound
from ..models import Application, Enrolment, Provider, Scheme, Voucher
from ..runtime import Runtime
from ..web import NO_STORE
from .. import interventions, reports
from .web import report_csv_response

__all__ = ("AdminOperationsController",)

Reason = Annotated[str, msgspec.Meta(min_length=3, max_length=1000)]
OptionalReason = Annotated[str, msgspec.Meta(max_length=1000)]
SignedCents = Annotated[int, msgspec.Meta(ge=-100_000_000_000, le=100_000_000_000,
                                          description="Euro cents: positive to the reserve, negative back")]
KvkNumber = Annotated[str, PathParameter(pattern=r"^[0-9]{8}$", description="KvK number: 8 digits")]


# --- bodies --------------------------------------------------------------------------------------


class ApplicationDecisionIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    decision: Literal["approve", "refuse"]
    """``approve``: the firm's figures are right, the scheme's rules decide; ``refuse``: mail the reason."""
    reason: OptionalReason = ""
    """Required when refusing (at least 3 characters); sent to the applicant."""


class ReportDecisionIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    decision: Literal["keep", "reverse"]
    reason: Reason
    """Sent to the entrepreneur who reported the redemption."""


class ExtensionIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    until: dt.date
    """The last day (Dutch time) the voucher can be used; later than the current expiry."""
    reason: Reason


class ClosureIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason


class ReserveMoveIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_cents: SignedCents
    reason: Reason


# --- answers -------------------------------------------------------------------------------------


class ApplicationQueueItem(msgspec.Struct, frozen=True, kw_only=True):
    """An application the trade register could not decide, with what staff need to check it."""

    application_id: int
    public_id: str
    scheme: str
    status: str
    kvk_number: str
    company_name: str
    employees: int
    postcode: str
    registry_employees: int | None
    registry_postcode: str | None
    contact_name: str
    email: str
    created_at: dt.datetime


class EnrolmentQueueItem(msgspec.Struct, frozen=True, kw_only=True):
    enrolment_id: int
    scheme: str
    provider_id: int
    provider_name: str
    kvk_number: str
    email: str
    website: str | None
    categories: list[str]


class ApplicationDecided(msgspec.Struct, frozen=True, kw_only=True):
    application_id: int
    public_id: str
    scheme: str
    status: str
    waiting_list_position: int | None
    reasons: list[str]


class ReportDecided(msgspec.Struct, frozen=True, kw_only=True):
    redemption_id: int
    decision: str
    reason: str
    decided_by: str
    decided_at: dt.datetime


class VoucherExtended(msgspec.Struct, frozen=True, kw_only=True):
    voucher_id: int
    status: str
    expires_at: dt.datetime
    """The moment it stops working: 00:00 Dutch time after ``valid_until``."""
    valid_until: dt.date
    """The last day it can be used (Dutch time)."""


class SchemeClosed(msgspec.Struct, frozen=True, kw_only=True):
    scheme: str
    status: str
    closed_at: dt.datetime | None


class ReserveMoved(msgspec.Struct, frozen=True, kw_only=True):
    scheme: str
    moved_cents: int
    """As asked: positive went to the reserve, negative back to the budget."""
    budget_cents: int
    reserve_cents: int
    committed_cents: int


class AuditEntryOut(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    at: dt.datetime
    actor: str
    address: str
    action: str
    table_name: str
    row_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    chain_seq: int | None
    """Place in the hash chain; None for the second or so until the entry is sealed."""
    hash: str | None


class DataSubjectExport(msgspec.Struct, frozen=True, kw_only=True):
    """Everything held about one KvK number (``service.privacy.export_subject``)."""

    kvk_number: str
    exported_at: dt.datetime
    controller: str
    as_applicant: dict[str, list[dict[str, Any]]]
    as_provider: dict[str, list[dict[str, Any]]]


# --- helpers -------------------------------------------------------------------------------------


async def _idempotent(request: Request[Any, Any, Any], rt: Runtime,
                      work: Callable[[AsyncSession], Awaitable[msgspec.Struct]], *,
                      body_type: type[msgspec.Struct]) -> Response[bytes]:
    return await run_idempotent(request, rt, work, status_code=200, body_type=body_type)


def _actor(request: Request[Any, Any, Any]) -> str:
    return request.scope["user"].actor  # the guard has checked it is there


def _entry_out(entry: audit.AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(seq=entry.seq, at=entry.at, actor=entry.actor, address=entry.address, action=entry.action,
                         table_name=entry.table_name, row_id=entry.row_id, before=dict(entry.before or {}),
                         after=dict(entry.after or {}), chain_seq=entry.chain_seq,
                         hash=entry.hash)


class AdminOperationsController(ApiController):
    """Dashboard, council report, work queues, decisions, interventions, audit log and the
    data-subject export: what staff do under ``/beheer``, for systems."""

    path = "/admin"
    tags = ["admin"]
    guards = [requires("admin")]
    security = TOKEN
    problem_statuses = TOKEN_PROBLEMS

    # --- figures ---------------------------------------------------------------------------------

    @get("/schemes/{slug:str}/dashboard", responses=problems(404))
    async def dashboard(self, slug: Slug, rt: NamedDependency[Runtime]) -> reports.Dashboard:
        async with rt.sessionmaker() as session:
            return await reports.dashboard(session, await schemes.get_scheme(session, slug))

    @get("/schemes/{slug:str}/report", responses=problems(404))
    async def report(self, slug: Slug, rt: NamedDependency[Runtime]) -> reports.CouncilReport:
        """The council report: counts and sums only, no personal data."""
        async with rt.sessionmaker() as session:
            return await reports.council_report(session, await schemes.get_scheme(session, slug))

    @get("/schemes/{slug:str}/report.csv", media_type=spreadsheet.MEDIA_TYPE, responses=problems(404))
    async def report_csv(self, slug: Slug, rt: NamedDependency[Runtime]) -> Response[bytes]:
        async with rt.sessionmaker() as session:
            scheme = await schemes.get_scheme(session, slug)
            report = await reports.council_report(session, scheme)
        return report_csv_response(report, scheme.slug)

    # --- work queues -----------------------------------------------------------------------------

    @get("/applications/undecided", response_headers=NO_STORE)
    async def undecided_applications(self, rt: NamedDependency[Runtime]) -> list[ApplicationQueueItem]:
        """Applications the trade register could not decide (``interventions.UNDECIDED``), oldest first."""
        async with rt.sessionmaker() as session:
            rows = (await session.execute(
                select(Application, Scheme.slug).join(Scheme, Scheme.id == Application.scheme_id)
                .where(Application.status.in_(interventions.UNDECIDED)).order_by(Application.created_at)
                .limit(200))).all()
        return [ApplicationQueueItem(
            application_id=a.id, public_id=a.public_id, scheme=slug, status=a.status, kvk_number=a.kvk_number,
            company_name=a.company_name, employees=a.employees, postcode=a.postcode,
            registry_employees=a.registry_employees, registry_postcode=a.registry_postcode,
            contact_name=a.contact_name, email=a.email, created_at=a.created_at) for a, slug in rows]

    @get("/enrolments/pending", response_headers=NO_STORE)
    async def pending_enrolments(self, rt: NamedDependency[Runtime]) -> list[EnrolmentQueueItem]:
        """Providers waiting for approval to take part in a scheme."""
        async with rt.sessionmaker() as session:
            rows = (await session.execute(
                select(Enrolment, Provider, Scheme.slug).join(Provider, Provider.id == Enrolment.provider_id)
                .join(Scheme, Scheme.id == Enrolment.scheme_id)
                .where(Enrolment.status == "pending", Provider.email_confirmed_at.is_not(None))
                .order_by(Enrolment.id).limit(200))).all()
        return [EnrolmentQueueItem(enrolment_id=e.id, scheme=slug, provider_id=p.id, provider_name=p.name,
                                   kvk_number=p.kvk_number, email=p.email, website=p.website,
                                   categories=list(e.categories)) for e, p, slug in rows]

    # --- decisions -------------------------------------------------------------------------------

    @post("/applications/{application_id:int}/decision", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(ApplicationDecided, "Decided; the applicant is mailed."), **WRITE_PROBLEMS,
                     **problems(404)})
    async def decide_application(self, request: Request[Any, Any, Any], application_id: RowId,
                                 data: JSONBody[ApplicationDecisionIn], rt: NamedDependency[Runtime]) -> Response[bytes]:
        """Decide an application the register could not decide; the applicant is mailed."""

        async def work(session: AsyncSession) -> ApplicationDecided:
            application = await interventions.decide_application(
                session, rt, application_id, approve=data.decision == "approve", reason=data.reason)
            scheme = await session.get_one(Scheme, application.scheme_id)
            state = await applications.state_after_decision(session, scheme, application)
            return ApplicationDecided(application_id=application.id, public_id=state.application_id,
                                      scheme=state.scheme, status=state.status,
                                      waiting_list_position=state.waiting_list_position, reasons=state.reasons)

        return await _idempotent(request, rt, work, body_type=ApplicationDecisionIn)

    @post("/redemptions/{redemption_id:int}/review", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(ReportDecided, "Decided; the entrepreneur is mailed."), **WRITE_PROBLEMS,
                     **problems(404)})
    async def decide_report(self, request: Request[Any, Any, Any], redemption_id: RowId,
                            data: JSONBody[ReportDecisionIn], rt: NamedDependency[Runtime]) -> Response[bytes]:
        """Keep or reverse a redemption an entrepreneur reported; the entrepreneur is mailed."""
        actor = _actor(request)

        async def work(session: AsyncSession) -> ReportDecided:
            review = await interventions.review_report(session, redemption_id, reverse_it=data.decision == "reverse",
                                                       reason=data.reason, decided_by=actor)
            return ReportDecided(redemption_id=review.redemption_id, decision=review.decision, reason=review.reason,
                                 decided_by=review.decided_by, decided_at=review.decided_at)

        return await _idempotent(request, rt, work, body_type=ReportDecisionIn)

    @get("/vouchers/{voucher_id:int}/history", response_headers=NO_STORE, responses=problems(404))
    async def voucher_history(self, voucher_id: RowId, rt: NamedDependency[Runtime]) -> list[history.HistoryRow]:
        """What happened with a voucher, as its holder sees it on "my voucher": one row per change of
        its spendable balance, oldest first; the amounts add up to ``balance_cents``."""
        async with rt.sessionmaker() as session:
            if await session.get(Voucher, voucher_id) is None:
                raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
            return await history.voucher_history(session, voucher_id)

    # --- interventions ---------------------------------------------------------------------------

    @post("/vouchers/{voucher_id:int}/extension", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(VoucherExtended, "Extended."), **WRITE_PROBLEMS, **problems(404)})
    async def extend_voucher(self, request: Request[Any, Any, Any], voucher_id: RowId,
                             data: JSONBody[ExtensionIn], rt: NamedDependency[Runtime]) -> Response[bytes]:
        async def work(session: AsyncSession) -> VoucherExtended:
            voucher = await interventions.extend_voucher(session, voucher_id, until=data.until, reason=data.reason)
            return VoucherExtended(voucher_id=voucher.id, status=voucher.status, expires_at=voucher.expires_at,
                                   valid_until=validity.last_day(voucher.expires_at))

        return await _idempotent(request, rt, work, body_type=ExtensionIn)

    @post("/schemes/{slug:str}/closure", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(SchemeClosed, "Closed to new applications."), **WRITE_PROBLEMS, **problems(404)})
    async def close_scheme(self, request: Request[Any, Any, Any], slug: Slug, data: JSONBody[ClosureIn],
                           rt: NamedDependency[Runtime]) -> Response[bytes]:
        async def work(session: AsyncSession) -> SchemeClosed:
            scheme = await schemes.get_scheme(session, slug)
            scheme = await interventions.close_scheme(session, scheme.id, reason=data.reason)
            return SchemeClosed(scheme=scheme.slug, status=schemes.scheme_status(scheme), closed_at=scheme.closed_at)

        return await _idempotent(request, rt, work, body_type=ClosureIn)

    @post("/schemes/{slug:str}/reserve-moves", status_code=200, operation_class=IdempotentOperation,
          responses={200: answer(ReserveMoved, "Moved; the scheme's figures after it."), **WRITE_PROBLEMS,
                     **problems(404)})
    async def move_money(self, request: Request[Any, Any, Any], slug: Slug, data: JSONBody[ReserveMoveIn],
                         rt: NamedDependency[Runtime]) -> Response[bytes]:
        """Move money from the budget to the reserve (positive ``amount_cents``) or back (negative)."""

        async def work(session: AsyncSession) -> ReserveMoved:
            if data.amount_cents == 0:
                raise InvalidInput("amount-zero", N_("The amount must not be zero."), field="amount_cents")
            scheme = await schemes.get_scheme(session, slug)
            scheme = await interventions.move_money(session, scheme.id, abs(data.amount_cents),
                                                    to_reserve=data.amount_cents > 0, memo=data.reason)
            return ReserveMoved(scheme=scheme.slug, moved_cents=data.amount_cents, budget_cents=scheme.budget_cents,
                                reserve_cents=scheme.reserve_cents, committed_cents=scheme.committed_cents)

        return await _idempotent(request, rt, work, body_type=ReserveMoveIn)

    # --- audit log -------------------------------------------------------------------------------

    @get("/audit", response_headers=NO_STORE)
    async def audit_log(
        self, rt: NamedDependency[Runtime],
        actor: Annotated[str | None, QueryParameter(max_length=100, schema_extra=TEXT)] = None,
        table: Annotated[str | None, QueryParameter(max_length=40, schema_extra=TEXT)] = None,
        row: Annotated[str | None, QueryParameter(max_length=40, schema_extra=TEXT)] = None,
        action: Annotated[str | None, QueryParameter(max_length=40, schema_extra=TEXT)] = None,
        text: Annotated[str | None, QueryParameter(max_length=100, schema_extra=TEXT)] = None,
        since: Annotated[dt.date | None, QueryParameter()] = None,
        until: Annotated[dt.date | None, QueryParameter()] = None,
        before: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    ) -> list[AuditEntryOut]:
        """The page's filters; newest first, ``before`` (an entry's ``seq``) pages back."""
        flt = audit.AuditFilter(actor=actor or "", table_name=table or "", row_id=row or "", action=action or "",
                                text=text or "", since=since, until=until)
        async with rt.sessionmaker() as session:
            return [_entry_out(e) for e in await audit.search(session, flt, limit=limit, before_seq=before)]

    @get("/audit/verification")
    async def audit_verification(self, rt: NamedDependency[Runtime]) -> audit.VerifyResult:
        async with rt.sessionmaker() as session:
            return await audit.verify(session)

    # --- privacy ---------------------------------------------------------------------------------

    @get("/data-subjects/{kvk_number:str}", response_headers=NO_STORE)
    async def data_subject(self, kvk_number: KvkNumber, rt: NamedDependency[Runtime]) -> DataSubjectExport:
        """Everything held about one KvK number (AVG art. 15). The export itself is audited."""
        exported = await run_in_transaction(rt.sessionmaker,
                                            lambda s: privacy.export_subject(s, rt, kvk_number))
        return DataSubjectExport(**exported)
