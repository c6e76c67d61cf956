"""Statements and SEPA payment batches: each redemption paid once, reversals netted, the file
valid against the pain.001 XSD, the ledger reconciled."""

from __future__ import annotations

import datetime as dt

import pytest
from sepaxml.validation import try_valid_xml
from sqlalchemy import select, update

from service import payouts, vouchers
from service.check import reconcile
from service.db import run_in_transaction
from service.errors import Refused
from service.models import Enrolment, PayoutLine, Provider, Redemption, Voucher
from tests.helpers import make_provider, make_scheme, make_voucher

DEBTOR = payouts.Debtor(name="Gemeente Arnhem", iban="NL91ABNA0417164300")
TODAY = dt.datetime.now(payouts.ZONE).date()
START, END = TODAY - dt.timedelta(days=40), TODAY  # the period ends at midnight: it is over


async def _redeem(rt, voucher_id: int, provider: Provider, cents: int, ref: str) -> int:  # type: ignore[no-untyped-def]
    async def work(session):  # type: ignore[no-untyped-def]
        voucher = await session.get_one(Voucher, voucher_id)
        r = await vouchers.redeem(session, rt, voucher, provider_id=provider.id, provider_name=provider.name,
                                  category="coaching", invoice_cents=cents, reference=ref, session_date=None,
                                  recorded_by="test")
        return r.id

    redemption_id = await run_in_transaction(rt.sessionmaker, work)
    # Recorded yesterday, so inside the finished period.
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Redemption).where(Redemption.id == redemption_id)
                              .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)))
    return redemption_id


async def _batch(rt):  # type: ignore[no-untyped-def]
    return await run_in_transaction(rt.sessionmaker, lambda s: payouts.create_batch(
        s, start=START, end=END, debtor=DEBTOR, created_by="test"))


async def test_batch_pays_each_redemption_once_and_nets_reversals(rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme)
    provider_a, _ = await make_provider(rt, scheme, name="Coach A")
    provider_b, _ = await make_provider(rt, scheme, name="Coach B")
    r1 = await _redeem(rt, voucher.id, provider_a, 300_00, "A-1")
    r2 = await _redeem(rt, voucher.id, provider_a, 100_00, "A-2")
    r3 = await _redeem(rt, voucher.id, provider_b, 50_00, "B-1")
    # Reversed before any payment: never paid.
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(s, r2, reason="typo",
                                                                                    provider_id=None))
    batch = await _batch(rt)
    assert batch.total_cents == 350_00 and batch.transaction_count == 2
    try_valid_xml(batch.sepa_xml, "pain.001.001.03")  # raises when the file does not validate
    assert b"NL91ABNA0417164300" in batch.sepa_xml and b"<InstdAmt Ccy=\"EUR\">300.00</InstdAmt>" in batch.sepa_xml
    async with rt.sessionmaker() as session:
        paid = {r.id: r.payout_batch_id for r in await session.scalars(select(Redemption))}
        assert paid == {r1: batch.id, r2: None, r3: batch.id}
        assert await reconcile(session) == []
        enrolment_a = await session.scalar(select(Enrolment).where(Enrolment.provider_id == provider_a.id))
        assert enrolment_a.paid_cents == 300_00 == enrolment_a.received_cents
    # Nothing is paid twice: a second batch for the same period has nothing to do.
    with pytest.raises(Refused) as refused:
        await _batch(rt)
    assert refused.value.code == "nothing-to-pay"

    # Reversed after payment: taken back from the next payment; not covered yet → waits.
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(s, r1, reason="refund",
                                                                                    provider_id=None))
    async with rt.sessionmaker() as session, session.begin():  # reversed inside the period too
        await session.execute(update(Redemption).where(Redemption.id == r1)
                              .values(reversed_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)))
    await _redeem(rt, voucher.id, provider_a, 100_00, "A-3")
    with pytest.raises(Refused):
        await _batch(rt)
    r5 = await _redeem(rt, voucher.id, provider_a, 250_00, "A-4")
    second = await _batch(rt)
    assert second.total_cents == 100_00 + 250_00 - 300_00
    try_valid_xml(second.sepa_xml, "pain.001.001.03")
    async with rt.sessionmaker() as session:
        line = await session.scalar(select(PayoutLine).where(PayoutLine.batch_id == second.id))
        assert line.clawback_cents == 300_00 and line.amount_cents == 50_00
        assert (await session.get_one(Redemption, r1)).clawback_batch_id == second.id
        assert (await session.get_one(Redemption, r5)).payout_batch_id == second.id
        assert await reconcile(session) == []
        # The first batch's stored file is unchanged.
        first = await session.get_one(type(batch), batch.id)
        assert first.sepa_xml == batch.sepa_xml


async def test_batch_refuses_unfinished_period(rt) -> None:
    with pytest.raises(Refused) as refused:
        await run_in_transaction(rt.sessionmaker, lambda s: payouts.create_batch(
            s, start=TODAY, end=TODAY + dt.timedelta(days=1), debtor=DEBTOR, created_by="test"))
    assert refused.value.code == "period-not-over"


async def test_statement_and_csv(rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    r1 = await _redeem(rt, voucher.id, provider, 125_50, "F-1")
    await _redeem(rt, voucher.id, provider, 10_00, "F-2")
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(s, r1, reason="x",
                                                                                    provider_id=None))
    async with rt.sessionmaker() as session:
        st = await payouts.statement(session, provider.id, START, END + dt.timedelta(days=1))
    assert [(line.kind, line.amount_cents) for line in st.lines] == [
        ("redemption", 125_50), ("redemption", 10_00), ("reversal", -125_50)]
    assert st.totals[0].redeemed_cents == 135_50 and st.totals[0].net_cents == 10_00
    data = payouts.statement_csv(st, headers=["a"] * 9, labels={})
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert ";125,50;" in text and ";-125,50;" in text and text.count("\r\n") == 4
