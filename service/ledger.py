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

from sqlalchemy.ext.asyncio import AsyncSession

from .models import LedgerEntry

__all__ = ("Account", "post", "FUNDING", "BUDGET", "RESERVE", "VOUCHER", "HELD", "PROVIDER", "BANK")

Account = tuple[str, int]

FUNDING = "funding"
BUDGET = "budget"
RESERVE = "reserve"
VOUCHER = "voucher"
HELD = "held"
PROVIDER = "provider"
BANK = "bank"


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
    if amount_cents < 0:
        raise ValueError("ledger amounts are never negative; swap source and target")
    entry = LedgerEntry(
        scheme_id=scheme_id,
        kind=kind,
        from_kind=source[0],
        from_id=source[1],
        to_kind=target[0],
        to_id=target[1],
        amount_cents=amount_cents,
        places=places,
        voucher_id=voucher_id,
        redemption_id=redemption_id,
        hold_id=hold_id,
        memo=memo,
    )
    session.add(entry)
    return entry
