"""Domain rules: issuing, redeeming, holds, reversals, revocation, expiry, the waiting list, the
lottery; after each, the stored figures must agree with the ledger."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select, update

from service import applications, outbox, schemes, sweep, vouchers
from service.check import reconcile
from service.db import run_in_transaction
from service.errors import Conflict, Forbidden, InvalidInput, Refused
from service.models import Application, Hold, Scheme, Voucher, utcnow
from service.runtime import Runtime
from tests.helpers import applicant, make_provider, make_scheme, make_voucher, reload


async def assert_books_agree(rt: Runtime) -> None:
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def redeem(rt: Runtime, voucher: Voucher, provider_id: int, cents: int, category: str = "coaching"):
    async def work(session):
        fresh = await session.get_one(Voucher, voucher.id)
        return await vouchers.redeem(session, rt, fresh, provider_id=provider_id, provider_name="Coach", category=category,
                                     invoice_cents=cents, reference="F-1", session_date=None, recorded_by="test")

    return await run_in_transaction(rt.sessionmaker, work)


async def test_issue_takes_a_place_and_the_value(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    scheme = await reload(rt, Scheme, scheme.id)
    assert (scheme.places_used, scheme.committed_cents) == (1, 135000)
    assert voucher.balance_cents == voucher.value_cents == 135000
    await assert_books_agree(rt)


async def test_one_kvk_number_applies_once(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, kvk_number="12345678")
    with pytest.raises(Conflict):
        await make_voucher(rt, scheme, kvk_number="12345678")


async def test_ineligible_applicants_are_rejected_with_reasons(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    details = applicant(employees=11, postcode="1011 AB")

    async def work(session):
        fresh = await session.get_one(Scheme, scheme.id)
        application = await applications.submit(session, fresh, details)
        return await applications.decide(session, rt, fresh, application, employees=11, postcode="1011 AB")

    application = await run_in_transaction(rt.sessionmaker, work)
    assert application.status == "rejected"
    assert set(application.reasons) == {"too-many-employees", "outside-area"}
    assert (await reload(rt, Scheme, scheme.id)).places_used == 0


async def test_cap_then_waiting_list_with_positions(rt: Runtime) -> None:
    scheme = await make_scheme(rt, max_places=2)
    await make_voucher(rt, scheme)
    await make_voucher(rt, scheme)
    waiting = []
    for _ in range(3):
        details = applicant()

        async def work(session, details=details):
            fresh = await session.get_one(Scheme, scheme.id)
            application = await applications.submit(session, fresh, details)
            await applications.decide(session, rt, fresh, application, employees=1, postcode="6811AB")
            return application.public_id

        waiting.append(await run_in_transaction(rt.sessionmaker, work))
    async with rt.sessionmaker() as session:
        states = [await applications.application_state(session, pid) for pid in waiting]
    assert [s.waiting_list_position for s in states] == [1, 2, 3]
    assert (await reload(rt, Scheme, scheme.id)).waiting_count == 3


async def test_budget_is_a_cap_too(rt: Runtime) -> None:
    scheme = await make_scheme(rt, budget_cents=300000, value_cents=135000, max_places=10)
    await make_voucher(rt, scheme)
    await make_voucher(rt, scheme)
    with pytest.raises(AssertionError, match="no place left"):
        await make_voucher(rt, scheme)
    scheme = await reload(rt, Scheme, scheme.id)
    assert scheme.committed_cents == 270000 <= scheme.budget_cents


async def test_partial_redemptions_and_refusals(rt: Runtime) -> None:
    scheme = await make_scheme(rt, categories=["coaching", "financial_advice"])
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme, categories=["coaching"])
    await redeem(rt, voucher, provider.id, 100000)
    await redeem(rt, voucher, provider.id, 30000)
    with pytest.raises(Refused) as refused:
        await redeem(rt, voucher, provider.id, 10000)
    assert refused.value.code == "insufficient-balance"
    with pytest.raises(Refused) as refused:
        await redeem(rt, voucher, provider.id, 1000, category="financial_advice")
    assert refused.value.code == "category-not-allowed"
    with pytest.raises(InvalidInput):
        await redeem(rt, voucher, provider.id, 0)
    await redeem(rt, voucher, provider.id, 5000)
    voucher = await reload(rt, Voucher, voucher.id)
    assert (voucher.balance_cents, voucher.status) == (0, "used_up")
    with pytest.raises(Refused) as refused:
        await redeem(rt, voucher, provider.id, 1)
    assert refused.value.code == "voucher-used-up"
    async with rt.sessionmaker() as session:
        assert await schemes.redeemed(session, scheme.id) == 135000
    await assert_books_agree(rt)


async def test_unapproved_provider_cannot_redeem(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme, approve=False)
    with pytest.raises(Forbidden):
        await redeem(rt, voucher, provider.id, 1000)


async def test_own_contribution_is_taken_off_each_invoice(rt: Runtime) -> None:
    scheme = await make_scheme(rt, own_contribution_percent=10)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    redemption = await redeem(rt, voucher, provider.id, 10005)
    assert (redemption.invoice_cents, redemption.own_contribution_cents, redemption.amount_cents) == (10005, 1001, 9004)
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 135000 - 9004
    await assert_books_agree(rt)


async def test_provider_cap(rt: Runtime) -> None:
    scheme = await make_scheme(rt, provider_cap_cents=150000)
    first, _ = await make_voucher(rt, scheme)
    second, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    await redeem(rt, first, provider.id, 135000)
    with pytest.raises(Refused) as refused:
        await redeem(rt, second, provider.id, 20000)
    assert refused.value.code == "provider-cap-reached"
    assert (await reload(rt, Voucher, second.id)).balance_cents == 135000  # nothing half-done
    await redeem(rt, second, provider.id, 15000)
    await assert_books_agree(rt)


async def test_hold_confirm_and_release(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)

    async def hold(session, cents=50000):
        fresh = await session.get_one(Voucher, voucher.id)
        return await vouchers.create_hold(session, rt, fresh, provider_id=provider.id, category="coaching",
                                          invoice_cents=cents, reference="R", created_by="test")

    first = await run_in_transaction(rt.sessionmaker, hold)
    second = await run_in_transaction(rt.sessionmaker, hold)
    held = await reload(rt, Voucher, voucher.id)
    assert (held.balance_cents, held.held_cents) == (35000, 100000)
    with pytest.raises(Refused):
        await run_in_transaction(rt.sessionmaker, hold)  # 50,000 more than the 35,000 left
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.confirm_hold(
        s, rt, first.id, provider_id=provider.id, recorded_by="test", provider_name="Coach"))
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.release_hold(s, second.id, reason="declined"))
    with pytest.raises(Refused):
        await run_in_transaction(rt.sessionmaker, lambda s: vouchers.release_hold(s, first.id, reason="declined"))
    after = await reload(rt, Voucher, voucher.id)
    assert (after.balance_cents, after.held_cents, after.redeemed_cents) == (85000, 0, 50000)
    await assert_books_agree(rt)


async def test_reversal_by_coach_only_within_the_period(rt: Runtime) -> None:
    scheme = await make_scheme(rt, reversal_days=30)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    other, _ = await make_provider(rt, scheme, name="Ander")
    redemption = await redeem(rt, voucher, provider.id, 40000)
    later = utcnow() + dt.timedelta(days=31)
    with pytest.raises(Refused) as refused:
        await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(
            s, redemption.id, reason="mistake", provider_id=provider.id, now=later))
    assert refused.value.code == "reversal-period-over"
    with pytest.raises(Exception):
        await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(
            s, redemption.id, reason="mistake", provider_id=other.id))
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(
        s, redemption.id, reason="mistake", provider_id=provider.id))
    with pytest.raises(Refused):
        await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(
            s, redemption.id, reason="again", provider_id=None))
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 135000
    await assert_books_agree(rt)


async def test_revoking_returns_money_and_unused_place_and_promotes(rt: Runtime) -> None:
    scheme = await make_scheme(rt, max_places=1)
    voucher, code = await make_voucher(rt, scheme)
    details = applicant()

    async def wait(session):
        fresh = await session.get_one(Scheme, scheme.id)
        application = await applications.submit(session, fresh, details)
        return await applications.decide(session, rt, fresh, application, employees=1, postcode="6811AB")

    waiting = await run_in_transaction(rt.sessionmaker, wait)
    assert waiting.status == "waiting"
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.end_voucher(
        s, rt, voucher.id, status="revoked", reason="fraud"))
    revoked = await reload(rt, Voucher, voucher.id)
    assert (revoked.status, revoked.balance_cents, revoked.returned_cents) == ("revoked", 0, 135000)
    promoted = await reload(rt, Application, waiting.id)
    assert promoted.status == "granted"
    scheme = await reload(rt, Scheme, scheme.id)
    assert (scheme.places_used, scheme.committed_cents, scheme.waiting_count) == (1, 135000, 0)
    provider, _ = await make_provider(rt, scheme)
    with pytest.raises(Refused) as refused:
        await redeem(rt, revoked, provider.id, 100)
    assert refused.value.code == "voucher-revoked"
    await assert_books_agree(rt)


async def test_used_voucher_keeps_its_place_when_revoked(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    await redeem(rt, voucher, provider.id, 35000)
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.end_voucher(
        s, rt, voucher.id, status="revoked", reason="moved away"))
    scheme = await reload(rt, Scheme, scheme.id)
    assert (scheme.places_used, scheme.committed_cents) == (1, 35000)
    async with rt.sessionmaker() as session:
        assert await schemes.redeemed(session, scheme.id) == 35000
    await assert_books_agree(rt)


async def test_sweep_expires_vouchers_and_lapses_holds(rt: Runtime) -> None:
    scheme = await make_scheme(rt, validity_days=10, hold_days=2)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    hold = await run_in_transaction(rt.sessionmaker, lambda s: vouchers.create_hold(
        s, rt, voucher, provider_id=provider.id, category="coaching", invoice_cents=1000, reference="R",
        created_by="t"))
    report = await sweep.sweep(rt, now=utcnow() + dt.timedelta(days=3))
    assert report.holds_lapsed == 1
    assert (await reload(rt, Hold, hold.id)).release_reason == "lapsed"
    report = await sweep.sweep(rt, now=utcnow() + dt.timedelta(days=11))
    assert report.vouchers_expired == 1
    expired = await reload(rt, Voucher, voucher.id)
    assert (expired.status, expired.returned_cents) == ("expired", 135000)
    assert (await reload(rt, Scheme, scheme.id)).places_used == 0
    again = await sweep.sweep(rt, now=utcnow() + dt.timedelta(days=11))
    assert again.vouchers_expired == 0
    await assert_books_agree(rt)


async def test_nothing_is_redeemed_after_expiry_even_before_the_sweep(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).where(Voucher.id == voucher.id)
                              .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    with pytest.raises(Refused) as refused:
        await redeem(rt, voucher, provider.id, 100)
    assert refused.value.code == "voucher-expired"


async def test_closed_scheme_refuses_redemptions(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Scheme).where(Scheme.id == scheme.id).values(closed_at=utcnow()))
    with pytest.raises(Refused) as refused:
        await redeem(rt, voucher, provider.id, 100)
    assert refused.value.code == "scheme-closed"


async def test_lottery_draw_is_reproducible_from_the_published_seed(rt: Runtime) -> None:
    seed = "arnhem-lottery-seed-2026"
    scheme = await make_scheme(rt, allocation="lottery", max_places=3,
                               lottery_seed_hash=hashlib.sha256(seed.encode()).hexdigest())
    entered = []
    for _ in range(7):
        details = applicant()

        async def enter(session, details=details):
            fresh = await session.get_one(Scheme, scheme.id)
            application = await applications.submit(session, fresh, details)
            await applications.decide(session, rt, fresh, application, employees=1, postcode="6811AB")
            return application.public_id

        entered.append(await run_in_transaction(rt.sessionmaker, enter))
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Scheme).where(Scheme.id == scheme.id)
                              .values(applications_close_at=utcnow() - dt.timedelta(minutes=1)))
    with pytest.raises(InvalidInput):
        await run_in_transaction(rt.sessionmaker, lambda s: _draw(s, rt, scheme.id, "wrong seed"))
    result = await run_in_transaction(rt.sessionmaker, lambda s: _draw(s, rt, scheme.id, seed))
    assert result.order == applications.draw_order(seed, entered)  # anyone can recompute it
    async with rt.sessionmaker() as session:
        statuses = [(await applications.application_state(session, pid)).status for pid in result.order]
    assert statuses == ["granted"] * 3 + ["waiting"] * 4
    await assert_books_agree(rt)


async def _draw(session, rt, scheme_id, seed):
    return await applications.draw(session, rt, await session.get_one(Scheme, scheme_id), seed)


async def test_reconcile_finds_a_tampered_balance(rt: Runtime) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).where(Voucher.id == voucher.id)
                              .values(balance_cents=Voucher.balance_cents - 1, returned_cents=1))
    untouched, _ = await make_voucher(rt, scheme)
    held, _ = await make_voucher(rt, scheme)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).where(Voucher.id == held.id).values(balance_cents=Voucher.balance_cents - 5,
                                                                                 held_cents=5))
    async with rt.sessionmaker() as session:
        problems = await reconcile(session)
    assert any(f"voucher {voucher.id} balance: stored" in p for p in problems)
    assert not any(f"voucher {voucher.id} amounts" in p for p in problems)  # the tampering adds up
    assert {f"voucher {held.id} held: stored 5, ledger 0", f"voucher {held.id} open holds: stored 5, ledger 0"} \
        <= set(problems)
    assert not any(f"voucher {untouched.id} " in p for p in problems)


async def test_mail_for_the_voucher_carries_the_code_but_the_outbox_does_not(rt: Runtime, smtp_server) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, email="ondernemer@example.org")
    async with rt.sessionmaker() as session:
        stored = (await session.execute(select(outbox.OutboxMessage.params))).all()
    assert code not in repr(stored) and code.replace("-", "") not in repr(stored)
    assert await outbox.send_due(rt) == 1
    [mail] = smtp_server.to("ondernemer@example.org")
    assert code in mail.get_payload(decode=True).decode()
    assert mail["Subject"].startswith("Uw voucher") or "voucher" in mail["Subject"].lower()


async def test_an_entry_decided_after_the_draw_joins_behind_the_drawn_list(rt: Runtime) -> None:
    seed = "late-entry-seed"
    scheme = await make_scheme(rt, allocation="lottery", max_places=1,
                               lottery_seed_hash=hashlib.sha256(seed.encode()).hexdigest())

    async def enter(session, details):
        fresh = await session.get_one(Scheme, scheme.id)
        application = await applications.submit(session, fresh, details)
        return await applications.decide(session, rt, fresh, application, employees=1, postcode="6811AB")

    first = await run_in_transaction(rt.sessionmaker, lambda s: enter(s, applicant()))
    late = await run_in_transaction(rt.sessionmaker, lambda s: applications.submit(s, scheme, applicant()))
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Scheme).where(Scheme.id == scheme.id)
                              .values(applications_close_at=utcnow() - dt.timedelta(minutes=1)))
    await run_in_transaction(rt.sessionmaker, lambda s: _draw(s, rt, scheme.id, seed))

    async def decide_late(session):
        fresh = await session.get_one(Scheme, scheme.id)
        application = await session.get_one(Application, late.id)
        return await applications.decide(session, rt, fresh, application, employees=1, postcode="6811AB")

    decided = await run_in_transaction(rt.sessionmaker, decide_late)
    assert (await reload(rt, Application, first.id)).status == "granted"
    assert decided.status == "waiting" and decided.lottery_rank is None
