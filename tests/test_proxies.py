"""Behind reverse proxies: rate limits and the audit log count the client the trusted proxy saw,
never an address the client wrote into X-Forwarded-For itself."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from sqlalchemy import select

from service.models import RateLimitCounter
from service.settings import ConfigError, Settings
from service.web import ForwardedClientMiddleware
from tests.conftest import LiveServer


async def _client_seen(peer: str, forwarded: list[str], trusted: str) -> str:
    seen = {}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen["client"] = scope["client"][0]

    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    scope = {"type": "http", "client": (peer, 5000), "headers": headers}
    middleware = ForwardedClientMiddleware(Settings(trusted_proxies=trusted).proxy_networks())
    await middleware.handle(scope, None, None, app)  # type: ignore[arg-type]
    return seen["client"]


async def test_the_client_is_the_address_the_nearest_trusted_proxy_appended() -> None:
    proxies = "127.0.0.1, 10.0.0.0/8"
    assert await _client_seen("127.0.0.1", ["203.0.113.7"], proxies) == "203.0.113.7"
    # What the client wrote itself stands further left and is not used.
    assert await _client_seen("127.0.0.1", ["1.2.3.4, 203.0.113.7"], proxies) == "203.0.113.7"
    # Through two trusted proxies, and with the header sent twice.
    assert await _client_seen("10.0.0.2", ["1.2.3.4", "203.0.113.7, 10.0.0.9"], proxies) == "203.0.113.7"
    # Not from a trusted proxy: the header is ignored.
    assert await _client_seen("198.51.100.5", ["203.0.113.7"], proxies) == "198.51.100.5"
    # No header, or no address where the proxy's should be: the proxy's own address.
    assert await _client_seen("127.0.0.1", [], proxies) == "127.0.0.1"
    assert await _client_seen("127.0.0.1", ["203.0.113.7, unknown"], proxies) == "127.0.0.1"
    assert await _client_seen("::1", ["2001:db8::7"], "::1") == "2001:db8::7"
    # An IPv4 address in IPv6 form (a dual-stack socket's way) is that IPv4 address, on either
    # side: the proxy is trusted as 127.0.0.1, and the client is counted in one form.
    assert await _client_seen("::ffff:127.0.0.1", ["::ffff:203.0.113.7"], proxies) == "203.0.113.7"
    assert await _client_seen("::ffff:10.0.0.2", ["203.0.113.7, ::ffff:10.0.0.9"], proxies) == "203.0.113.7"
    assert await _client_seen("::ffff:198.51.100.5", ["203.0.113.7"], proxies) == "::ffff:198.51.100.5"


def test_a_wrong_proxy_setting_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="VOUCHERS_TRUSTED_PROXIES"):
        Settings.from_env({"VOUCHERS_TRUSTED_PROXIES": "127.0.0.1, not-an-address"})
    assert len(Settings.from_env({"VOUCHERS_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"}).proxy_networks()) == 2


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
async def test_failed_lookups_are_counted_per_forwarded_client(rt, trusted: str) -> None:
    server = LiveServer(msgspec.structs.replace(rt.settings, trusted_proxies=trusted), 1)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for forwarded in ("203.0.113.7", "1.2.3.4, 203.0.113.8"):
                r = await http.get(f"{server.url}/aanvraag/ONBEKEND", headers={"X-Forwarded-For": forwarded})
                assert r.status_code == 404
    finally:
        server.stop()
    async with rt.sessionmaker() as session:
        # Each client's slots, and its failures alone (``ratelimit._SETTLED``).
        keys = sorted({key.removesuffix(":failed") for key in await session.scalars(select(RateLimitCounter.key))})
    if trusted:
        assert keys == ["status:ip:203.0.113.7", "status:ip:203.0.113.8"]
    else:
        assert keys == ["status:ip:127.0.0.1"]
