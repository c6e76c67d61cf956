"""Reconciliation: the stored counters must equal what the ledger sums to, and the rules of
each scheme must hold. ``vouchers check`` prints every difference and exits non-zero on any."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import ledger
from .models import Enrolment, Hold, LedgerEntry, Scheme, Voucher

__all__ = ("reconcile",)


async def _account_balances(session: AsyncSession) -> dict[tuple[str, int], int]:
    balances: dict[tuple[str, int], int] = defaultdict(int)
    incoming = select(LedgerEntry.to_kind, LedgerEntry.to_id, func.sum(LedgerEntry.amount_cents)).group_by(
        LedgerEntry.to_kind, LedgerEntry.to_id
    )
    outgoing = select(LedgerEntry.from_kind, LedgerEntry.from_id, func.sum(LedgerEntry.amount_cents)).group_by(
        LedgerEntry.from_kind, LedgerEntry.from_id
    )
    for kind, account_id, total in await session.execute(incoming):
        balances[(kind, account_id)] += int(total)
    for kind, account_id, total in await session.execute(outgoing):
        balances[(kind, account_id)] -= int(total)
    return balances


async def reconcile(session: AsyncSession) -> list[str]:
    """Every difference found, in words; an empty list means the books are right."""
    problems: list[str] = []
    balances = await _account_balances(session)
    places = dict(
        (await session.execute(select(LedgerEntry.scheme_id, func.sum(LedgerEntry.places)).group_by(LedgerEntry.scheme_id))).all()
    )

    def expect(label: str, stored: int, ledger_value: int) -> None:
        if stored != ledger_value:
            problems.append(f"{label}: stored {stored}, ledger {ledger_value}")

    for scheme in await session.scalars(select(Scheme)):
        name = f"scheme {scheme.slug}"
        expect(f"{name} budget left", scheme.budget_cents - scheme.committed_cents, balances[(ledger.BUDGET, scheme.id)])
        expect(f"{name} reserve", scheme.reserve_cents, balances[(ledger.RESERVE, scheme.id)])
        expect(f"{name} places used", scheme.places_used, int(places.get(scheme.id) or 0))
        totals = (
            await session.execute(
                select(
                    func.coalesce(func.sum(Voucher.balance_cents + Voucher.held_cents + Voucher.redeemed_cents), 0),
                    func.coalesce(func.sum(Voucher.redeemed_cents), 0),
                    func.count().filter(Voucher.holds_place),
                ).where(Voucher.scheme_id == scheme.id)
            )
        ).one()
        expect(f"{name} committed", scheme.committed_cents, int(totals[0]))
        expect(f"{name} redeemed", scheme.redeemed_cents, int(totals[1]))
        expect(f"{name} places held by vouchers", scheme.places_used, int(totals[2]))
        if scheme.places_used > scheme.max_places:
            problems.append(f"{name}: {scheme.places_used} places used, cap {scheme.max_places}")
        if scheme.committed_cents > scheme.budget_cents:
            problems.append(f"{name}: {scheme.committed_cents} committed, budget {scheme.budget_cents}")

    for voucher in await session.scalars(select(Voucher)):
        name = f"voucher {voucher.id}"
        expect(f"{name} balance", voucher.balance_cents, balances[(ledger.VOUCHER, voucher.id)])
        expect(f"{name} held", voucher.held_cents, balances[(ledger.HELD, voucher.id)])
        if voucher.balance_cents + voucher.held_cents + voucher.redeemed_cents + voucher.returned_cents != voucher.value_cents:
            problems.append(f"{name}: amounts do not add up to its value")

    open_held = dict(
        (
            await session.execute(
                select(Hold.voucher_id, func.sum(Hold.amount_cents)).where(Hold.status == "open").group_by(Hold.voucher_id)
            )
        ).all()
    )
    for voucher_id, held in await session.execute(select(Voucher.id, Voucher.held_cents)):
        expect(f"voucher {voucher_id} open holds", held, int(open_held.get(voucher_id) or 0))

    for enrolment in await session.scalars(select(Enrolment)):
        expect(
            f"enrolment {enrolment.id} owed to provider",
            enrolment.received_cents - enrolment.paid_cents,
            balances[(ledger.PROVIDER, enrolment.id)],
        )

    if sum(balances.values()) != 0:
        problems.append(f"ledger does not balance: {sum(balances.values())}")
    return problems
