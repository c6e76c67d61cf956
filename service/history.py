"""What happened with a voucher, as its holder sees it: read from the ledger, one row for each
entry that changes what the holder can still spend (the ``voucher`` account), so the rows add up
to ``voucher.balance_cents``.

A reservation is one event: the entry that sets money aside is its row, and the provider's
confirmation (held → provider) only changes that row's state to "used". Reading rows from the
ledger rather than from holds and redemptions means a purchase can never be counted twice.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import ledger
from .models import Hold, LedgerEntry, Provider, Redemption

__all__ = ("HistoryRow", "voucher_history")


class HistoryRow(msgspec.Struct, frozen=True, kw_only=True):
    at: dt.datetime
    kind: str
    """``issued``, ``reserved``, ``released``, ``used``, ``reversed``, ``returned``, ``revoked``,
    ``expired`` or ``extended``."""
    amount_cents: int
    """The change of the spendable balance: negative when money leaves it."""
    provider: str | None = None
    hold_id: int | None = None
    state: str | None = None
    """For ``reserved``: ``open``, ``confirmed`` or ``released``; for ``released``: why
    (``cancelled``, ``declined``, ``lapsed``, ``revoked``, ``expired``)."""
    own_contribution_cents: int = 0


def _row(entry: LedgerEntry, account: tuple[str, int], holds: dict[int, tuple[Hold, str]],
         redemptions: dict[int, tuple[Redemption, str]]) -> HistoryRow | None:
    source, target = (entry.from_kind, entry.from_id), (entry.to_kind, entry.to_id)
    if account not in (source, target):
        return None  # held → provider: the confirmation of a reservation that already has its row
    sign = 1 if target == account else -1
    hold, hold_provider = holds.get(entry.hold_id, (None, None)) if entry.hold_id else (None, None)
    redemption, redemption_provider = (redemptions.get(entry.redemption_id, (None, None)) if entry.redemption_id
                                       else (None, None))
    common = {"at": entry.created_at, "amount_cents": sign * entry.amount_cents}
    if source == target:
        return HistoryRow(kind="extended", **common)
    if target[0] == ledger.HELD:
        assert hold is not None
        return HistoryRow(kind="reserved", provider=hold_provider, hold_id=hold.id, state=hold.status,
                          own_contribution_cents=hold.own_contribution_cents, **common)
    if source[0] == ledger.HELD:
        return HistoryRow(kind="released", provider=hold_provider, hold_id=entry.hold_id,
                          state=(hold.release_reason if hold else None) or entry.memo, **common)
    if target[0] == ledger.PROVIDER:
        return HistoryRow(kind="used", provider=redemption_provider,
                          own_contribution_cents=redemption.own_contribution_cents if redemption else 0, **common)
    if source[0] == ledger.PROVIDER:
        return HistoryRow(kind="reversed", provider=redemption_provider, **common)
    if source[0] == ledger.BUDGET:
        return HistoryRow(kind="issued", **common)
    # Back to the budget: after a reversal on an ended voucher, or what was left when it ended.
    return HistoryRow(kind=entry.kind if entry.kind in ("revoked", "expired") else "returned", **common)


async def voucher_history(session: AsyncSession, voucher_id: int) -> list[HistoryRow]:
    """The voucher's rows, oldest first; ``sum(r.amount_cents)`` is its spendable balance."""
    account = (ledger.VOUCHER, voucher_id)
    entries = (await session.scalars(
        select(LedgerEntry).where(
            LedgerEntry.voucher_id == voucher_id,
            or_(LedgerEntry.from_kind == ledger.VOUCHER, LedgerEntry.to_kind == ledger.VOUCHER))
        .order_by(LedgerEntry.id))).all()
    holds = {hold.id: (hold, name) for hold, name in (await session.execute(
        select(Hold, Provider.name).join(Provider, Provider.id == Hold.provider_id)
        .where(Hold.voucher_id == voucher_id))).all()}
    redemptions = {r.id: (r, name) for r, name in (await session.execute(
        select(Redemption, Provider.name).join(Provider, Provider.id == Redemption.provider_id)
        .where(Redemption.voucher_id == voucher_id))).all()}
    rows = (_row(entry, account, holds, redemptions) for entry in entries)
    return [row for row in rows if row is not None]
