"""Connections to the database: sized from the settings by one formula, checked against the
server at start, and a saturated database answered 503 with Retry-After, never 500."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest
import sqlalchemy.exc
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service import pools
from service.app import create_app
from service.db import is_saturated
from service.runtime import Runtime
from service.settings import Settings
from tests.conftest import ROOT, settings_env
from tests.helpers import bearer, make_provider, make_scheme, make_voucher


def busy(response, *, html: bool) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "7"
    if html:
        assert response.headers["content-type"].startswith("text/html")
        assert "Het is nu erg druk" in response.text and response.headers["x-request-id"] in response.text
    else:
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == 503 and body["code"] == "database-busy"
        assert body["request_id"] == response.headers["x-request-id"]


class Lines(logging.Handler):
    """The JSON lines ``service.problems`` logs while it is attached. (The app's logging set-up
    replaces the root's handlers when an app is made in a test, pytest's ``caplog`` among them.)"""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))

    def __enter__(self) -> Lines:
        logging.getLogger("service.problems").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("service.problems").removeHandler(self)


async def test_no_free_pooled_connection_answers_503_on_api_and_page(rt) -> None:
    """The pool has one connection and someone holds it: within the pool timeout the API answers a
    problem and a page the error page, both 503 with Retry-After, and each leaves one line."""
    await make_scheme(rt)
    tiny = msgspec.structs.replace(rt.settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.2,
                                   db_busy_retry_after_seconds=7)
    app_rt = Runtime.create(tiny)
    # In this event loop (no portal thread), so that the test can hold the app's one connection.
    transport = httpx.ASGITransport(app=create_app(tiny, runtime=app_rt))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
            assert (await client.get("/api/v1/schemes/test-scheme")).status_code == 200
            with Lines() as logged:
                async with app_rt.engine.connect() as held:
                    await held.execute(text("SELECT 1"))
                    busy(await client.get("/api/v1/schemes/test-scheme"), html=False)
                    busy(await client.get("/?lang=nl", headers={"Accept": "text/html"}), html=True)
            assert (await client.get("/api/v1/schemes/test-scheme")).status_code == 200  # free again
    finally:
        await app_rt.close()
    lines = logged.lines
    assert [line["event"] for line in lines] == ["database_busy"] * 2
    assert lines[0]["route"] == "/api/v1/schemes/{slug}" and "TimeoutError" in lines[0]["error"]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
async def test_no_free_driver_connection_answers_503_on_the_scan(rt) -> None:
    """The scan goes straight through the driver's own connections: when none frees up within the
    pool timeout, it is answered 503 as well, not left waiting."""
    scheme = await make_scheme(rt)
    _, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    tiny = msgspec.structs.replace(rt.settings, db_driver_connections=1, db_pool_timeout_seconds=0.2,
                                   db_busy_retry_after_seconds=7)
    app_rt = Runtime.create(tiny)
    transport = httpx.ASGITransport(app=create_app(tiny, runtime=app_rt))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
            assert (await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).status_code == 200
            async with app_rt.fast.connection():
                busy(await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token)), html=False)
            assert (await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).status_code == 200
    finally:
        await app_rt.close()


@pytest.fixture
async def role(backend, settings) -> AsyncIterator[tuple[str, str]]:
    """A login role of its own (its name, and the test database's URL as that role); dropped after."""
    assert backend == "postgres"
    name = f"vouchers_limited_{secrets.token_hex(4)}"
    admin = create_async_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE ROLE {name} LOGIN"))
    url = make_url(settings.database_url).set(username=name, password=None)
    yield name, url.render_as_string(hide_password=False)
    async with admin.connect() as conn:
        await conn.execute(text(f"DROP ROLE {name}"))
    await admin.dispose()


async def limit_role(settings: Settings, name: str, limit: int) -> None:
    admin = create_async_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"ALTER ROLE {name} CONNECTION LIMIT {limit}"))
    await admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_server_that_takes_no_more_connections_answers_503(settings, role) -> None:
    """PostgreSQL refuses every new connection of the service's role ("too many connections"):
    the scan (straight through the driver), another API call and a page answer 503."""
    name, url = role
    await limit_role(settings, name, 0)
    full = msgspec.structs.replace(settings, database_url=url, db_busy_retry_after_seconds=7)
    async with AsyncTestClient(app=create_app(full), base_url="http://testserver.local") as client:
        with Lines() as logged:
            busy(await client.get("/api/v1/schemes/test-scheme"), html=False)
            busy(await client.get("/api/v1/vouchers/ABCD-EFGH", headers={"Authorization": "Bearer not-a-token"}),
                 html=False)
            busy(await client.get("/?lang=nl", headers={"Accept": "text/html"}), html=True)
    assert [line["event"] for line in logged.lines] == ["database_busy"] * 3
    assert "TooManyConnectionsError" in logged.lines[0]["error"]


@pytest.mark.parametrize("backend", ["sqlite"])  # the server is not reached: no need for a second run
async def test_a_server_that_refuses_connections_answers_503(settings) -> None:
    """Nothing listens where the database should be (a server restarting): 503, not 500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens on it once the probe is closed
    down = Settings(environment="test", database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/vouchers",
                    secret_key=settings.secret_key, background_tasks=False, db_busy_retry_after_seconds=7)
    async with AsyncTestClient(app=create_app(down), base_url="http://testserver.local") as client:
        with Lines() as logged:
            busy(await client.get("/api/v1/schemes/test-scheme"), html=False)
            busy(await client.get("/?lang=nl", headers={"Accept": "text/html"}), html=True)
    assert "ConnectionRefusedError" in logged.lines[0]["error"]


def _sqlite_busy(tmp_path) -> sqlite3.OperationalError:
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        other.close()
        holder.close()
    raise AssertionError("the second writer got the lock")


def test_what_counts_as_a_saturated_database(tmp_path) -> None:
    """The errors answered 503 rather than 500, also when SQLAlchemy wraps them."""
    busy_sqlite = _sqlite_busy(tmp_path)
    saturated = [
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(111, "Connect call failed"),
        sqlalchemy.exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached"),
        busy_sqlite,
        sqlalchemy.exc.OperationalError("BEGIN", {}, busy_sqlite),
    ]
    wrapped = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("adapted"))
    wrapped.orig.sqlstate = "53300"  # type: ignore[union-attr]  # as SQLAlchemy's asyncpg adapter sets it
    saturated.append(wrapped)
    assert all(is_saturated(error) for error in saturated)
    ordinary = [asyncpg.UniqueViolationError("duplicate key"), RuntimeError("a bug"),
                sqlite3.OperationalError("no such table: voucher"), OSError(28, "No space left on device")]
    assert not any(is_saturated(error) for error in ordinary)


def test_pools_are_sized_by_one_formula_and_the_readme_example_holds() -> None:
    """The formula and the example in README "How pools are sized": 2 hosts x 2 workers and one
    background process against a server with max_connections 100, 3 reserved."""
    server = pools.ServerRoom(max_connections=100, reserved=3, role="vouchers")
    defaults = Settings()
    assert pools.per_process(defaults) == 10 + 5 + 5
    reason = pools.refusal(defaults, 5, server)
    assert reason is not None and "up to 100: 5 processes x 20 per process" in reason
    assert "PostgreSQL takes 97" in reason and "add up to 19 or less" in reason
    sized = Settings(db_pool_size=8, db_max_overflow=4, db_driver_connections=4)
    assert pools.per_process(sized) == 16 and pools.refusal(sized, 5, server) is None  # 80 of 97
    limited = pools.ServerRoom(max_connections=100, reserved=3, role="vouchers", role_limit=50)
    assert "CONNECTION LIMIT 50 of role vouchers" in (pools.refusal(sized, 5, limited) or "")


def serve_check(settings: Settings, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "VOUCHERS_DATABASE_URL": url}
    env.pop("VOUCHERS_DATABASE_SCHEMA", None)
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
async def test_serve_and_worker_refuse_to_start_when_the_connections_would_not_fit(settings, role) -> None:
    """The role may open 30 connections; two workers would open 40 (the tests' settings run no
    background process), one 20. A separate background worker counts every process named."""
    name, url = role
    await limit_role(settings, name, 30)
    refused = await asyncio.to_thread(serve_check, settings, url, "serve", "--workers", "2", "--check",
                                      "--port", "0")
    assert refused.returncode == 1
    assert "takes 30 connections from this service (CONNECTION LIMIT 30 of role" in refused.stderr
    assert "up to 40: 2 processes x 20 per process" in refused.stderr and "VOUCHERS_DB_POOL_SIZE" in refused.stderr
    fits = await asyncio.to_thread(serve_check, settings, url, "serve", "--workers", "1", "--check", "--port", "0")
    assert fits.returncode == 0, fits.stderr
    worker = await asyncio.to_thread(serve_check, msgspec.structs.replace(settings, db_processes=3), url, "worker")
    assert worker.returncode == 1 and "up to 60: 3 processes x 20 per process" in worker.stderr
