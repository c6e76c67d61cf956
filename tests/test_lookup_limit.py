"""The limit on failed code lookups holds under concurrency, across server processes: a slot is
taken before each lookup, so a burst of wrong codes gets no more lookups than the limit, and a
code that is found gives its slot back."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select

from service.codes import CodeKeys
from service.models import RateLimitCounter
from service.settings import Settings
from tests.helpers import bearer, make_provider, make_scheme, make_voucher


def unknown_codes(n: int) -> list[str]:
    """Codes whose check symbol is right but that no voucher has (made with another secret)."""
    stranger = CodeKeys.from_settings(Settings(environment="test", secret_key="another-secret" * 3))
    return [stranger.code_for(stranger.new_salt()) for _ in range(n)]


async def test_500_concurrent_wrong_codes_get_no_more_lookups_than_the_limit(rt, live_server_factory) -> None:
    scheme = await make_scheme(rt)
    _, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    workers = 2
    server = live_server_factory(workers=workers)
    limit = rt.settings.failed_lookup_limit
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
        answers = await asyncio.gather(*(http.get(f"{server.url}/api/v1/vouchers/{wrong}", headers=bearer(token))
                                         for wrong in unknown_codes(500)))
        right = await http.get(f"{server.url}/api/v1/vouchers/{code}", headers=bearer(token))
    statuses = [r.status_code for r in answers]
    looked_up = statuses.count(404)
    # The bound is the limit plus one per process; counting first gives the limit exactly.
    assert looked_up <= limit + workers and looked_up == limit, statuses
    assert statuses.count(429) == 500 - looked_up, statuses
    refused = [r for r in answers if r.status_code == 429]
    assert {r.json()["code"] for r in refused} == {"too-many-attempts"}
    assert {r.headers["retry-after"] for r in refused} == {str(rt.settings.failed_lookup_window_seconds)}
    # Used up: a right code is refused as well, and nothing was counted past the limit.
    assert right.status_code == 429 and right.headers["retry-after"]
    assert await counts(rt) == {"slots": limit, "failed": limit}


async def test_a_code_that_is_found_gives_its_slot_back(client, rt) -> None:
    scheme = await make_scheme(rt)
    _, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    limit = rt.settings.failed_lookup_limit
    for _ in range(limit + 5):  # right codes do not use the limit up
        assert (await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).status_code == 200
    for wrong in unknown_codes(limit - 1):
        assert (await client.get(f"/api/v1/vouchers/{wrong}", headers=bearer(token))).status_code == 404
    assert (await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).status_code == 200
    mistyped = "0000-0000"  # a mistyped code counts as a failure: the last slot
    assert (await client.get(f"/api/v1/vouchers/{mistyped}", headers=bearer(token))).status_code == 422
    refused = await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "600"
    assert await counts(rt) == {"slots": limit, "failed": limit}


async def counts(rt) -> dict[str, int]:
    """The one client's two counters: slots taken (failures and lookups in flight), failures."""
    async with rt.sessionmaker() as session:
        rows = (await session.scalars(select(RateLimitCounter))).all()
    assert len({row.key.removesuffix(":failed") for row in rows}) == 1
    return {"failed" if row.key.endswith(":failed") else "slots": row.count for row in rows}


async def test_concurrent_unknown_application_numbers_get_no_more_lookups_than_the_limit(rt, live_server_factory) -> None:
    """The status page of an application, looked up by its number, is limited the same way."""
    await make_scheme(rt)
    server = live_server_factory(workers=2)
    limit = rt.settings.failed_lookup_limit
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
        answers = await asyncio.gather(*(http.get(f"{server.url}/aanvraag/A{n:012d}") for n in range(200)))
    statuses = [r.status_code for r in answers]
    assert (statuses.count(404), statuses.count(429)) == (limit, 200 - limit), statuses


async def test_a_burst_of_right_codes_waits_for_slots_instead_of_being_refused(rt, live_server_factory) -> None:
    """Slots are taken before each lookup, so more lookups at once than the limit would find them
    all held by lookups in flight: those wait for one to come back, and none is refused."""
    scheme = await make_scheme(rt)
    _, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    server = live_server_factory(workers=2)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
        answers = await asyncio.gather(*(http.get(f"{server.url}/api/v1/vouchers/{code}", headers=bearer(token))
                                         for _ in range(5 * rt.settings.failed_lookup_limit)))
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert await counts(rt) == {"slots": 0}
