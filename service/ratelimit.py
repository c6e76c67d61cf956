"""Fixed-window counters kept in the database, so every server process shares them.

A counter for a personal value (an e-mail address) is keyed by a keyed hash of it
(:func:`personal_key`), so the counters never hold the value itself.

A limit on failures that a guess could reveal (unknown voucher codes) is counted *before* the
lookup (:func:`failures_limited`): one conditional upsert takes a slot or refuses, so however many
requests arrive at once, in however many processes, no more than the limit are looked up; a
lookup that did not fail gives its slot back.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from sqlalchemy import case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from .db import writer_turn
from .errors import DomainError, TooManyAttempts
from .fastpath import sqlite_moment
from .models import RateLimitCounter, utcnow
from .runtime import Runtime

__all__ = ("check_limit", "count_attempt", "failed_lookups_limited", "failures_limited",
           "give_back", "personal_key", "take_slot")

log = logging.getLogger(__name__)


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


# One statement takes a slot: a new window starts at 1, a running one counts up only while it is
# under the limit. When it is not, the WHERE of DO UPDATE leaves the row and RETURNING gives no row.
# The row's lock (PostgreSQL) or the write lock (SQLite) orders requests that come together.
_TAKE = """
INSERT INTO rate_limit_counter (key, window_start, count) VALUES ({key}, {now}, 1)
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN rate_limit_counter.window_start < {since} THEN 1 ELSE rate_limit_counter.count + 1 END,
    window_start = CASE WHEN rate_limit_counter.window_start < {since} THEN {now}
                        ELSE rate_limit_counter.window_start END
WHERE rate_limit_counter.window_start < {since} OR rate_limit_counter.count < {limit}
RETURNING count
"""
_GIVE_BACK = """
UPDATE rate_limit_counter SET count = count - 1
WHERE key = {key} AND count > 0 AND window_start >= {since}
"""
_NAMES = {"key": 1, "now": 2, "since": 3, "limit": 4}
_TAKE_PG = _TAKE.format(**{name: f"${n}" for name, n in _NAMES.items()})
_TAKE_SQLITE = _TAKE.format(**{name: f"?{n}" for name, n in _NAMES.items()})
_GIVE_BACK_PG = _GIVE_BACK.format(key="$1", since="$2")
_GIVE_BACK_SQLITE = _GIVE_BACK.format(key="?1", since="?2")


async def take_slot(rt: Runtime, key: str, *, limit: int, window_seconds: int) -> bool:
    """Count one attempt for ``key`` if the window has room for it: True when it was counted,
    False (nothing changed) when ``limit`` attempts are already in the window. Its own short
    transaction, straight through the driver (``service.fastpath``): it runs before every scan."""
    now = utcnow()
    since = now - dt.timedelta(seconds=window_seconds)
    if rt.settings.is_sqlite:
        args = (key, sqlite_moment(now), sqlite_moment(since), limit)
        row = await rt.fast.write(lambda conn: conn.execute(_TAKE_SQLITE, args).fetchone(),
                                  writer_turn(rt.sessionmaker))
    else:
        row = await rt.fast.fetchrow(_TAKE_PG, key, now, since, limit)
    return row is not None


async def give_back(rt: Runtime, key: str, *, window_seconds: int) -> None:
    """Undo one :func:`take_slot` in the same window (a window that has started again since is
    left alone: the slot went with the old one)."""
    since = utcnow() - dt.timedelta(seconds=window_seconds)
    if rt.settings.is_sqlite:
        args = (key, sqlite_moment(since))
        await rt.fast.write(lambda conn: conn.execute(_GIVE_BACK_SQLITE, args), writer_turn(rt.sessionmaker))
    else:
        await rt.fast.fetchrow(_GIVE_BACK_PG, key, since)


@asynccontextmanager
async def failures_limited(rt: Runtime, key: str, *, limit: int, window_seconds: int,
                           failures: Collection[str]) -> AsyncIterator[None]:
    """Let the block run only if ``key`` has a slot left, and count it as a failure only when it
    raises a :class:`DomainError` whose code is in ``failures``; otherwise the slot is given back.

    The slot is taken before the block, atomically, so the limit holds for requests that arrive at
    once in every process; a refusal (``too-many-attempts``) comes before the block runs. Call it
    outside any transaction: on SQLite both writes need the database's write lock."""
    if not await take_slot(rt, key, limit=limit, window_seconds=window_seconds):
        raise TooManyAttempts(minutes=max(1, window_seconds // 60))
    try:
        yield
    except DomainError as exc:
        if exc.code not in failures:
            await _give_back_if_can(rt, key, window_seconds)
        raise
    except Exception:
        await _give_back_if_can(rt, key, window_seconds)
        raise
    else:
        await _give_back_if_can(rt, key, window_seconds)


async def _give_back_if_can(rt: Runtime, key: str, window_seconds: int) -> None:
    # The block's work is done (a redemption may be committed): a slot that cannot be given back
    # now (the database is saturated) stays counted, rather than the answer becoming an error.
    try:
        await give_back(rt, key, window_seconds=window_seconds)
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("a rate-limit slot was not given back (%s)", type(exc).__name__)


#: What counts as a failed code lookup: a code that is not there, or one its check symbol refuses.
FAILED_LOOKUP = ("voucher-not-found", "code-mistyped")


def failed_lookups_limited(rt: Runtime, client: str) -> AbstractAsyncContextManager[None]:
    """:func:`failures_limited` for the voucher codes ``client`` looks up: at most
    ``Settings.failed_lookup_limit`` unknown or mistyped codes per window, counted before the
    lookup, so a right code is refused too once they are used up."""
    return failures_limited(rt, f"lookup:{client}", limit=rt.settings.failed_lookup_limit,
                            window_seconds=rt.settings.failed_lookup_window_seconds, failures=FAILED_LOOKUP)
