"""Health for the load balancer: /healthz (alive), /readyz (database, migrations, background
process), and `vouchers serve` refusing a database whose migrations are behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import text, update

from service import health
from service.app import create_app
from service.migrate import script_directory, upgrade
from service.models_ops import Heartbeat
from tests.conftest import ROOT, free_port, settings_env

# The revision before the newest: a database one migration behind this code.
PREVIOUS = str(script_directory().get_revision("head").down_revision)


async def test_healthz_is_alive_and_readyz_wants_a_recent_heartbeat(client, rt) -> None:
    alive = await client.get("/healthz")
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}

    waiting = await client.get("/readyz")
    assert waiting.status_code == 503
    assert waiting.json()["worker"] == "not seen" and waiting.json()["migrations"] == "current"

    await health.beat(rt)
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["database"] == "ok"
    assert ready.json()["worker_seen_seconds_ago"] < 5

    # A background process that stopped writing its heartbeat makes the host not ready.
    async with rt.sessionmaker() as session, session.begin():
        old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=rt.settings.worker_stale_seconds + 5)
        await session.execute(update(Heartbeat).values(seen_at=old))
    stale = await client.get("/readyz")
    assert stale.status_code == 503 and stale.json()["worker"] == "not seen"


async def test_readyz_says_when_migrations_are_behind_or_the_database_is_gone(client, rt) -> None:
    await health.beat(rt)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": PREVIOUS})
    behind = await client.get("/readyz")
    assert behind.status_code == 503
    assert behind.json()["migrations"] == "behind" and behind.json()["database_revisions"] == [PREVIOUS]

    # A newer version migrated the database while this one serves: still ready (additive first).
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    ahead = await client.get("/readyz")
    assert ahead.status_code == 200 and ahead.json()["migrations"] == "ahead"

    gone = msgspec.structs.replace(rt.settings, database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",
                                   database_schema=None)
    async with AsyncTestClient(app=create_app(gone), base_url="http://testserver.local") as other:
        down = await other.get("/readyz")
    assert down.status_code == 503 and down.json()["database"] == "unreachable"


def _serve(settings, port: int, *, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings), "VOUCHERS_BACKGROUND_TASKS": "true",
           "VOUCHERS_HEARTBEAT_INTERVAL_SECONDS": "0.5"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def test_serve_refuses_a_database_behind_and_is_ready_once_upgraded(database, settings, tmp_path) -> None:
    url, schema = database
    await asyncio.to_thread(upgrade, url, schema, PREVIOUS)
    port = free_port()
    refused = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT,
        env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "vouchers db upgrade" in refused.stderr and f"database at {PREVIOUS}" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    await asyncio.to_thread(upgrade, url, schema)
    server = _serve(settings, port, log=tmp_path / "serve.log")
    try:
        deadline = asyncio.get_running_loop().time() + 30
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert asyncio.get_running_loop().time() < deadline, (tmp_path / "serve.log").read_text()
                try:
                    answer = await http.get("/readyz", timeout=2)
                    if answer.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
            assert answer.json()["migrations"] == "current" and answer.json()["worker"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=15)
    # The web process wrote one JSON line for that request, with the id the answer carried.
    # Every line of the server, granian's own too, is one JSON object.
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    assert any(line["logger"] == "_granian" for line in lines)
    [line] = [x for x in lines if x.get("request_id") == answer.headers["x-request-id"]]
    assert (line["event"], line["route"], line["status"], line["actor"]) == ("request", "/readyz", 200, "anonymous")
