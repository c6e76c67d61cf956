"""/metrics: Prometheus text from prometheus-client, added up over granian's worker processes,
for the configured addresses only; figures from the database read at each scrape."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import pytest
from litestar import Request
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.settings import ConfigError, Settings
from tests.conftest import LiveServer
from tests.helpers import bearer, make_provider, make_scheme, make_voucher


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_only_configured_addresses_may_read_metrics(client) -> None:
    refused = await client.get("/metrics")  # the test client is no loopback address
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"


async def test_figures_from_the_database(rt) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme)
    found = samples(generate_latest(metrics._registry(await metrics.database_figures(rt))).decode())
    label = (("scheme", scheme.slug),)
    assert found["vouchers_scheme_places_used", label] == 1
    assert found["vouchers_scheme_places_left", label] == scheme.max_places - 1
    assert found["vouchers_scheme_budget_committed_cents", label] == scheme.value_cents
    assert found["vouchers_scheme_budget_left_cents", label] == scheme.budget_cents - scheme.value_cents
    assert found["vouchers_outbox_backlog", ()] >= 1  # the applicant's mails
    assert found["vouchers_outbox_oldest_due_age_seconds", ()] >= 0
    assert found["vouchers_audit_unsealed_entries", ()] >= 1  # the application's entries
    assert found["vouchers_audit_oldest_unsealed_age_seconds", ()] >= 0
    assert found["vouchers_worker_heartbeat_age_seconds", ()] == -1
    server_side = {labels: n for (name, labels), n in found.items() if name == "vouchers_db_server_connections"}
    if rt.settings.is_sqlite:
        assert server_side == {}
    else:  # this very scrape holds one, active
        assert sum(server_side.values()) >= 1 and any(("state", "active") in labels for labels in server_side)


async def test_two_worker_processes_count_as_one_server(rt) -> None:
    scheme = await make_scheme(rt)
    _voucher, code = await make_voucher(rt, scheme)
    _provider, token = await make_provider(rt, scheme)
    settings = msgspec.structs.replace(rt.settings, failed_lookup_limit=2)
    server = await asyncio.to_thread(LiveServer, settings, 2)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for _ in range(20):
                # A new connection each time, so that both processes get some.
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as one:
                    assert (await one.get("/")).status_code == 200
            assert (await http.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).status_code == 200
            for _ in range(settings.failed_lookup_limit):
                assert (await http.get("/api/v1/vouchers/0000-0000", headers=bearer(token))).status_code == 422
            statuses = [(await http.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).status_code
                        for _ in range(3)]
            assert statuses == [429, 429, 429]
            scrapes = []
            for _ in range(4):
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as one:
                    answer = await one.get("/metrics")
                assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
                scrapes.append(samples(answer.text))
    finally:
        server.stop()
    home = (("method", "GET"), ("route", "/"), ("status", "200"))
    looked = (("method", "GET"), ("route", "/api/v1/vouchers/{code}"), ("status", "200"))
    for found in scrapes:  # whichever process answered, the same sums
        assert found["vouchers_http_requests_total", home] == 20
        assert found["vouchers_http_requests_total", looked] == 1
        assert found["vouchers_lookups_refused_total", (("route", "/api/v1/vouchers/{code}"),)] == statuses.count(429)
        assert found["vouchers_http_request_duration_seconds_count", (("route", "/"), ("status", "200"))] == 20
        assert found["vouchers_db_pool_size", ()] >= settings.db_pool_size
        assert found["vouchers_scheme_places_used", (("scheme", scheme.slug),)] == 1


def test_the_allowed_addresses_come_from_the_settings() -> None:
    def allowed(client: str, setting: str | None = None) -> bool:
        settings = Settings.from_env({} if setting is None else {"VOUCHERS_METRICS_ALLOWED": setting})
        request: Request = Request({"type": "http", "client": (client, 40000), "headers": [], "path": "/metrics",
                                    "query_string": b"", "method": "GET", "app": None})  # type: ignore[typeddict-item]
        return metrics._allowed(request, settings.metrics_networks())

    assert allowed("127.0.0.1") and allowed("::1") and not allowed("10.0.0.5")
    assert allowed("10.0.0.5", "10.0.0.0/8, 192.168.1.7") and not allowed("127.0.0.1", "10.0.0.0/8")
    assert not allowed("testclient")
    with pytest.raises(ConfigError, match="VOUCHERS_METRICS_ALLOWED"):
        Settings.from_env({"VOUCHERS_METRICS_ALLOWED": "prometheus.local"})


def test_a_stopped_process_leaves_the_pool_sums(tmp_path, monkeypatch) -> None:
    import os

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    mine, counted = tmp_path / f"gauge_livesum_{os.getpid()}.db", tmp_path / f"counter_{os.getpid()}.db"
    mine.write_bytes(b"")
    counted.write_bytes(b"")
    metrics.process_stopped()
    assert not mine.exists() and counted.exists()
