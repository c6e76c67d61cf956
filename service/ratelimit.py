"""Fixed-window counters kept in the database, so every server process shares them.

A counter for a personal value (an e-mail address) is keyed by a keyed hash of it
(:func:`personal_key`), so the counters never hold the value itself.
"""

from __future__ import annotations

import datetime as dt
import hmac

from sqlalchemy import case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import TooManyAttempts
from .models import RateLimitCounter, utcnow
from .runtime import Runtime

__all__ = ("attempts_so_far", "check_limit", "count_attempt", "personal_key")


def personal_key(rt: Runtime, prefix: str, value: str) -> str:
    """``prefix:<keyed hash of value>``: the same value always gives the same key, and without
    the server's secret nobody can go back from the key to the value."""
    digest = hmac.digest(rt.settings.derive_key("rate-limit"), value.strip().lower().encode(), "sha256")
    return f"{prefix}:{digest.hex()[:32]}"


async def count_attempt(session: AsyncSession, key: str, *, window_seconds: int, now: dt.datetime | None = None) -> int:
    """Add one attempt for ``key`` and return how many there were in the current window."""
    now = now or utcnow()
    window_start = now - dt.timedelta(seconds=window_seconds)
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(RateLimitCounter).values(key=key, window_start=now, count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[RateLimitCounter.key],
        set_={
            "count": case((RateLimitCounter.window_start < window_start, 1), else_=RateLimitCounter.count + 1),
            "window_start": case((RateLimitCounter.window_start < window_start, now), else_=RateLimitCounter.window_start),
        },
    ).returning(RateLimitCounter.count)
    return int((await session.execute(stmt)).scalar_one())


async def check_limit(session: AsyncSession, key: str, *, limit: int, window_seconds: int,
                      now: dt.datetime | None = None) -> None:
    """Count one attempt and refuse it when the window's limit is passed."""
    if await count_attempt(session, key, window_seconds=window_seconds, now=now) > limit:
        raise TooManyAttempts(minutes=max(1, window_seconds // 60))


async def attempts_so_far(session: AsyncSession, key: str, *, window_seconds: int, now: dt.datetime | None = None) -> int:
    """Attempts in the current window, without counting one."""
    now = now or utcnow()
    row = await session.get(RateLimitCounter, key)
    if row is None or row.window_start < now - dt.timedelta(seconds=window_seconds):
        return 0
    return row.count
