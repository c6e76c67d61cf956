"""The daily series the site draws and publishes: kept by the service in ``site_history``."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from service.db import run_in_transaction
from service.models import LedgerEntry, Scheme, SiteHistory
from service.sitegen import daily
from service.sitegen.collect import collect_snapshot
from service import applications
from tests.helpers import applicant, make_scheme, make_voucher


async def join_waiting_list(rt, scheme) -> None:  # type: ignore[no-untyped-def]
    """An application when no place is left: it goes on the waiting list."""
    details = applicant()

    async def work(session):  # type: ignore[no-untyped-def]
        fresh = await session.get_one(Scheme, scheme.id)
        application = await applications.submit(session, fresh, details)
        await applications.decide(session, rt, fresh, application, employees=details.employees,
                                  postcode=details.postcode)

    await run_in_transaction(rt.sessionmaker, work)


async def rows(rt) -> list[tuple]:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        found = await session.scalars(select(SiteHistory).order_by(SiteHistory.scheme_id, SiteHistory.day))
        return [(r.day, r.places_used, r.waiting_list, r.committed_cents, r.redeemed_cents) for r in found]


async def test_a_day_is_written_once_and_again_only_on_change(rt) -> None:  # type: ignore[no-untyped-def]
    scheme = await make_scheme(rt, max_places=1, budget_cents=135_000)
    now = dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC)  # 23:30 in Arnhem: still 2 March there
    assert await daily.record_day(rt.sessionmaker, now) == 1
    assert await daily.record_day(rt.sessionmaker, now) == 0  # nothing changed: nothing written
    await make_voucher(rt, scheme)
    await join_waiting_list(rt, scheme)
    assert await daily.record_day(rt.sessionmaker, now) == 1
    assert await rows(rt) == [(dt.date(2026, 3, 2), 1, 1, 135_000, 0)]
    # Midnight in Arnhem (23:00 UTC): a new day gets its own row even though nothing changed.
    assert await daily.record_day(rt.sessionmaker, now + dt.timedelta(minutes=31)) == 1
    assert [r[0] for r in await rows(rt)] == [dt.date(2026, 3, 2), dt.date(2026, 3, 3)]
    async with rt.sessionmaker() as session:
        snapshot = await collect_snapshot(session, service_url="https://vouchers.example")
    [facts] = snapshot.schemes
    assert [(p.day, p.places_used, p.waiting_list) for p in facts.history] == [
        (dt.date(2026, 3, 2), 1, 1), (dt.date(2026, 3, 3), 1, 1)]


async def test_days_before_the_first_record_come_from_the_ledger(rt) -> None:  # type: ignore[no-untyped-def]
    scheme = await make_scheme(rt)
    first, _ = await make_voucher(rt, scheme)
    await make_voucher(rt, scheme)

    async def backdate(session):  # type: ignore[no-untyped-def]
        await session.execute(update(LedgerEntry).where(LedgerEntry.voucher_id == first.id)
                              .values(created_at=dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC)))

    await run_in_transaction(rt.sessionmaker, backdate)
    written = await daily.record_day(rt.sessionmaker, dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC))
    assert written == 2
    assert await rows(rt) == [(dt.date(2026, 1, 10), 1, None, 135_000, 0),
                              (dt.date(2026, 1, 20), 2, 0, 270_000, 0)]
    async with rt.sessionmaker() as session:
        fresh = await session.get_one(Scheme, scheme.id)
        assert fresh.places_used == 2
