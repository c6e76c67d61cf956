"""A hold counts against the provider's cap as a redemption does: one rule, in the domain
function that places holds, also under real concurrent requests against the real server."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import func, select

from service.check import reconcile
from service.models import Enrolment, Hold, Voucher
from tests.helpers import bearer, make_provider, make_scheme, make_voucher
from tests.test_concurrency import fire

CAP = 30_000


@pytest.fixture
def server(backend, live_server_factory):
    return live_server_factory(workers=2 if backend == "postgres" else 1)


def body(n: int, amount: int = 2500) -> dict:
    return {"amount_cents": amount, "category": "coaching", "reference": f"R-{n}"}


async def test_a_provider_at_its_cap_cannot_place_holds(client, rt) -> None:
    scheme = await make_scheme(rt, provider_cap_cents=CAP)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(3)]
    _, token = await make_provider(rt, scheme)
    r = await client.post(f"/api/v1/vouchers/{codes[0]}/redemptions", headers=bearer(token), json=body(0, CAP - 5000))
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v1/vouchers/{codes[1]}/holds", headers=bearer(token), json=body(1, 5000))
    assert r.status_code == 201, r.text
    hold_id = r.json()["hold_id"]
    # At the cap now: neither another hold nor a redemption.
    for n, path in enumerate(("holds", "redemptions", "holds")):
        r = await client.post(f"/api/v1/vouchers/{codes[2]}/{path}", headers=bearer(token), json=body(n + 2, 100))
        assert r.status_code == 422 and r.json()["code"] == "provider-cap-reached", r.text
    # Confirming the hold keeps the provider at the cap; releasing one makes room again.
    r = await client.post(f"/api/v1/holds/{hold_id}/confirm", headers=bearer(token))
    assert r.status_code in (200, 201), r.text
    async with rt.sessionmaker() as session:
        enrolment = await session.scalar(select(Enrolment))
        assert (enrolment.received_cents, enrolment.held_cents) == (CAP, 0)
        assert await reconcile(session) == []


async def test_holds_release_their_room_under_the_cap(client, rt) -> None:
    scheme = await make_scheme(rt, provider_cap_cents=CAP)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(2)]
    _, token = await make_provider(rt, scheme)
    r = await client.post(f"/api/v1/vouchers/{codes[0]}/holds", headers=bearer(token), json=body(0, CAP))
    assert r.status_code == 201, r.text
    hold_id = r.json()["hold_id"]
    r = await client.post(f"/api/v1/vouchers/{codes[1]}/redemptions", headers=bearer(token), json=body(1, 100))
    assert r.status_code == 422 and r.json()["code"] == "provider-cap-reached", r.text
    r = await client.post(f"/api/v1/holds/{hold_id}/release", headers=bearer(token))
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/v1/vouchers/{codes[1]}/redemptions", headers=bearer(token), json=body(2, 100))
    assert r.status_code == 201, r.text
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def test_parallel_holds_and_redemptions_never_pass_the_provider_cap(rt, server) -> None:
    """Holds (with and without an Idempotency-Key) and redemptions (the driver path and the
    session path) race for the last €50 under a provider's cap, spread over many vouchers."""
    scheme = await make_scheme(rt, provider_cap_cents=CAP)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(12)]
    _, token = await make_provider(rt, scheme)
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(f"{server.url}/api/v1/vouchers/{codes[0]}/redemptions", headers=bearer(token),
                            json=body(0, CAP - 5000))
        assert r.status_code == 201, r.text
    requests = []
    for n in range(80):
        key = {"Idempotency-Key": str(uuid.uuid4())} if n % 4 in (1, 3) else {}
        path = "holds" if n % 2 == 0 else "redemptions"
        requests.append(("POST", f"{server.url}/api/v1/vouchers/{codes[n % 12]}/{path}",
                         {"headers": {**bearer(token), **key}, "json": body(n + 1)}))
    answers = await fire(requests)
    seen = [r.status_code for r in answers]
    assert seen.count(201) == 2 and seen.count(422) == 78, seen  # 2 × €25 = €50
    assert {r.json()["code"] for r in answers if r.status_code == 422} == {"provider-cap-reached"}
    async with rt.sessionmaker() as session:
        enrolment = await session.scalar(select(Enrolment))
        open_held = await session.scalar(select(func.coalesce(func.sum(Hold.amount_cents), 0))
                                         .where(Hold.status == "open"))
        assert enrolment.held_cents == open_held
        assert enrolment.received_cents + enrolment.held_cents == CAP
        assert await session.scalar(select(func.sum(Voucher.redeemed_cents + Voucher.held_cents))) == CAP
        assert await reconcile(session) == []


async def test_migration_0011_counts_existing_open_holds(database, settings) -> None:
    import asyncio

    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from service import vouchers
    from service.db import run_in_transaction
    from service.migrate import alembic_config, upgrade
    from service.runtime import Runtime

    url, schema = database
    await asyncio.to_thread(upgrade, url, schema)
    rt = Runtime.create(settings)
    try:
        scheme = await make_scheme(rt, provider_cap_cents=CAP)
        voucher, _ = await make_voucher(rt, scheme)
        provider, _ = await make_provider(rt, scheme)

        async def hold(session):  # type: ignore[no-untyped-def]
            fresh = await session.get_one(Voucher, voucher.id)
            await vouchers.create_hold(session, rt, fresh, provider_id=provider.id, category="coaching",
                                       invoice_cents=7000, reference="H-1", created_by="test")

        await run_in_transaction(rt.sessionmaker, hold)
    finally:
        await rt.close()
    options = {"connect_args": {"server_settings": {"search_path": schema}}} if schema else {}
    engine = create_async_engine(url, **options)
    try:
        await asyncio.to_thread(command.downgrade, alembic_config(url, schema), "0008")
        await asyncio.to_thread(upgrade, url, schema)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT held_cents FROM enrolment"))).scalar_one() == 7000
    finally:
        await engine.dispose()
