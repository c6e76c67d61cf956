"""Figures for the dashboard and the council report. No personal data leaves this module: only
counts and sums, and the names of providers (organisations, whose totals are published)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import schemes, spreadsheet
from .models import Application, Enrolment, Provider, Redemption, Scheme, Voucher
from .errors import REJECTION_REASONS
from .models_admin import FlagReview
from .refusals import UNDECIDED

__all__ = ("CouncilReport", "Dashboard", "QueueCounts", "council_report", "dashboard", "queue_counts", "report_csv")

_ZONE = ZoneInfo("Europe/Amsterdam")


class Amount(msgspec.Struct, frozen=True):
    key: str
    cents: int
    count: int


class Count(msgspec.Struct, frozen=True):
    key: str
    count: int


class QueueCounts(msgspec.Struct, frozen=True, kw_only=True):
    applications: int
    reports: int
    providers: int


class Dashboard(msgspec.Struct, frozen=True, kw_only=True):
    summary: schemes.SchemeSummary
    reserve_cents: int
    applications_by_status: list[Count]
    vouchers_by_status: list[Count]
    redeemed_by_category: list[Amount]
    redeemed_by_month: list[Amount]
    queues: QueueCounts


class CouncilReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the council is told. Definitions:

    * ``vouchers_issued``: vouchers ever given out (revoked ones included);
    * ``entrepreneurs_helped``: vouchers with money spent on them (net of reversals);
    * ``average_spend_cents``: money spent divided by entrepreneurs helped, rounded down;
    * ``used_in_full``: vouchers whose whole value was spent; ``used_in_full_percent`` of those issued;
    * ``left_cents`` / ``places_left``: what can still be given out (budget less committed, places
      less used); ``waiting_list``: applicants waiting for a freed place;
    * ``applications``: every application received (unconfirmed ones too), with ``applications_by_status``;
    * ``refusals_by_reason``: the reasons of refused applications (one application may have several);
      a reason a staff member wrote is counted as ``other``, so no free text reaches the council.
    """

    scheme: str
    scheme_name: str
    scheme_name_en: str
    taken_at: dt.datetime
    budget_cents: int
    committed_cents: int
    left_cents: int
    max_places: int
    places_used: int
    places_left: int
    waiting_list: int
    applications: int
    applications_by_status: list[Count]
    refusals_by_reason: list[Count]
    vouchers_issued: int
    entrepreneurs_helped: int
    spent_cents: int
    average_spend_cents: int
    used_in_full: int
    used_in_full_percent: float
    by_category: list[Amount]
    by_month: list[Amount]
    by_provider: list[Amount]


def _month(moment: dt.datetime) -> str:
    return moment.astimezone(_ZONE).strftime("%Y-%m")


async def _live_redemptions(session: AsyncSession, scheme_id: int) -> list[tuple[dt.datetime, int, str, int]]:
    rows = await session.execute(
        select(Redemption.created_at, Redemption.amount_cents, Redemption.category, Redemption.provider_id)
        .where(Redemption.scheme_id == scheme_id, Redemption.reversed_at.is_(None))
    )
    return [tuple(row) for row in rows.all()]  # type: ignore[misc]


def _group(items: list[tuple[str, int]], order: list[str] | None = None) -> list[Amount]:
    cents: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for key, amount in items:
        cents[key] += amount
        counts[key] += 1
    keys = order if order is not None else sorted(cents)
    return [Amount(key, cents.get(key, 0), counts.get(key, 0)) for key in keys]


async def queue_counts(session: AsyncSession, scheme_id: int | None = None) -> QueueCounts:
    apps = select(func.count()).select_from(Application).where(Application.status.in_(UNDECIDED))
    reports = (select(func.count()).select_from(Redemption)
               .outerjoin(FlagReview, FlagReview.redemption_id == Redemption.id)
               .where(Redemption.flagged_at.is_not(None), FlagReview.redemption_id.is_(None),
                      Redemption.reversed_at.is_(None)))
    enrolments = select(func.count()).select_from(Enrolment).where(Enrolment.status == "pending")
    if scheme_id is not None:
        apps = apps.where(Application.scheme_id == scheme_id)
        reports = reports.where(Redemption.scheme_id == scheme_id)
        enrolments = enrolments.where(Enrolment.scheme_id == scheme_id)
    return QueueCounts(applications=int(await session.scalar(apps) or 0),
                       reports=int(await session.scalar(reports) or 0),
                       providers=int(await session.scalar(enrolments) or 0))


async def dashboard(session: AsyncSession, scheme: Scheme) -> Dashboard:
    by_status = await session.execute(
        select(Application.status, func.count()).where(Application.scheme_id == scheme.id)
        .group_by(Application.status).order_by(Application.status))
    vouchers = await session.execute(
        select(Voucher.status, func.count()).where(Voucher.scheme_id == scheme.id)
        .group_by(Voucher.status).order_by(Voucher.status))
    live = await _live_redemptions(session, scheme.id)
    return Dashboard(
        summary=await schemes.summary(session, scheme),
        reserve_cents=scheme.reserve_cents,
        applications_by_status=[Count(s, int(n)) for s, n in by_status.all()],
        vouchers_by_status=[Count(s, int(n)) for s, n in vouchers.all()],
        redeemed_by_category=_group([(cat, amount) for _, amount, cat, _ in live], list(scheme.categories)),
        redeemed_by_month=_group([(_month(at), amount) for at, amount, _, _ in live]),
        queues=await queue_counts(session, scheme.id),
    )


async def council_report(session: AsyncSession, scheme: Scheme) -> CouncilReport:
    live = await _live_redemptions(session, scheme.id)
    totals = (await session.execute(
        select(func.count(), func.count().filter(Voucher.redeemed_cents > 0),
               func.count().filter(Voucher.redeemed_cents == Voucher.value_cents),
               func.coalesce(func.sum(Voucher.redeemed_cents), 0))
        .where(Voucher.scheme_id == scheme.id))).one()
    issued, helped, full, spent = (int(v or 0) for v in totals)
    names = dict((await session.execute(select(Provider.id, Provider.name))).all())
    by_provider = _group([(names.get(pid, str(pid)), amount) for _, amount, _, pid in live])
    by_provider.sort(key=lambda a: (-a.cents, a.key))
    figures = await schemes.summary(session, scheme)
    by_status = [Count(status, int(n)) for status, n in (await session.execute(
        select(Application.status, func.count()).where(Application.scheme_id == scheme.id)
        .group_by(Application.status).order_by(Application.status))).all()]
    refusals: dict[str, int] = defaultdict(int)
    for reasons in await session.scalars(select(Application.reasons).where(
            Application.scheme_id == scheme.id, Application.status == "rejected")):
        for reason in reasons or ["other"]:
            refusals[reason if reason in REJECTION_REASONS else "other"] += 1
    return CouncilReport(
        scheme=scheme.slug,
        scheme_name=scheme.name,
        scheme_name_en=scheme.name_en,
        taken_at=dt.datetime.now(dt.UTC),
        budget_cents=scheme.budget_cents,
        committed_cents=figures.committed_cents,
        left_cents=figures.left_cents,
        max_places=figures.max_places,
        places_used=figures.places_used,
        places_left=figures.places_left,
        waiting_list=figures.waiting_list_length,
        applications=sum(c.count for c in by_status),
        applications_by_status=by_status,
        refusals_by_reason=[Count(key, refusals[key]) for key in [*REJECTION_REASONS, "other"] if refusals[key]],
        vouchers_issued=issued,
        entrepreneurs_helped=helped,
        spent_cents=spent,
        average_spend_cents=spent // helped if helped else 0,
        used_in_full=full,
        used_in_full_percent=round(100 * full / issued, 1) if issued else 0.0,
        by_category=_group([(cat, amount) for _, amount, cat, _ in live], list(scheme.categories)),
        by_month=_group([(_month(at), amount) for at, amount, _, _ in live]),
        by_provider=by_provider,
    )


def report_csv(report: CouncilReport, labels: dict[str, str]) -> bytes:
    """One table: ``section; item; amount in euros; count``, in the convention of spreadsheet.py."""
    euros = spreadsheet.euros
    rows: list[list[object]] = [[labels["section"], labels["item"], labels["euros"], labels["count"]]]
    rows += [
        ["totals", "budget", euros(report.budget_cents), ""],
        ["totals", "committed", euros(report.committed_cents), ""],
        ["totals", "left", euros(report.left_cents), ""],
        ["totals", "places", "", report.max_places],
        ["totals", "places_used", "", report.places_used],
        ["totals", "places_left", "", report.places_left],
        ["totals", "waiting_list", "", report.waiting_list],
        ["totals", "applications", "", report.applications],
        ["totals", "vouchers_issued", "", report.vouchers_issued],
        ["totals", "entrepreneurs_helped", "", report.entrepreneurs_helped],
        ["totals", "spent", euros(report.spent_cents), ""],
        ["totals", "average_spend", euros(report.average_spend_cents), ""],
        ["totals", "used_in_full", "", report.used_in_full],
        ["totals", "used_in_full_percent", "", spreadsheet.decimal(report.used_in_full_percent)],
    ]
    rows += [["application_status", c.key, "", c.count] for c in report.applications_by_status]
    rows += [["refusal_reason", c.key, "", c.count] for c in report.refusals_by_reason]
    for section, amounts in (("category", report.by_category), ("month", report.by_month),
                             ("provider", report.by_provider)):
        rows += [[section, spreadsheet.cell(a.key), euros(a.cents), a.count] for a in amounts]
    return spreadsheet.write(rows)
