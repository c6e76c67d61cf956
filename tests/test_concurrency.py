"""The invariants under real concurrent HTTP requests against the real server: one process on
SQLite, two processes on PostgreSQL. Afterwards the counts are exact and the books reconcile."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from service.check import reconcile
from service.models import Application, Redemption, Voucher
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher, next_kvk, reload


@pytest.fixture
def server(backend, live_server_factory):
    return live_server_factory(workers=2 if backend == "postgres" else 1)


async def fire(requests, limit: int = 64) -> list[httpx.Response]:
    """Send all requests at once (bounded by ``limit`` connections) and wait for every answer."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=limit)) as http:
        return await asyncio.gather(*(http.request(method, url, **kwargs) for method, url, kwargs in requests))


async def test_hundreds_of_applications_never_pass_the_cap(rt, server) -> None:
    await make_scheme(rt, max_places=20)
    token = await admin_token(rt)
    requests = [
        ("POST", f"{server.url}/api/v1/admin/schemes/test-scheme/applications", {
            "headers": bearer(token),
            "json": {"kvk_number": next_kvk(), "company_name": f"Firma {n}", "employees": 2, "postcode": "6811 AB",
                     "contact_name": "Naam", "email": f"a{n}@example.org"},
        })
        for n in range(240)
    ]
    answers = await fire(requests)
    assert [r.status_code for r in answers] == [201] * 240, {r.status_code: r.text for r in answers}
    statuses = [r.json()["status"] for r in answers]
    assert statuses.count("granted") == 20 and statuses.count("waiting") == 220
    positions = sorted(r.json()["waiting_list_position"] for r in answers if r.json()["status"] == "waiting")
    assert positions[0] >= 1 and len(set(positions)) >= 1
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Voucher)) == 20
        waiting = await session.scalars(select(Application.waitlist_number).where(Application.status == "waiting"))
        assert sorted(waiting) == list(range(1, 221))  # each waiting number handed out once
        assert await reconcile(session) == []


async def test_the_same_kvk_number_racing_gets_one_voucher(rt, server) -> None:
    await make_scheme(rt)
    token = await admin_token(rt)
    body = {"kvk_number": "55555555", "company_name": "Dubbel", "employees": 1, "postcode": "6811 AB",
            "contact_name": "Naam", "email": "dubbel@example.org"}
    # Half with an Idempotency-Key (the session path), half without (the driver path): the two
    # take the scheme's row and the KvK number's index entry in opposite order.
    answers = await fire([("POST", f"{server.url}/api/v1/admin/schemes/test-scheme/applications",
                           {"headers": {**bearer(token), **({"Idempotency-Key": str(uuid.uuid4())} if n % 2 else {})},
                            "json": body}) for n in range(30)])
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and codes.count(409) == 29, codes
    assert {r.json()["code"] for r in answers if r.status_code == 409} == {"already-applied"}
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Voucher)) == 1


async def test_parallel_redemptions_never_overspend_one_voucher(rt, server) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    url = f"{server.url}/api/v1/vouchers/{code}/redemptions"
    answers = await fire([("POST", url, {"headers": bearer(token), "json": {
        "amount_cents": 5000, "category": "coaching", "reference": f"F-{n}"}}) for n in range(120)])
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 27 and codes.count(422) == 93, codes  # 27 × €50 = €1,350
    assert all(r.json()["code"] in ("insufficient-balance", "voucher-used-up") for r in answers if r.status_code == 422)
    after = await reload(rt, Voucher, voucher.id)
    assert (after.balance_cents, after.redeemed_cents, after.status) == (0, 135000, "used_up")
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def test_parallel_redemptions_never_pass_the_provider_cap(rt, server) -> None:
    """Spread over many vouchers, so the provider's cap is the rule that refuses. On PostgreSQL a
    refusal here comes after the voucher's UPDATE, and the statement must undo that too."""
    scheme = await make_scheme(rt, provider_cap_cents=30_000)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(12)]
    _, token = await make_provider(rt, scheme)
    answers = await fire([("POST", f"{server.url}/api/v1/vouchers/{codes[n % 12]}/redemptions", {
        "headers": bearer(token), "json": {"amount_cents": 2500, "category": "coaching", "reference": f"C-{n}"}})
        for n in range(60)])
    codes_seen = [r.status_code for r in answers]
    assert codes_seen.count(201) == 12 and codes_seen.count(422) == 48, codes_seen  # 12 × €25 = €300
    assert {r.json()["code"] for r in answers if r.status_code == 422} == {"provider-cap-reached"}
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Redemption)) == 12
        assert await session.scalar(select(func.sum(Voucher.redeemed_cents))) == 30_000
        assert await reconcile(session) == []


async def test_no_redemption_commits_after_the_scheme_closes(rt, server) -> None:
    """Redemptions do not lock the scheme's row: closing marks every enrolment, and a redemption
    that read the scheme as open while the close was under way waits for the enrolment's row and
    is then refused. Both ways in: the driver path and (with an Idempotency-Key) the session path."""
    from service.interventions import close_scheme
    from service.db import transaction

    scheme = await make_scheme(rt)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(2)]
    _, token = await make_provider(rt, scheme)
    body = {"amount_cents": 1000, "category": "coaching", "reference": "late"}
    async with httpx.AsyncClient(timeout=60) as http:
        async with transaction(rt.sessionmaker) as session:
            await close_scheme(session, scheme.id, reason="budget op")
            late = [asyncio.create_task(http.post(
                f"{server.url}/api/v1/vouchers/{code}/redemptions", json=body,
                headers={**bearer(token), **({"Idempotency-Key": str(uuid.uuid4())} if n else {})}))
                for n, code in enumerate(codes)]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in late)  # waiting for the close's locks
        answers = await asyncio.gather(*late)
    assert [(r.status_code, r.json()["code"]) for r in answers] == [(422, "scheme-closed")] * 2
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Redemption)) == 0
        assert await session.scalar(select(func.sum(Voucher.balance_cents))) == 2 * 135000
        assert await reconcile(session) == []


async def test_retries_with_one_idempotency_key_have_one_effect(rt, server) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    headers = {**bearer(token), "Idempotency-Key": str(uuid.uuid4())}
    request = ("POST", f"{server.url}/api/v1/vouchers/{code}/redemptions",
               {"headers": headers, "json": {"amount_cents": 1000, "category": "coaching", "reference": "once"}})
    answers = await fire([request] * 40)
    assert {r.status_code for r in answers} <= {201, 409}
    created = [r.json() for r in answers if r.status_code == 201]
    assert created and all(c == created[0] for c in created)
    after_retry = (await fire([request]))[0]
    assert after_retry.status_code == 201 and after_retry.json() == created[0]
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Redemption)) == 1
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 134000


async def test_an_acknowledged_redemption_survives_kill_9(rt, server) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    [answer] = await fire([("POST", f"{server.url}/api/v1/vouchers/{code}/redemptions", {
        "headers": bearer(token), "json": {"amount_cents": 2500, "category": "coaching", "reference": "crash"}})])
    assert answer.status_code == 201
    server.kill()
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 132500
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def test_write_transactions_take_turns_per_process(rt) -> None:
    """A process runs at most ``db_writers_per_process`` write transactions at once on PostgreSQL
    and one on SQLite; the rest wait their turn."""
    from service.db import transaction

    allowed = 1 if rt.settings.is_sqlite else rt.settings.db_writers_per_process
    running, most = 0, 0

    async def work() -> None:
        nonlocal running, most
        async with transaction(rt.sessionmaker) as session:
            running += 1
            most = max(most, running)
            await session.execute(select(func.count()).select_from(Voucher))
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(work() for _ in range(12))), timeout=30)
    assert most == allowed


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_write_waits_for_sqlites_lock_without_blocking_the_server(rt, server) -> None:
    """Another process holds SQLite's write lock: a redemption waits for it in asyncio (not in
    SQLite's busy handler on the event loop's thread), so the server keeps answering meanwhile."""
    import sqlite3
    import time

    from sqlalchemy.engine import make_url

    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    other = sqlite3.connect(make_url(rt.settings.database_url).database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    async with httpx.AsyncClient(timeout=60) as http:
        started = time.monotonic()
        redeem = asyncio.create_task(http.post(f"{server.url}/api/v1/vouchers/{code}/redemptions", headers=bearer(token),
                                               json={"amount_cents": 1000, "category": "coaching", "reference": "w"}))
        await asyncio.sleep(0.3)
        assert not redeem.done()
        # A scan takes its failed-lookup slot first, which is a write too: it waits its turn.
        scan = asyncio.create_task(http.get(f"{server.url}/api/v1/vouchers/{code}", headers=bearer(token)))
        alive = await http.get(f"{server.url}/healthz")
        assert alive.status_code == 200 and time.monotonic() - started < 10 and not redeem.done()
        other.execute("COMMIT")
        other.close()
        answer, scanned = await redeem, await scan
        assert scanned.status_code == 200, scanned.text
    assert answer.status_code == 201 and time.monotonic() - started >= 0.3
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 134000
