"""Health for load balancers and process managers.

``/healthz`` says the process answers (no database work: a slow database must not get a live
process restarted). ``/readyz`` says whether this host should get traffic: the database answers,
its migrations are those this code expects (or newer, during an upgrade), and a background
process (mail, sweep, audit sealing) has written its heartbeat recently. ``vouchers serve``
refuses to start on a database that is behind (:func:`refuse_if_behind`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from .db import run_in_transaction
from .migrate import migration_state
from .models import utcnow
from .models_ops import Heartbeat
from .runtime import Runtime

__all__ = ("beat", "health_routes", "readiness", "refuse_if_behind", "worker_last_seen")

DATABASE_TIMEOUT_SECONDS = 3.0


async def beat(rt: Runtime, *, name: str | None = None) -> None:
    """Record that this host's background process is alive (one row per host)."""
    host = name or socket.gethostname()
    now = utcnow()

    async def work(session: Any) -> None:
        dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(Heartbeat).values(name=host, seen_at=now)
        await session.execute(statement.on_conflict_do_update(index_elements=["name"], set_={"seen_at": now}))

    await run_in_transaction(rt.sessionmaker, work)


async def _checks(rt: Runtime) -> dict[str, Any]:
    async with rt.reader() as session:
        await session.execute(text("SELECT 1"))
        state, applied, heads = await session.run_sync(lambda s: migration_state(s.connection()))
        last = await session.scalar(select(func.max(Heartbeat.seen_at))) if state != "behind" else None
    if last is not None and last.tzinfo is None:  # SQLite's max() comes back as it was stored
        last = last.replace(tzinfo=dt.UTC)
    age = None if last is None else max(0.0, (utcnow() - last).total_seconds())
    return {"migrations": state, "database_revisions": applied, "code_revisions": heads,
            "worker_seen_seconds_ago": None if age is None else round(age, 1)}


async def readiness(rt: Runtime) -> tuple[bool, dict[str, Any]]:
    """(ready, what was found). Never raises: an unreachable database is an answer too."""
    try:
        found = await asyncio.wait_for(_checks(rt), DATABASE_TIMEOUT_SECONDS)
    except Exception as exc:  # unreachable, refused, timed out: all mean "not ready"
        return False, {"database": "unreachable", "error": type(exc).__name__}
    age = found["worker_seen_seconds_ago"]
    found["database"] = "ok"
    found["worker"] = "ok" if age is not None and age <= rt.settings.worker_stale_seconds else "not seen"
    return found["migrations"] != "behind" and found["worker"] == "ok", found


@get("/healthz", include_in_schema=False, cache=False)
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Nothing else is checked."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False, cache=False)
async def readyz(rt: NamedDependency[Runtime]) -> Response[dict[str, Any]]:
    """Ready for traffic: 200, or 503 with what is wrong."""
    ready, found = await readiness(rt)
    return Response({"status": "ready" if ready else "not ready", **found}, status_code=200 if ready else 503)


health_routes = [healthz, readyz]


def worker_last_seen(rt: Runtime) -> float | None:
    """Seconds since any background process wrote its heartbeat; None if none ever did. Closes ``rt``."""

    async def seen() -> float | None:
        try:
            async with rt.reader() as session:
                last = await session.scalar(select(func.max(Heartbeat.seen_at)))
        finally:
            await rt.close()
        if last is None:
            return None
        if last.tzinfo is None:
            last = last.replace(tzinfo=dt.UTC)
        return max(0.0, (utcnow() - last).total_seconds())

    return asyncio.run(seen())


def refuse_if_behind(rt: Runtime) -> str | None:
    """Why the server must not start on this database, with the command to run; None when it may."""

    async def state() -> tuple[str, list[str], list[str]]:
        try:
            async with rt.reader() as session:
                return await session.run_sync(lambda s: migration_state(s.connection()))
        finally:
            await rt.close()

    found, applied, heads = asyncio.run(state())
    if found != "behind":
        return None
    at = ", ".join(applied) or "no tables yet"
    return (f"the database is behind this version (database at {at}; this version needs "
            f"{', '.join(heads)}): run `vouchers db upgrade` with the same VOUCHERS_DATABASE_URL first, "
            "then start again")
