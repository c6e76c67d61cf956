"""The ledger: every change of money or places is one append-only entry from one account to
another. The counters on ``scheme``, ``voucher`` and ``enrolment`` rows are kept in the same
transaction and must always equal what these entries sum to (see ``service.check``).

Accounts and the counter each one mirrors:

============  ==========  =====================================================
kind          id          balance equals
============  ==========  =====================================================
funding       scheme      minus everything ever given to the scheme (a source)
budget        scheme      ``scheme.budget_cents - scheme.committed_cents``
reserve       scheme      ``scheme.reserve_cents``
voucher       voucher     ``voucher.balance_cents`` (spendable now)
held          voucher     ``voucher.held_cents`` (set aside by open holds)
provider      enrolment   ``enrolment.received_cents - enrolment.paid_cents``
bank          scheme      everything paid out to providers (a sink)
============  ==========  =====================================================
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from . import audit
from .models import LedgerEntry, utcnow

__all__ = ("Account", "post", "post_now", "FUNDING", "BUDGET", "RESERVE", "VOUCHER", "HELD", "PROVIDER", "BANK")

Account = tuple[str, int]

FUNDING = "funding"
BUDGET = "budget"
RESERVE = "reserve"
VOUCHER = "voucher"
HELD = "held"
PROVIDER = "provider"
BANK = "bank"

_INSERT = insert(LedgerEntry.__table__).returning(LedgerEntry.__table__.c.id)


def entry_values(*, scheme_id: int, kind: str, source: Account, target: Account, amount_cents: int, places: int = 0,
                 voucher_id: int | None = None, redemption_id: int | None = None, hold_id: int | None = None,
                 memo: str = "") -> dict[str, Any]:
    """An entry's columns, for the statements that insert it themselves (``service.fastwrite``)."""
    if amount_cents < 0:
        raise ValueError("ledger amounts are never negative; swap source and target")
    return {"scheme_id": scheme_id, "kind": kind, "from_kind": source[0], "from_id": source[1], "to_kind": target[0],
            "to_id": target[1], "amount_cents": amount_cents, "places": places, "voucher_id": voucher_id,
            "redemption_id": redemption_id, "hold_id": hold_id, "memo": memo}


def post(
    session: AsyncSession,
    *,
    scheme_id: int,
    kind: str,
    source: Account,
    target: Account,
    amount_cents: int,
    places: int = 0,
    voucher_id: int | None = None,
    redemption_id: int | None = None,
    hold_id: int | None = None,
    memo: str = "",
) -> LedgerEntry:
    """Add one entry to the session; it is written with the rest of the transaction."""
    entry = LedgerEntry(**entry_values(
        scheme_id=scheme_id, kind=kind, source=source, target=target, amount_cents=amount_cents, places=places,
        voucher_id=voucher_id, redemption_id=redemption_id, hold_id=hold_id, memo=memo))
    session.add(entry)
    return entry


async def post_now(session: AsyncSession, **entry: Any) -> None:
    """:func:`post` (the same arguments, checked by :func:`entry_values`) for the hot paths that
    write with Core statements: one INSERT now, on the session's connection, recorded in the audit
    log as the ORM would."""
    values = entry_values(**entry) | {"created_at": utcnow()}
    conn = await session.connection()
    entry_id = (await conn.execute(_INSERT, values)).scalar_one()
    audit.record_insert(session, "ledger_entry", entry_id, values)
