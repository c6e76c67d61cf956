"""Fixtures: a fresh database per test (a temp SQLite file, or a fresh schema in a PostgreSQL
database made for this run), the real app factory, a loopback SMTP server, live servers."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.app import create_app
from service.migrate import stamp_head
from service.models import Base
from service.runtime import Runtime
from service.settings import Settings
from tests.helpers import new_pg_schema

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("VOUCHERS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("VOUCHERS_REQUIRE_POSTGRES") == "1"
TEST_SECRET = "test-secret-" + "x" * 32


# --- PostgreSQL: one database per run, one schema per test ------------------------------------

@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Create a database for this run and drop it afterwards; skip (or fail in CI) without a server."""

    async def admin(sql: str) -> None:
        engine = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    name = f"vouchers_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable server, refused login, …
        message = f"PostgreSQL at {PG_URL} is not reachable: {exc.__class__.__name__}: {exc}"
        if REQUIRE_PG:
            pytest.fail(message)
        pytest.skip(message + " (set VOUCHERS_REQUIRE_POSTGRES=1 to make this an error)")
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(database URL, schema) for this test."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/vouchers.db", None
    url = request.getfixturevalue("pg_database")
    return url, new_pg_schema(url)


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Message] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content))  # type: ignore[attr-defined]
        return "250 OK"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(database: tuple[str, str | None], tmp_path: Path, smtp_server: SmtpSink) -> Settings:
    url, schema = database
    return Settings(
        environment="test",
        database_url=url,
        database_schema=schema,
        secret_key=TEST_SECRET,
        base_url="http://testserver.local",
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        mail_dir=str(tmp_path / "mail"),
        background_tasks=False,
    )


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime.create(settings)
    async with runtime.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        # As `vouchers db upgrade` leaves it: `vouchers serve` refuses a database that is behind.
        await conn.run_sync(stamp_head)
    yield runtime
    await runtime.close()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[AsyncTestClient]:
    # The app gets its own engine: the test client runs it in another event loop.
    async with AsyncTestClient(app=create_app(rt.settings), base_url="http://testserver.local") as c:
        yield c


# --- live servers: the real ASGI server in separate processes ----------------------------------

def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float, output: Callable[[], str]) -> None:
    """Wait until the server at ``url`` answers ``/healthz``; fail with its output if it exits or
    does not answer within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {output()}")
    raise RuntimeError(f"server did not start within {seconds:.0f} s: {output()}")


class LiveServer:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings_env(settings), "VOUCHERS_BACKGROUND_TASKS": "false"}
        # A file, not a pipe: a pipe nobody reads would block a chatty server.
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() reaches the workers too
        )
        wait_healthy(self.url, self.process, 30, self._output)

    def _output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        """kill -9 the server and all its worker processes, as a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if value is not None:
            env[f"VOUCHERS_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.fixture
def live_server_factory(rt: Runtime) -> Iterator[object]:
    servers: list[LiveServer] = []

    def start(workers: int = 1) -> LiveServer:
        server = LiveServer(rt.settings, workers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- the development broker: a real OpenID Connect provider in its own process -----------------

class BrokerProcess:
    """``vouchers dev-broker`` on a free loopback port, with an eHerkenning client and a staff
    client whose redirect addresses are under ``base_url``."""

    def __init__(self, base_url: str, *, slow_seconds: float = 3.0, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_urlsafe(16)
        self.staff_secret = secrets.token_urlsafe(16)
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "dev-broker", "--port", str(self.port),
             "--slow-seconds", str(slow_seconds), "--client", f"vouchers:{self.secret}@{base_url}",
             "--staff-client", f"vouchers-staff:{self.staff_secret}@{base_url}", *(extra or [])],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"broker exited: {self.log.read().decode(errors='replace')}")
        self.stop()
        raise RuntimeError("broker did not start within 20 s")

    def settings(self, settings: Settings, **overrides: object) -> Settings:
        """``settings`` pointed at this broker for eHerkenning and staff sign-in."""
        values: dict[str, object] = {
            "eherkenning_issuer": self.issuer, "eherkenning_client_secret": self.secret,
            "staff_oidc_issuer": self.issuer, "staff_oidc_client_secret": self.staff_secret,
            "staff_oidc_roles": "vouchers-beheerders=beheerder,vouchers-lezers=lezer", "oidc_timeout_seconds": 1.5}
        return msgspec.structs.replace(settings, **{**values, **overrides})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()
