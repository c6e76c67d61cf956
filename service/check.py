"""Reconciliation: the stored counters must equal what the ledger sums to, and the rules of
each scheme must hold. ``vouchers check`` prints every difference and exits non-zero on any."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import and_, func, not_, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from . import ledger, schemes
from .models import Enrolment, Hold, LedgerEntry, Scheme, Voucher

__all__ = ("reconcile",)


_PER_VOUCHER = (ledger.VOUCHER, ledger.HELD)


async def _account_balances(session: AsyncSession) -> dict[tuple[str, int], int]:
    """Balances of the accounts of schemes and enrolments (a few hundred rows). The vouchers'
    accounts, one or two per voucher, are compared in the database by :func:`_voucher_differences`."""
    balances: dict[tuple[str, int], int] = defaultdict(int)
    incoming = (
        select(LedgerEntry.to_kind, LedgerEntry.to_id, func.sum(LedgerEntry.amount_cents))
        .where(LedgerEntry.to_kind.not_in(_PER_VOUCHER))
        .group_by(LedgerEntry.to_kind, LedgerEntry.to_id)
    )
    outgoing = (
        select(LedgerEntry.from_kind, LedgerEntry.from_id, func.sum(LedgerEntry.amount_cents))
        .where(LedgerEntry.from_kind.not_in(_PER_VOUCHER))
        .group_by(LedgerEntry.from_kind, LedgerEntry.from_id)
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
        expect(f"{name} redeemed", await schemes.redeemed(session, scheme.id), int(totals[1]))
        expect(f"{name} places held by vouchers", scheme.places_used, int(totals[2]))
        if scheme.places_used > scheme.max_places:
            problems.append(f"{name}: {scheme.places_used} places used, cap {scheme.max_places}")
        if scheme.committed_cents > scheme.budget_cents:
            problems.append(f"{name}: {scheme.committed_cents} committed, budget {scheme.budget_cents}")

    for voucher_id, problem in await _voucher_differences(session):
        problems.append(f"voucher {voucher_id} {problem}")

    held_for = dict((await session.execute(
        select(Hold.enrolment_id, func.sum(Hold.amount_cents)).where(Hold.status == "open")
        .group_by(Hold.enrolment_id))).all())
    for enrolment in await session.scalars(select(Enrolment)):
        expect(
            f"enrolment {enrolment.id} owed to provider",
            enrolment.received_cents - enrolment.paid_cents,
            balances[(ledger.PROVIDER, enrolment.id)],
        )
        expect(f"enrolment {enrolment.id} held by open holds", enrolment.held_cents,
               int(held_for.get(enrolment.id) or 0))

    return problems


async def _voucher_differences(session: AsyncSession) -> list[tuple[int, str]]:
    """Each voucher against its ledger accounts and its open holds, in one set-based query that
    returns only the vouchers that differ: it takes seconds at a million vouchers, where loading
    every voucher would take minutes."""
    flows = union_all(
        select(LedgerEntry.to_kind.label("kind"), LedgerEntry.to_id.label("account"),
               LedgerEntry.amount_cents.label("amount")).where(LedgerEntry.to_kind.in_(_PER_VOUCHER)),
        select(LedgerEntry.from_kind, LedgerEntry.from_id, -LedgerEntry.amount_cents)
        .where(LedgerEntry.from_kind.in_(_PER_VOUCHER)),
    ).subquery()
    sums = (select(flows.c.kind, flows.c.account, func.sum(flows.c.amount).label("total"))
            .group_by(flows.c.kind, flows.c.account).subquery())
    spendable, set_aside = sums.alias("spendable"), sums.alias("set_aside")
    holds = (select(Hold.voucher_id, func.sum(Hold.amount_cents).label("total"))
             .where(Hold.status == "open").group_by(Hold.voucher_id).subquery())
    ledger_balance = func.coalesce(spendable.c.total, 0)
    ledger_held = func.coalesce(set_aside.c.total, 0)
    open_held = func.coalesce(holds.c.total, 0)
    adds_up = (Voucher.balance_cents + Voucher.held_cents + Voucher.redeemed_cents + Voucher.returned_cents
               == Voucher.value_cents)
    query = (
        select(Voucher.id, Voucher.balance_cents, ledger_balance, Voucher.held_cents, ledger_held, open_held, adds_up)
        .outerjoin(spendable, and_(spendable.c.kind == ledger.VOUCHER, spendable.c.account == Voucher.id))
        .outerjoin(set_aside, and_(set_aside.c.kind == ledger.HELD, set_aside.c.account == Voucher.id))
        .outerjoin(holds, holds.c.voucher_id == Voucher.id)
        .where(or_(Voucher.balance_cents != ledger_balance, Voucher.held_cents != ledger_held,
                   Voucher.held_cents != open_held, not_(adds_up)))
        .order_by(Voucher.id)
    )
    found: list[tuple[int, str]] = []
    for voucher_id, balance, in_ledger, held, held_in_ledger, held_open, adds in await session.execute(query):
        if balance != in_ledger:
            found.append((voucher_id, f"balance: stored {balance}, ledger {in_ledger}"))
        if held != held_in_ledger:
            found.append((voucher_id, f"held: stored {held}, ledger {held_in_ledger}"))
        if held != held_open:
            found.append((voucher_id, f"open holds: stored {held}, ledger {held_open}"))
        if not adds:
            found.append((voucher_id, "amounts do not add up to its value"))
    return found
