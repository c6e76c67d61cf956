"""Paying providers: monthly statements and SEPA payment batches (pain.001).

Rules, and why:

* A redemption is paid once. ``Redemption.payout_batch_id`` is a single column, set only by a
  conditional ``UPDATE … WHERE payout_batch_id IS NULL AND reversed_at IS NULL``; if any row of
  the batch was taken meanwhile (another batch, or a reversal that won the row lock) the whole
  batch is rolled back and can simply be run again.
* A redemption reversed before it is paid is never paid.
* A redemption reversed *after* it was paid is taken back from the provider's next payment
  (a "clawback", stamped with ``clawback_batch_id``). If what a provider is owed in a batch does
  not cover its clawbacks, it gets nothing in that batch and everything waits for the next one,
  so no negative transfer is ever made. The provider's ledger balance (received − paid) is then
  negative: the municipality may also ask for the money back outside the service.
* A batch pays everything unpaid recorded before the end of its period (earlier leftovers
  included) and may only be made once the period is over, so nothing recorded later can be
  missed. Once written, a batch and its SEPA file are never changed; ``payout export`` writes the
  stored file again byte for byte.
* Each batch line moves money in the ledger from ``("provider", enrolment)`` to
  ``("bank", scheme)`` and raises ``Enrolment.paid_cents`` in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Callable
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec
from sepaxml import SepaTransfer
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from stdnum import iban as stdnum_iban
from stdnum.exceptions import ValidationError

from . import ledger, spreadsheet
from .errors import N_, Conflict, InvalidInput, Refused
from .models import Enrolment, PayoutBatch, PayoutLine, Provider, Redemption, Scheme, utcnow

__all__ = (
    "Debtor",
    "Statement",
    "batch_summary",
    "create_batch",
    "month_period",
    "statement",
    "statement_csv",
)

ZONE = ZoneInfo("Europe/Amsterdam")


class Debtor(msgspec.Struct, frozen=True, kw_only=True):
    """The municipality's account the payments are made from."""

    name: str
    iban: str
    bic: str | None = None


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["redemption", "reversal"]
    redemption_id: int
    day: dt.date
    scheme: str
    category: str
    reference: str
    invoice_cents: int
    amount_cents: int
    """What the voucher pays; negative for a reversal."""
    payout_batch_id: int | None


class CategoryTotal(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    redeemed_cents: int
    reversed_cents: int
    net_cents: int


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    period_start: dt.date
    period_end: dt.date
    """Exclusive."""
    lines: list[StatementLine]
    totals: list[CategoryTotal]
    net_cents: int


def month_period(month: str | None, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """``"2026-11"`` → (1 Nov, 1 Dec); None → the current month."""
    if month is None:
        today = today or utcnow().astimezone(ZONE).date()
        start = today.replace(day=1)
    else:
        try:
            start = dt.date.fromisoformat(f"{month}-01")
            (start + dt.timedelta(days=32)).replace(day=1)
        except (ValueError, OverflowError):  # not a month, or December of the year 9999
            raise InvalidInput("month-invalid", N_("Give the month as year-month, for example 2026-11."),
                               field="month") from None
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def _moment(day: dt.date) -> dt.datetime:
    """Midnight in Arnhem at the start of ``day``, as the moment periods begin and end."""
    return dt.datetime.combine(day, dt.time(), tzinfo=ZONE).astimezone(dt.UTC)


def _day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(ZONE).date()


async def statement(session: AsyncSession, provider_id: int, start: dt.date, end: dt.date) -> Statement:
    """Every redemption recorded and every reversal made in [start, end), totals per category."""
    provider = await session.get_one(Provider, provider_id)
    since, until = _moment(start), _moment(end)
    slugs = dict((await session.execute(select(Scheme.id, Scheme.slug))).all())
    rows = await session.scalars(
        select(Redemption)
        .where(
            Redemption.provider_id == provider_id,
            or_(
                (Redemption.created_at >= since) & (Redemption.created_at < until),
                (Redemption.reversed_at >= since) & (Redemption.reversed_at < until),
            ),
        )
        .order_by(Redemption.created_at, Redemption.id)
    )
    lines: list[StatementLine] = []
    for r in rows:
        common = {"redemption_id": r.id, "scheme": slugs[r.scheme_id], "category": r.category,
                  "reference": r.reference, "invoice_cents": r.invoice_cents, "payout_batch_id": r.payout_batch_id}
        if since <= r.created_at < until:
            lines.append(StatementLine(kind="redemption", day=_day(r.created_at), amount_cents=r.amount_cents, **common))
        if r.reversed_at is not None and since <= r.reversed_at < until:
            lines.append(StatementLine(kind="reversal", day=_day(r.reversed_at), amount_cents=-r.amount_cents, **common))
    lines.sort(key=lambda line: (line.day, line.redemption_id, line.kind))
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in lines:
        sums[line.category][0 if line.kind == "redemption" else 1] += abs(line.amount_cents)
    totals = [CategoryTotal(category=c, redeemed_cents=r, reversed_cents=v, net_cents=r - v)
              for c, (r, v) in sorted(sums.items())]
    return Statement(provider=provider.name, period_start=start, period_end=end, lines=lines, totals=totals,
                     net_cents=sum(t.net_cents for t in totals))


def statement_csv(st: Statement, *, headers: list[str], labels: dict[str, str]) -> bytes:
    """The statement as CSV in the one convention of every download (see spreadsheet.py)."""
    return spreadsheet.write([headers, *(
        [line.day.isoformat(), labels.get(line.kind, line.kind), line.redemption_id, spreadsheet.cell(line.scheme),
         labels.get(line.category, line.category), spreadsheet.cell(line.reference),
         spreadsheet.euros(line.invoice_cents), spreadsheet.euros(line.amount_cents), line.payout_batch_id or ""]
        for line in st.lines)])


def _iban(value: str, field: str) -> str:
    try:
        return stdnum_iban.validate(value)
    except ValidationError:
        raise InvalidInput("iban-invalid", N_("This is not a valid IBAN."), field=field) from None


UNPAID = and_(Redemption.payout_batch_id.is_(None), Redemption.reversed_at.is_(None))
"""A redemption a batch pays: not paid yet, not reversed. Selected and stamped by this one rule."""
TO_TAKE_BACK = and_(Redemption.payout_batch_id.is_not(None), Redemption.reversed_at.is_not(None),
                    Redemption.clawback_batch_id.is_(None))
"""A redemption a batch takes back: paid, reversed since, not taken back yet."""


async def create_batch(session: AsyncSession, *, start: dt.date, end: dt.date, debtor: Debtor, created_by: str,
                       execution_date: dt.date | None = None, now: dt.datetime | None = None,
                       progress: Callable[[int, int], None] | None = None) -> PayoutBatch:
    """Pay every provider what it is owed for what was recorded before ``end``; see the module
    docstring for the rules. Raises ``Refused`` when there is nothing to pay. ``progress`` is told
    (steps done, steps in all): one step per provider's enrolment planned, one per line written."""
    report = progress or (lambda _done, _total: None)
    now = now or utcnow()
    if end <= start:
        raise InvalidInput("period-invalid", N_("The end of the period must be after its start."), field="to")
    if _moment(end) > now:
        raise Refused("period-not-over", N_("A period can only be paid once it is over."), field="to")
    debtor_iban = _iban(debtor.iban, "debtor_iban")
    cutoff = _moment(end)
    due = list(await session.scalars(select(Redemption).where(UNPAID, Redemption.created_at < cutoff)))
    clawbacks = list(await session.scalars(select(Redemption).where(TO_TAKE_BACK, Redemption.reversed_at < cutoff)))
    by_enrolment: dict[int, tuple[list[Redemption], list[Redemption]]] = defaultdict(lambda: ([], []))
    for r in due:
        by_enrolment[r.enrolment_id][0].append(r)
    for r in clawbacks:
        by_enrolment[r.enrolment_id][1].append(r)

    sepa = SepaTransfer({"name": debtor.name, "IBAN": debtor_iban, "currency": "EUR", "batch": True,
                         **({"BIC": debtor.bic} if debtor.bic else {})}, clean=True)
    message_id = sepa.msg_id[:35]
    planned: list[tuple[Enrolment, Provider, Scheme, int, int, str, list[Redemption], list[Redemption]]] = []
    steps = 2 * len(by_enrolment)
    report(0, steps)
    for n, enrolment_id in enumerate(sorted(by_enrolment), start=1):
        report(n - 1, steps)
        paying, taking_back = by_enrolment[enrolment_id]
        gross = sum(r.amount_cents for r in paying)
        back = sum(r.amount_cents for r in taking_back)
        if gross - back <= 0:
            continue  # the clawbacks wait until they are covered; never a negative transfer
        enrolment = await session.get_one(Enrolment, enrolment_id)
        provider = await session.get_one(Provider, enrolment.provider_id)
        scheme = await session.get_one(Scheme, enrolment.scheme_id)
        end_to_end = f"{message_id[:28]}-{n}"[:35]
        sepa.add_payment({
            "name": provider.name, "IBAN": _iban(provider.iban, "iban"), "amount": gross - back,
            "execution_date": execution_date or (now.astimezone(ZONE).date() + dt.timedelta(days=1)),
            "description": f"Ondernemersvoucher {scheme.slug} {start.isoformat()}/{end.isoformat()}",
            "endtoend_id": end_to_end,
        })
        planned.append((enrolment, provider, scheme, gross - back, back, end_to_end, paying, taking_back))
    if not planned:
        raise Refused("nothing-to-pay", N_("There is nothing to pay for this period."))
    # sepaxml checks the file against the official pain.001.001.03 XSD before we store it.
    xml = sepa.export(validate=True)
    batch = PayoutBatch(period_start=start, period_end=end, message_id=message_id,
                        total_cents=sum(p[3] for p in planned), transaction_count=len(planned), sepa_xml=xml,
                        sepa_sha256=hashlib.sha256(xml).hexdigest(), created_by=created_by, created_at=now)
    session.add(batch)
    await session.flush()
    steps = len(by_enrolment) + len(planned)
    for written, (enrolment, provider, scheme, amount, back, end_to_end, paying, taking_back) in enumerate(planned):
        report(len(by_enrolment) + written, steps)
        await _stamp(session, [r.id for r in paying], Redemption.payout_batch_id, batch.id)
        await _stamp(session, [r.id for r in taking_back], Redemption.clawback_batch_id, batch.id)
        session.add(PayoutLine(batch_id=batch.id, enrolment_id=enrolment.id, provider_id=provider.id,
                               scheme_id=scheme.id, amount_cents=amount, clawback_cents=back, iban=provider.iban,
                               creditor_name=provider.name, end_to_end_id=end_to_end))
        await session.execute(update(Enrolment).where(Enrolment.id == enrolment.id)
                              .values(paid_cents=Enrolment.paid_cents + amount))
        ledger.post(session, scheme_id=scheme.id, kind="payout", source=(ledger.PROVIDER, enrolment.id),
                    target=(ledger.BANK, scheme.id), amount_cents=amount, memo=f"payout batch {batch.id}")
    await session.flush()
    report(steps, steps)
    return batch


async def _stamp(session: AsyncSession, ids: list[int], column: object, batch_id: int) -> None:
    if not ids:
        return
    guard = UNPAID if column is Redemption.payout_batch_id else TO_TAKE_BACK
    result = await session.execute(
        update(Redemption).where(Redemption.id.in_(ids), guard).values({column: batch_id}).returning(Redemption.id))
    if len(result.all()) != len(ids):
        raise Conflict("batch-raced", N_("Redemptions changed while the batch was made. Run it again."))


class BatchSummary(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: int
    message_id: str
    period_start: dt.date
    period_end: dt.date
    total_cents: int
    transaction_count: int
    sepa_sha256: str


def batch_summary(batch: PayoutBatch) -> BatchSummary:
    return BatchSummary(batch_id=batch.id, message_id=batch.message_id, period_start=batch.period_start,
                        period_end=batch.period_end, total_cents=batch.total_cents,
                        transaction_count=batch.transaction_count, sepa_sha256=batch.sepa_sha256)
