"""Time-driven work: lapse holds, expire vouchers, move the waiting list up.

Each item runs in its own short transaction and changes state only through conditional
updates, so several server processes may sweep at once without doing anything twice.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy import select

from . import outbox, registry
from .applications import promote_waiting
from .db import run_in_transaction
from .errors import DomainError
from .models import Application, Hold, Scheme, Voucher, utcnow
from .runtime import Runtime
from .vouchers import end_voucher, release_hold

__all__ = ("SweepReport", "sweep")


class SweepReport(msgspec.Struct, kw_only=True):
    holds_lapsed: int = 0
    vouchers_expired: int = 0
    promoted: int = 0
    registry_decided: int = 0
    """Applications that waited for the trade register and are now decided."""
    unconfirmed_withdrawn: int = 0


async def sweep(rt: Runtime, *, now: dt.datetime | None = None, batch: int = 500) -> SweepReport:
    now = now or utcnow()
    report = SweepReport()
    async with rt.sessionmaker() as session:
        hold_ids = list(await session.scalars(
            select(Hold.id).where(Hold.status == "open", Hold.expires_at <= now).limit(batch)))
        voucher_ids = list(await session.scalars(
            select(Voucher.id).where(Voucher.status == "active", Voucher.expires_at <= now).limit(batch)))
        scheme_ids = list(await session.scalars(select(Scheme.id).where(Scheme.waiting_count > 0)))

    for hold_id in hold_ids:
        async def lapse(session, hold_id=hold_id):  # type: ignore[no-untyped-def]
            hold = await release_hold(session, hold_id, reason="lapsed")
            voucher = await session.get_one(Voucher, hold.voucher_id)
            application = await session.get_one(Application, voucher.application_id)
            outbox.enqueue(session, to=application.email, template="hold_released", locale=application.locale,
                           contact_name=application.contact_name, reason="lapsed",
                           amount_cents=hold.amount_cents)
        if await _attempt(rt, lapse):
            report.holds_lapsed += 1

    for voucher_id in voucher_ids:
        async def expire(session, voucher_id=voucher_id):  # type: ignore[no-untyped-def]
            await end_voucher(session, rt, voucher_id, status="expired", reason="expired", now=now)
        if await _attempt(rt, expire):
            report.vouchers_expired += 1

    for scheme_id in scheme_ids:
        async def promote(session, scheme_id=scheme_id):  # type: ignore[no-untyped-def]
            return await promote_waiting(session, rt, scheme_id)
        report.promoted += await run_in_transaction(rt.sessionmaker, promote)

    report.registry_decided = (await registry.retry_pending(rt)).decided
    report.unconfirmed_withdrawn = await registry.withdraw_unconfirmed(rt, now=now)
    return report


async def _attempt(rt: Runtime, work) -> bool:  # type: ignore[no-untyped-def]
    """True if the work was done; False if another process got there first."""
    try:
        await run_in_transaction(rt.sessionmaker, work)
    except DomainError:
        return False
    return True
