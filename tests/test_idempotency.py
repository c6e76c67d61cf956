"""Idempotency-Key: the same request is recognised by its decoded body, and a claim taken over
after its lease can never let the work take effect twice."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
import pytest
from sqlalchemy import select, update

from service import idempotency, vouchers
from service.db import run_in_transaction
from service.errors import Conflict
from service.models import IdempotencyRecord, Provider, Redemption, Voucher, utcnow
from service.problems import status_of
from tests.helpers import bearer, make_provider, make_scheme, make_voucher, reload
from tests.test_api import _token_id

REDEEM = {"amount_cents": 10000, "category": "coaching", "reference": "F-2026-001"}


@pytest.fixture
async def world(rt):
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    provider, token = await make_provider(rt, scheme)
    return {"voucher": voucher, "code": code, "provider": provider, "token": token,
            "url": f"/api/v1/vouchers/{code}/redemptions"}


async def redemptions(rt, voucher_id: int) -> int:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        return len((await session.scalars(select(Redemption).where(Redemption.voucher_id == voucher_id))).all())


async def test_the_same_json_with_other_whitespace_and_key_order_is_the_same_request(client, rt, world) -> None:
    headers = {**bearer(world["token"]), "Idempotency-Key": "k-ws", "content-type": "application/json"}
    first = await client.post(world["url"], headers=headers,
                              content=b'{"amount_cents":10000,"category":"coaching","reference":"F-2026-001"}')
    second = await client.post(world["url"], headers=headers,
                               content=b'{\n  "reference": "F-2026-001",\n  "category": "coaching",\n'
                                       b'  "amount_cents": 10000\n}\n')
    assert first.status_code == second.status_code == 201, second.text
    assert second.json() == first.json() and second.headers["idempotent-replayed"] == "true"
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 125000
    other = await client.post(world["url"], headers=headers, content=b'{"amount_cents": 10001, "category": '
                                                                     b'"coaching", "reference": "F-2026-001"}')
    assert other.status_code == 422 and "idempotency-key-reused" in other.text


async def _first_request_work(rt, world, record_id: int) -> None:  # type: ignore[no-untyped-def]
    """What the API does for a redemption under a claim: the effect and the answer in one transaction."""

    async def work(session):  # type: ignore[no-untyped-def]
        voucher = await session.get_one(Voucher, world["voucher"].id)
        provider = await session.get_one(Provider, world["provider"].id)
        redemption = await vouchers.redeem(session, rt, voucher, provider_id=provider.id, provider_name=provider.name,
                                           category="coaching", invoice_cents=10000, reference="F-2026-001",
                                           session_date=None, recorded_by="test")
        await idempotency.complete(session, record_id, status_code=201,
                                   body=msgspec.json.encode({"id": redemption.id}))

    await run_in_transaction(rt.sessionmaker, work)


async def _claim_as_first(rt, world, key: str) -> int:  # type: ignore[no-untyped-def]
    body = msgspec.json.encode(REDEEM)
    scope = f"token:{await _token_id(rt, world['token'])}"
    record_id = await idempotency.claim(rt.sessionmaker, scope=scope, key=key,
                                        fingerprint=idempotency.request_fingerprint("POST", world["url"], body))
    assert isinstance(record_id, int)
    return record_id


async def _age(rt, record_id: int) -> None:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(IdempotencyRecord).where(IdempotencyRecord.id == record_id).values(
            created_at=utcnow() - idempotency.STALE_AFTER - dt.timedelta(seconds=1)))


async def test_a_claim_taken_over_after_its_lease_rolls_the_first_request_back(client, rt, world) -> None:
    # The first request claimed the key and is still working when its lease runs out.
    record_id = await _claim_as_first(rt, world, "slow")
    await _age(rt, record_id)
    # A retry takes the key over and does the work.
    retry = await client.post(world["url"], headers={**bearer(world["token"]), "Idempotency-Key": "slow"}, json=REDEEM)
    assert retry.status_code == 201, retry.text
    # The first request now finishes: it finds its claim lost, and nothing it did is kept.
    with pytest.raises(idempotency.ClaimLost) as lost:
        await _first_request_work(rt, world, record_id)
    assert status_of(lost.value) == 409
    assert await redemptions(rt, world["voucher"].id) == 1
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 125000
    again = await client.post(world["url"], headers={**bearer(world["token"]), "Idempotency-Key": "slow"}, json=REDEEM)
    assert again.status_code == 201 and again.json() == retry.json()


async def test_a_takeover_while_the_first_request_commits_gets_409_then_the_first_answer(rt, world) -> None:
    """Real concurrency: the first request holds its answer's row (stored, not yet committed)
    when the retry tries to take the expired claim over."""
    record_id = await _claim_as_first(rt, world, "race")
    await _age(rt, record_id)
    fingerprint = idempotency.request_fingerprint("POST", world["url"], msgspec.json.encode(REDEEM))
    scope = f"token:{await _token_id(rt, world['token'])}"
    stored = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async def work(session):  # type: ignore[no-untyped-def]
            voucher = await session.get_one(Voucher, world["voucher"].id)
            await vouchers.redeem(session, rt, voucher, provider_id=world["provider"].id, category="coaching",
                                  invoice_cents=10000, reference="F-2026-001", session_date=None, recorded_by="test")
            await idempotency.complete(session, record_id, status_code=201, body=b'{"first": true}')
            stored.set()
            await release.wait()

        await run_in_transaction(rt.sessionmaker, work)

    first_task = asyncio.create_task(first())
    await stored.wait()
    takeover = asyncio.create_task(idempotency.claim(rt.sessionmaker, scope=scope, key="race", fingerprint=fingerprint))
    await asyncio.sleep(0.5)
    release.set()
    await first_task
    # Either it waited for the first to commit and got its answer (SQLite: one writer at a time),
    # or it found the claim completed under it (PostgreSQL): never a claim of its own.
    try:
        outcome = await takeover
    except Conflict as exc:
        outcome = exc.code
    assert outcome in ("request-in-flight", idempotency.StoredAnswer(201, b'{"first": true}'))
    answer = await idempotency.claim(rt.sessionmaker, scope=scope, key="race", fingerprint=fingerprint)
    assert answer == idempotency.StoredAnswer(201, b'{"first": true}')
    assert await redemptions(rt, world["voucher"].id) == 1


async def test_a_form_redemption_whose_claim_was_taken_over_is_undone(rt) -> None:
    """The coach's form stores its key's answer in the redemption's own write: when a retry has
    taken the claim over (and answered) meanwhile, the write is undone as a whole, on both
    databases, and nothing is paid twice."""
    from service import fastwrite
    from service.check import reconcile

    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    claimed = await idempotency.claim(rt.sessionmaker, scope="test", key="form:1", fingerprint=b"x" * 32)
    async with rt.sessionmaker() as session, session.begin():  # another request answered it
        await idempotency.complete(session, claimed, status_code=201, body=b"{}")
    answer = vouchers.Answer(claimed, 201, lambda redemption_id: b'{"redemption_id": %d}' % redemption_id)
    with pytest.raises(idempotency.ClaimLost):
        await fastwrite.redeem(rt, code, attempts_key="lookup:test", provider_id=provider.id, category="coaching",
                               invoice_cents=10000, reference="F-1", session_date=None, recorded_by="test",
                               answer=answer)
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(Redemption))) == []
        assert (await session.get_one(Voucher, voucher.id)).balance_cents == scheme.value_cents
        assert await reconcile(session) == []
    # With the claim still its own, the answer is stored with the redemption.
    claimed = await idempotency.claim(rt.sessionmaker, scope="test", key="form:2", fingerprint=b"y" * 32)
    redemption, _ = await fastwrite.redeem(
        rt, code, attempts_key="lookup:test", provider_id=provider.id, category="coaching", invoice_cents=10000,
        reference="F-2", session_date=None, recorded_by="test", answer=vouchers.Answer(
            claimed, 201, lambda redemption_id: b'{"redemption_id": %d}' % redemption_id))
    stored = await idempotency.claim(rt.sessionmaker, scope="test", key="form:2", fingerprint=b"y" * 32)
    assert stored == idempotency.StoredAnswer(201, b'{"redemption_id": %d}' % redemption.id)
