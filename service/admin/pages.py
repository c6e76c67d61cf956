"""The municipality's screens under ``/beheer``: dashboard per scheme, work queues,
interventions, the audit log, reports for the council and the data-subject export.

Every handler names the roles that may use it (``roles.py``), checked on the server by the
guards; the pages only hide what the guards refuse anyway. No JavaScript; every form carries the
CSRF token; errors are shown next to their field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import audit, i18n, privacy, schemes
from .. import vouchers as vouchers_domain
from ..auth import requires
from ..db import run_in_transaction
from ..errors import N_, DomainError, InvalidInput, NotFound
from ..models import Application, Enrolment, Provider, Redemption, Scheme, Voucher
from ..models_admin import FlagReview
from ..runtime import Runtime
from .. import interventions, reports
from . import roles
from .charts import bar_chart
from .web import NO_STORE, errors_of, page, report_csv_response, status, to_login, who

__all__ = ("AdminPages",)

Short = Annotated[str, msgspec.Meta(max_length=300)]
Long = Annotated[str, msgspec.Meta(max_length=2000)]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)

CATEGORY_LABELS = {
    "coaching": N_("Coaching"),
    "retraining": N_("Retraining or further training"),
    "financial_advice": N_("Financial advice"),
}
STATUS_LABELS = {
    "unconfirmed": N_("E-mail address not confirmed yet"),
    "registry_pending": N_("Waiting for the trade register"),
    "received": N_("Received"),
    "entered": N_("In the lottery"),
    "waiting": N_("On the waiting list"),
    "granted": N_("Voucher given"),
    "rejected": N_("Rejected"),
    "withdrawn": N_("Withdrawn"),
    "active": N_("Active"),
    "used_up": N_("Used up"),
    "expired": N_("Expired"),
    "revoked": N_("Revoked"),
    "pending": N_("Waiting for a decision"),
    "approved": N_("Approved"),
    "refused": N_("Refused"),
    "suspended": N_("Suspended"),
}
# Short names of the refusal reasons (errors.REJECTION_REASONS) for the council's report.
REFUSAL_LABELS = {
    "too-many-employees": N_("Too many people work at the firm"),
    "outside-area": N_("Not established in the area"),
    "not-in-register": N_("Not in the trade register"),
    "not-active": N_("No longer active in the trade register"),
    "already-has-voucher": N_("Already has a voucher in this scheme"),
    "other": N_("Another reason, given by a staff member"),
}
DONE = {
    "closed": N_("The scheme has been closed."),
    "moved": N_("The money has been moved."),
    "revoked": N_("The voucher has been revoked. The holder gets an e-mail."),
    "extended": N_("The voucher has been extended. The holder gets an e-mail."),
    "reversed": N_("The redemption has been reversed. The provider gets an e-mail."),
    "decided": N_("The decision has been saved and will be sent by e-mail."),
}


class ReasonForm(msgspec.Struct, frozen=True, kw_only=True):
    reason: Long = ""
    confirm: Short = ""


class DecisionForm(msgspec.Struct, frozen=True, kw_only=True):
    decision: Short = ""
    reason: Long = ""
    confirm: Short = ""


class ExtendForm(msgspec.Struct, frozen=True, kw_only=True):
    until: Short = ""
    reason: Long = ""


class MoneyForm(msgspec.Struct, frozen=True, kw_only=True):
    amount: Short = ""
    direction: Short = ""
    memo: Long = ""
    confirm: Short = ""


class ExportForm(msgspec.Struct, frozen=True, kw_only=True):
    kvk_number: Short = ""


def _redirect(path: str, done: str) -> Redirect:
    return Redirect(f"{path}?gedaan={done}", status_code=303, headers=NO_STORE)


def _done(done: str | None) -> str | None:
    return i18n.gettext(DONE[done]) if done in DONE else None


def _label(key: str) -> str:
    text = CATEGORY_LABELS.get(key) or STATUS_LABELS.get(key)
    return i18n.gettext(text) if text else key


def _month_label(key: str) -> str:
    year, month = key.split("-")
    return i18n.format_month(dt.date(int(year), int(month), 1))


def _refusal_label(key: str) -> str:
    return i18n.gettext(REFUSAL_LABELS[key]) if key in REFUSAL_LABELS else key


def _cents(text: str) -> int:
    """``"1250"``, ``"1.250,50"``, ``"1250.50"``, ``"€ 1.250"`` → cents."""
    cleaned = text.replace("€", "").replace(" ", "").replace("\u00a0", "").strip()
    whole, cents = cleaned, "0"
    if len(cleaned) > 3 and cleaned[-3] in ",." or len(cleaned) > 2 and cleaned[-2] in ",.":
        cut = cleaned.rfind(cleaned[-3] if cleaned[-3:-2] in (",", ".") else cleaned[-2])
        whole, cents = cleaned[:cut], cleaned[cut + 1:]
    whole = whole.replace(".", "").replace(",", "")
    if not (whole.isdigit() and cents.isdigit()) or len(whole) > 9:
        raise InvalidInput("amount-invalid", N_("Type an amount in euros, for example 125,50."), field="amount")
    return int(whole) * 100 + int(cents.ljust(2, "0"))


async def _scheme(session: AsyncSession, slug: str) -> Scheme:
    return await schemes.get_scheme(session, slug)


class AdminPages(Controller):
    path = "/beheer"
    include_in_schema = False
    guards = [requires(*roles.ALL)]
    exception_handlers = {NotAuthorizedException: to_login}

    # --- overview and dashboard ----------------------------------------------------------------

    @get("/")
    async def home(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Template:
        async with rt.sessionmaker() as session:
            items = [await schemes.summary(session, s)
                     for s in await session.scalars(select(Scheme).order_by(Scheme.id))]
            queues = await reports.queue_counts(session)
        return page(request, "admin/home.html", schemes=items, queues=queues)

    @get("/regelingen/{slug:str}")
    async def dashboard(self, request: Request[Any, Any, Any], slug: FromPath[str], rt: NamedDependency[Runtime],
                        done: Annotated[str | None, QueryParameter(name="gedaan")] = None) -> Template:
        return await _dashboard_page(request, rt, slug, done=_done(done))

    @post("/regelingen/{slug:str}/sluiten", guards=[requires(*roles.ADMIN)])
    async def close(self, request: Request[Any, Any, Any], slug: FromPath[str], data: Annotated[ReasonForm, Form],
                    rt: NamedDependency[Runtime]) -> Template | Redirect:
        async def work(session: AsyncSession) -> None:
            scheme = await _scheme(session, slug)
            await interventions.close_scheme(session, scheme.id, reason=data.reason)

        async def preview(session: AsyncSession) -> list[interventions.Fact]:
            scheme = await _scheme(session, slug)
            return await interventions.preview_close(session, scheme.id, reason=data.reason)

        try:
            if data.confirm != "yes":
                return await _confirm_page(request, rt, preview, title=N_("Close the scheme early?"),
                                           button=N_("Yes, close the scheme"), back=f"/beheer/regelingen/{slug}#close",
                                           fields={"reason": data.reason})
            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            return await _dashboard_page(request, rt, slug, errors={"close_" + (exc.field or "form"): _msg(exc)},
                                         values={"close_reason": data.reason}, status_code=status(exc))
        return _redirect(f"/beheer/regelingen/{slug}", "closed")

    @post("/regelingen/{slug:str}/reserve", guards=[requires(*roles.FINANCE)])
    async def reserve(self, request: Request[Any, Any, Any], slug: FromPath[str], data: Annotated[MoneyForm, Form],
                      rt: NamedDependency[Runtime]) -> Template | Redirect:
        def direction() -> bool:
            if data.direction not in ("to_reserve", "to_budget"):
                raise InvalidInput("direction-required", N_("Choose where the money goes."), field="direction")
            return data.direction == "to_reserve"

        async def work(session: AsyncSession) -> None:
            scheme = await _scheme(session, slug)
            to_reserve = direction()
            await interventions.move_money(session, scheme.id, _cents(data.amount), to_reserve=to_reserve,
                                           memo=data.memo)

        async def preview(session: AsyncSession) -> list[interventions.Fact]:
            scheme = await _scheme(session, slug)
            to_reserve = direction()
            return await interventions.preview_move(session, scheme.id, _cents(data.amount), to_reserve=to_reserve,
                                                    memo=data.memo)

        try:
            if data.confirm != "yes":
                return await _confirm_page(request, rt, preview, title=N_("Move the money?"),
                                           button=N_("Yes, move the money"), back=f"/beheer/regelingen/{slug}#money",
                                           fields={"amount": data.amount, "direction": data.direction,
                                                   "memo": data.memo})
            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            field = {"reason": "memo", "amount_cents": "amount"}.get(exc.field or "", exc.field or "form")
            return await _dashboard_page(request, rt, slug, errors={"money_" + field: _msg(exc)},
                                         values={"money_amount": data.amount, "money_memo": data.memo,
                                                 "money_direction": data.direction}, status_code=status(exc))
        return _redirect(f"/beheer/regelingen/{slug}", "moved")

    # --- work queues ---------------------------------------------------------------------------

    @get("/aanvragen", guards=[requires(*roles.PERSONAL)])
    async def applications(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                           done: Annotated[str | None, QueryParameter(name="gedaan")] = None) -> Template:
        return await _applications_page(request, rt, done=_done(done))

    @post("/aanvragen/{application_id:int}/besluit", guards=[requires(*roles.REVIEW)])
    async def decide_application(self, request: Request[Any, Any, Any], application_id: FromPath[int],
                                 data: Annotated[DecisionForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        async def work(session: AsyncSession) -> None:
            await interventions.decide_application(session, rt, application_id, approve=_approve(data.decision),
                                                   reason=data.reason)

        async def preview(session: AsyncSession) -> list[interventions.Fact]:
            return await interventions.preview_decision(session, application_id, approve=_approve(data.decision),
                                                        reason=data.reason)

        try:
            if data.confirm != "yes":
                approve = _approve(data.decision)
                return await _confirm_page(
                    request, rt, preview, title=N_("Approve the application?") if approve
                    else N_("Refuse the application?"), button=N_("Yes, approve") if approve else N_("Yes, refuse"),
                    back="/beheer/aanvragen", fields={"decision": data.decision, "reason": data.reason})
            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            return await _applications_page(request, rt, failed=application_id, errors=_row_errors(exc),
                                            values={"reason": data.reason}, status_code=status(exc))
        return _redirect("/beheer/aanvragen", "decided")

    @get("/aanbieders", guards=[requires(*roles.PERSONAL)])
    async def providers(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                        done: Annotated[str | None, QueryParameter(name="gedaan")] = None) -> Template:
        return await _providers_page(request, rt, done=_done(done))

    @post("/aanbieders/{enrolment_id:int}/besluit", guards=[requires(*roles.REVIEW)])
    async def decide_provider(self, request: Request[Any, Any, Any], enrolment_id: FromPath[int],
                              data: Annotated[DecisionForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        async def work(session: AsyncSession) -> None:
            await interventions.decide_provider(session, rt, enrolment_id, approve=_approve(data.decision),
                                                reason=data.reason)

        async def preview(session: AsyncSession) -> list[interventions.Fact]:
            return await interventions.preview_provider_decision(session, enrolment_id,
                                                                 approve=_approve(data.decision), reason=data.reason)

        try:
            if data.confirm != "yes":
                approve = _approve(data.decision)
                return await _confirm_page(
                    request, rt, preview, title=N_("Approve the provider?") if approve else N_("Refuse the provider?"),
                    button=N_("Yes, approve") if approve else N_("Yes, refuse"), back="/beheer/aanbieders",
                    fields={"decision": data.decision, "reason": data.reason})
            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            return await _providers_page(request, rt, failed=enrolment_id, errors=_row_errors(exc),
                                         values={"reason": data.reason}, status_code=status(exc))
        return _redirect("/beheer/aanbieders", "decided")

    @get("/meldingen", guards=[requires(*roles.PERSONAL)])
    async def reports_queue(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                            done: Annotated[str | None, QueryParameter(name="gedaan")] = None) -> Template:
        return await _flags_page(request, rt, done=_done(done))

    @post("/meldingen/{redemption_id:int}/besluit", guards=[requires(*roles.REVIEW)])
    async def decide_report(self, request: Request[Any, Any, Any], redemption_id: FromPath[int],
                            data: Annotated[DecisionForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        async def work(session: AsyncSession) -> None:
            if data.decision not in ("keep", "reverse"):
                raise InvalidInput("decision-required", N_("Choose a decision."), field="decision")
            await interventions.review_report(session, redemption_id, reverse_it=data.decision == "reverse",
                                              reason=data.reason, decided_by=who(request).actor)

        async def preview(session: AsyncSession) -> list[interventions.Fact]:
            facts = await interventions.preview_reverse(session, redemption_id, reason=data.reason)
            return [*facts[:-1], interventions.Fact(N_("The entrepreneur gets an e-mail with the decision.")),
                    facts[-1]]

        try:
            if data.decision == "reverse" and data.confirm != "yes":
                return await _confirm_page(request, rt, preview, title=N_("Reverse the redemption?"),
                                           button=N_("Yes, reverse the redemption"), back="/beheer/meldingen",
                                           fields={"decision": data.decision, "reason": data.reason})
            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            return await _flags_page(request, rt, failed=redemption_id, errors=_row_errors(exc),
                                     values={"reason": data.reason}, status_code=status(exc))
        return _redirect("/beheer/meldingen", "decided")

    # --- vouchers: find, revoke, extend, reverse -------------------------------------------------

    @get("/vouchers", guards=[requires(*roles.PERSONAL)])
    async def find_vouchers(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                            q: Annotated[str | None, QueryParameter(name="q", max_length=100)] = None) -> Template:
        results: list[Any] = []
        query = (q or "").strip()
        if query:
            async with rt.sessionmaker() as session:
                results = await _find(session, query)
        return page(request, "admin/vouchers.html", q=query, results=results, label=_label)

    @get("/vouchers/{voucher_id:int}", guards=[requires(*roles.PERSONAL)])
    async def voucher(self, request: Request[Any, Any, Any], voucher_id: FromPath[int], rt: NamedDependency[Runtime],
                      done: Annotated[str | None, QueryParameter(name="gedaan")] = None) -> Template:
        return await _voucher_page(request, rt, voucher_id, done=_done(done))

    @post("/vouchers/{voucher_id:int}/intrekken", guards=[requires(*roles.REVIEW)])
    async def revoke(self, request: Request[Any, Any, Any], voucher_id: FromPath[int], data: Annotated[ReasonForm, Form],
                     rt: NamedDependency[Runtime]) -> Template | Redirect:
        try:
            if data.confirm != "yes":
                return await _confirm_page(
                    request, rt, lambda s: interventions.preview_revoke(s, voucher_id, reason=data.reason),
                    title=N_("Revoke the voucher?"), button=N_("Yes, revoke the voucher"),
                    back=f"/beheer/vouchers/{voucher_id}#revoke", fields={"reason": data.reason})
            await run_in_transaction(rt.sessionmaker, lambda s: interventions.revoke(s, rt, voucher_id,
                                                                                     reason=data.reason))
        except DomainError as exc:
            return await _voucher_page(request, rt, voucher_id, errors={"revoke_" + (exc.field or "form"): _msg(exc)},
                                       values={"revoke_reason": data.reason}, status_code=status(exc))
        return _redirect(f"/beheer/vouchers/{voucher_id}", "revoked")

    @post("/vouchers/{voucher_id:int}/verlengen", guards=[requires(*roles.REVIEW)])
    async def extend(self, request: Request[Any, Any, Any], voucher_id: FromPath[int], data: Annotated[ExtendForm, Form],
                     rt: NamedDependency[Runtime]) -> Template | Redirect:
        async def work(session: AsyncSession) -> None:
            try:
                until = dt.date.fromisoformat(data.until.strip())
            except ValueError:
                raise InvalidInput("date-invalid", N_("Type a date as YYYY-MM-DD, for example 2026-12-31."),
                                   field="until") from None
            await interventions.extend_voucher(session, voucher_id, until=until, reason=data.reason)

        try:
            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            return await _voucher_page(request, rt, voucher_id, errors={"extend_" + (exc.field or "form"): _msg(exc)},
                                       values={"extend_until": data.until, "extend_reason": data.reason},
                                       status_code=status(exc))
        return _redirect(f"/beheer/vouchers/{voucher_id}", "extended")

    @post("/verzilveringen/{redemption_id:int}/terugdraaien", guards=[requires(*roles.REVIEW)])
    async def reverse(self, request: Request[Any, Any, Any], redemption_id: FromPath[int],
                      data: Annotated[ReasonForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        async with rt.sessionmaker() as session:
            voucher_id = await session.scalar(select(Redemption.voucher_id).where(Redemption.id == redemption_id))
        if voucher_id is None:
            raise NotFound("redemption-not-found", N_("There is no such redemption."))
        try:
            if data.confirm != "yes":
                return await _confirm_page(
                    request, rt, lambda s: interventions.preview_reverse(s, redemption_id, reason=data.reason),
                    title=N_("Reverse the redemption?"), button=N_("Yes, reverse the redemption"),
                    back=f"/beheer/vouchers/{voucher_id}", fields={"reason": data.reason})
            await run_in_transaction(rt.sessionmaker, lambda s: interventions.reverse(s, redemption_id,
                                                                                      reason=data.reason))
        except DomainError as exc:
            return await _voucher_page(request, rt, voucher_id, failed=redemption_id,
                                       errors={"reverse_" + (exc.field or "form"): _msg(exc)},
                                       values={"reverse_reason": data.reason}, status_code=status(exc))
        return _redirect(f"/beheer/vouchers/{voucher_id}", "reversed")

    # --- audit log -----------------------------------------------------------------------------

    @get("/audit", guards=[requires(*roles.AUDIT)])
    async def audit_log(
        self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
        actor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        table: Annotated[str | None, QueryParameter(max_length=40)] = None,
        row: Annotated[str | None, QueryParameter(max_length=40)] = None,
        action: Annotated[str | None, QueryParameter(max_length=40)] = None,
        text: Annotated[str | None, QueryParameter(max_length=100)] = None,
        since: Annotated[str | None, QueryParameter(name="van", max_length=10)] = None,
        until: Annotated[str | None, QueryParameter(name="tot", max_length=10)] = None,
        before: Annotated[int | None, QueryParameter(name="voor")] = None,
    ) -> Template:
        values = {"actor": actor or "", "table": table or "", "row": row or "", "action": action or "",
                  "text": text or "", "van": since or "", "tot": until or ""}
        errors: dict[str, str] = {}

        def day(name: str, raw: str | None) -> dt.date | None:
            if not raw:
                return None
            try:
                return dt.date.fromisoformat(raw)
            except ValueError:
                errors[name] = i18n.gettext("Type a date as YYYY-MM-DD, for example 2026-12-31.")
                return None

        flt = audit.AuditFilter(actor=values["actor"], table_name=values["table"], row_id=values["row"],
                                action=values["action"], text=values["text"], since=day("van", since),
                                until=day("tot", until))
        async with rt.sessionmaker() as session:
            entries = await audit.search(session, flt, limit=50, before_seq=before)
            tables = list(await session.scalars(select(audit.AuditEntry.table_name).distinct()
                                                .order_by(audit.AuditEntry.table_name)))
        query = "&".join(f"{k}={v}" for k, v in values.items() if v)
        older = entries[-1].seq if len(entries) == 50 else None
        return page(request, "admin/audit.html", entries=entries, values=values, errors=errors, tables=tables,
                    query=query, older=older)

    # --- reports for the council -------------------------------------------------------------

    @get("/rapportage/{slug:str}", guards=[requires(*roles.REPORTS)])
    async def report(self, request: Request[Any, Any, Any], slug: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
        async with rt.sessionmaker() as session:
            scheme = await _scheme(session, slug)
            report = await reports.council_report(session, scheme)
        return page(request, "admin/report.html", report=report, scheme=scheme, label=_label,
                    month_label=_month_label, refusal_label=_refusal_label)

    @get("/rapportage/{slug:str}/csv", guards=[requires(*roles.REPORTS)])
    async def report_csv(self, slug: FromPath[str], rt: NamedDependency[Runtime]) -> Response[bytes]:
        async with rt.sessionmaker() as session:
            scheme = await _scheme(session, slug)
            report = await reports.council_report(session, scheme)
        return report_csv_response(report, scheme.slug)

    # --- privacy -------------------------------------------------------------------------------

    @get("/privacy", guards=[requires(*roles.ADMIN)])
    async def privacy_form(self, request: Request[Any, Any, Any]) -> Template:
        return page(request, "admin/privacy.html", retention_days=privacy.DEFAULT_RETENTION_DAYS)

    @post("/privacy/export", guards=[requires(*roles.ADMIN)], status_code=200)
    async def privacy_export(self, request: Request[Any, Any, Any], data: Annotated[ExportForm, Form],
                             rt: NamedDependency[Runtime]) -> Template | Response[bytes]:
        kvk = data.kvk_number.replace(" ", "")
        if not (kvk.isdigit() and len(kvk) == 8):
            return page(request, "admin/privacy.html", status=422, values={"kvk_number": data.kvk_number},
                        errors={"kvk_number": i18n.gettext("A KvK number has 8 digits.")},
                        retention_days=privacy.DEFAULT_RETENTION_DAYS)
        exported = await run_in_transaction(rt.sessionmaker, lambda s: privacy.export_subject(s, rt, kvk))
        return Response(msgspec.json.format(msgspec.json.encode(exported)), media_type="application/json",
                        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="gegevens-kvk-{kvk}.json"'})


def _fact(fact: interventions.Fact) -> str:
    """A consequence in the reader's language, with its amounts and days written out."""
    def shown(key: str, value: Any) -> Any:
        if key.endswith("_cents"):
            return i18n.format_money(value)
        return i18n.format_day(value) if isinstance(value, dt.date) else value

    return i18n.gettext(fact.message) % {key: shown(key, value) for key, value in fact.params.items()}


async def _confirm_page(request: Request[Any, Any, Any], rt: Runtime,
                        preview: Callable[[AsyncSession], Awaitable[list[interventions.Fact]]], *, title: str,
                        button: str, back: str, fields: dict[str, str]) -> Template:
    """The step before an action that cannot be undone: what it will do, and a button that sends
    the same form again with ``confirm=yes``. Works without JavaScript; the action's own checks
    run here too, so a mistake is shown on the form before anything is asked."""
    async with rt.sessionmaker() as session:
        facts = await preview(session)
    return page(request, "admin/confirm.html", title=i18n.gettext(title), facts=[_fact(f) for f in facts],
                action=request.url.path, fields=fields, button=i18n.gettext(button), back=back,
                reason=fields.get("reason") or fields.get("memo") or "")


def _approve(decision: str) -> bool:
    if decision not in ("approve", "refuse"):
        raise InvalidInput("decision-required", N_("Choose a decision."), field="decision")
    return decision == "approve"


def _msg(exc: DomainError) -> str:
    return errors_of(exc).popitem()[1]


def _row_errors(exc: DomainError) -> dict[str, str]:
    return {exc.field if exc.field in ("reason", "decision") else "form": _msg(exc)}


async def _dashboard_page(request: Request[Any, Any, Any], rt: Runtime, slug: str, *, done: str | None = None,
                          errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
                          status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        scheme = await _scheme(session, slug)
        board = await reports.dashboard(session, scheme)
    money = i18n.format_money
    charts = {
        "category": bar_chart("chart-category", i18n.gettext("Redeemed per category"),
                              [(_label(a.key), a.cents) for a in board.redeemed_by_category], money),
        "month": bar_chart("chart-month", i18n.gettext("Redeemed per month"),
                           [(_month_label(a.key), a.cents) for a in board.redeemed_by_month], money),
        "status": bar_chart("chart-status", i18n.gettext("Applications by status"),
                            [(_label(c.key), c.count) for c in board.applications_by_status], str),
    }
    return page(request, "admin/dashboard.html", status=status_code, scheme=scheme, board=board, charts=charts,
                label=_label, month_label=_month_label, done=done, errors=errors or {}, values=values or {},
                scheme_status=schemes.scheme_status(scheme))


async def _applications_page(request: Request[Any, Any, Any], rt: Runtime, *, done: str | None = None,
                             failed: int | None = None, errors: dict[str, str] | None = None,
                             values: dict[str, str] | None = None, status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        rows = (await session.execute(
            select(Application, Scheme.name, Scheme.name_en).join(Scheme, Scheme.id == Application.scheme_id)
            .where(Application.status.in_(interventions.UNDECIDED)).order_by(Application.created_at).limit(200)
        )).all()
    return page(request, "admin/applications.html", status=status_code, rows=rows, done=done, failed=failed,
                errors=errors or {}, values=values or {}, label=_label)


async def _providers_page(request: Request[Any, Any, Any], rt: Runtime, *, done: str | None = None,
                          failed: int | None = None, errors: dict[str, str] | None = None,
                          values: dict[str, str] | None = None, status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        rows = (await session.execute(
            select(Enrolment, Provider, Scheme.name, Scheme.name_en).join(Provider, Provider.id == Enrolment.provider_id)
            .join(Scheme, Scheme.id == Enrolment.scheme_id)
            .where(Enrolment.status == "pending", Provider.email_confirmed_at.is_not(None))
            .order_by(Enrolment.id).limit(200)
        )).all()
    return page(request, "admin/providers.html", status=status_code, rows=rows, done=done, failed=failed,
                errors=errors or {}, values=values or {}, label=_label)


async def _flags_page(request: Request[Any, Any, Any], rt: Runtime, *, done: str | None = None,
                      failed: int | None = None, errors: dict[str, str] | None = None,
                      values: dict[str, str] | None = None, status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        rows = (await session.execute(
            select(Redemption, Provider.name, Application.company_name)
            .join(Provider, Provider.id == Redemption.provider_id)
            .join(Voucher, Voucher.id == Redemption.voucher_id)
            .join(Application, Application.id == Voucher.application_id)
            .outerjoin(FlagReview, FlagReview.redemption_id == Redemption.id)
            .where(Redemption.flagged_at.is_not(None), FlagReview.redemption_id.is_(None),
                   Redemption.reversed_at.is_(None))
            .order_by(Redemption.flagged_at).limit(200)
        )).all()
    return page(request, "admin/flags.html", status=status_code, rows=rows, done=done, failed=failed,
                errors=errors or {}, values=values or {}, label=_label)


async def _find(session: AsyncSession, query: str) -> list[Any]:
    """Vouchers by voucher number, application number, KvK number, company name or e-mail address."""
    conditions = []
    compact = query.replace(" ", "")
    if compact.isdigit():
        conditions.append(Voucher.id == int(compact))
        conditions.append(Application.kvk_number == compact)
    conditions.append(Application.public_id == query.upper())
    like = f"%{query.lower().replace('%', '').replace('_', '')}%"
    conditions.append(func.lower(Application.company_name).like(like))
    conditions.append(func.lower(Application.email) == query.lower())
    rows = await session.execute(
        select(Voucher, Application.company_name, Application.public_id, Scheme.name, Scheme.name_en)
        .join(Application, Application.id == Voucher.application_id).join(Scheme, Scheme.id == Voucher.scheme_id)
        .where(or_(*conditions)).order_by(Voucher.id).limit(50))
    return list(rows.all())


async def _voucher_page(request: Request[Any, Any, Any], rt: Runtime, voucher_id: int, *, done: str | None = None,
                        failed: int | None = None, errors: dict[str, str] | None = None,
                        values: dict[str, str] | None = None, status_code: int = 200) -> Template:
    async with rt.sessionmaker() as session:
        voucher = await session.get(Voucher, voucher_id)
        if voucher is None:
            raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
        application = await session.get_one(Application, voucher.application_id)
        scheme = await session.get_one(Scheme, voucher.scheme_id)
        redemptions = (await session.execute(
            select(Redemption, Provider.name).join(Provider, Provider.id == Redemption.provider_id)
            .where(Redemption.voucher_id == voucher.id).order_by(Redemption.created_at))).all()
    return page(request, "admin/voucher.html", status=status_code, voucher=voucher, application=application,
                scheme=scheme, redemptions=redemptions, effective=vouchers_domain.effective_status(voucher),
                done=done, failed=failed, errors=errors or {}, values=values or {}, label=_label)
