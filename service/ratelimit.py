"""Fixed-window counters kept in the database, so every server process shares them.

A counter for a personal value (an e-mail address) is keyed by a keyed hash of it
(:func:`personal_key`), so the counters never hold the value itself.

A limit on failures that a guess could reveal (unknown voucher codes, application numbers) is
counted *before* the lookup (:func:`failures_limited`): one conditional upsert takes a slot or
refuses, so however many requests arrive at once, in however many processes, no more than the limit
are looked up; a lookup that did not fail gives its slot back. A slot held by a lookup in flight is
waited for, so a client's burst of right codes is not refused; failures are also counted on their
own, so that a limit used up is refused at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
from collections import deque
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from .db import writer_turn
from .errors import DomainError, TooManyAttempts
from .fastpath import from_sqlite_moment, sqlite_moment
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
RETURNING window_start
"""
_GIVE_BACK = """
UPDATE rate_limit_counter SET count = count - 1
WHERE key = {key} AND count > 0 AND window_start = {window}
"""
_NAMES = {"key": 1, "now": 2, "since": 3, "limit": 4}
_TAKE_PG = _TAKE.format(**{name: f"${n}" for name, n in _NAMES.items()})
_TAKE_SQLITE = _TAKE.format(**{name: f"?{n}" for name, n in _NAMES.items()})
_GIVE_BACK_PG = _GIVE_BACK.format(key="$1", window="$2")
_GIVE_BACK_SQLITE = _GIVE_BACK.format(key="?1", window="?2")


async def take_slot(rt: Runtime, key: str, *, limit: int, window_seconds: int) -> Any:
    """Count one attempt for ``key`` if the window has room for it: the window's start (as the
    database gives it) when it was counted, None (nothing changed) when ``limit`` attempts are
    already in the window. Its own short transaction, straight through the driver
    (``service.fastpath``): it runs before every scan."""
    now = utcnow()
    since = now - dt.timedelta(seconds=window_seconds)
    if rt.settings.is_sqlite:
        args = (key, sqlite_moment(now), sqlite_moment(since), limit)
        row = await rt.fast.write(lambda conn: conn.execute(_TAKE_SQLITE, args).fetchone(),
                                  writer_turn(rt.sessionmaker))
    else:
        row = await rt.fast.fetchrow(_TAKE_PG, key, now, since, limit)
    return row[0] if row is not None else None


async def give_back(rt: Runtime, key: str, window: Any) -> None:
    """Undo one :func:`take_slot` that returned ``window``; a window that has started again since
    is left alone (the slot went with the old one)."""
    if rt.settings.is_sqlite:
        await rt.fast.write(lambda conn: conn.execute(_GIVE_BACK_SQLITE, (key, window)), writer_turn(rt.sessionmaker))
    else:
        await rt.fast.fetchrow(_GIVE_BACK_PG, key, window)


@asynccontextmanager
async def failures_limited(rt: Runtime, key: str, *, limit: int, window_seconds: int,
                           failures: Collection[str]) -> AsyncIterator[None]:
    """Let the block run only if ``key`` has a slot left, and count it as a failure only when it
    raises a :class:`DomainError` whose code is in ``failures``; otherwise the slot is given back.

    The slot is taken before the block, atomically, so the limit holds for requests that arrive at
    once in every process; a refusal (``too-many-attempts``) comes before the block runs. A slot
    may be held by the client's own requests still in flight rather than by failures: then the
    request waits for them (:func:`_take_waiting`) instead of being refused. Call it outside any
    transaction: on SQLite both writes need the database's write lock."""
    local, window = await _take_waiting(rt, key, limit=limit, window_seconds=window_seconds)
    try:
        yield
    except DomainError as exc:
        if exc.code in failures:
            await _counted_failure(rt, key, window_seconds)
        else:
            await _give_back_if_can(rt, key, window)
        raise
    except Exception:
        await _give_back_if_can(rt, key, window)
        raise
    else:
        await _give_back_if_can(rt, key, window)
    finally:
        # Cancelled (the client went away): the outcome is not known and the slot stays taken, as
        # if the lookup had failed, until the window ends.
        local.done()


class _InFlight:
    """This process's requests holding a slot of one key, and those waiting for one of them."""

    def __init__(self, table: dict[tuple[asyncio.AbstractEventLoop, str], _InFlight],
                 name: tuple[asyncio.AbstractEventLoop, str]) -> None:
        self.holding = 0
        self.polling = False
        self.waiting: deque[asyncio.Future[None]] = deque()
        self._table, self._name = table, name

    def wake(self, *, every: bool = False) -> None:
        """Wake the first waiting request (``every``: all of them) to ask for a slot again."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not every:
                    return

    def done(self) -> None:
        self.holding -= 1
        self.wake()
        self.forget_if_idle()

    def forget_if_idle(self) -> None:
        self.waiting = deque(waiter for waiter in self.waiting if not waiter.done())
        if not (self.holding or self.polling or self.waiting) and self._table.get(self._name) is self:
            del self._table[self._name]


_IN_FLIGHT: dict[tuple[asyncio.AbstractEventLoop, str], _InFlight] = {}

_SETTLED = ":failed"
"""Suffix of the key of a second counter: the failures alone, without the slots of lookups in
flight. Only read to tell a limit used up (refused at once) from slots still held (waited for)."""


async def _take_waiting(rt: Runtime, key: str, *, limit: int, window_seconds: int) -> tuple[_InFlight, Any]:
    """Take a slot, or refuse (``too-many-attempts``) when failures have used the limit up.

    A slot can also be held, for the milliseconds of a lookup, by a request whose outcome is not
    known yet. When no slot is free but fewer failures than the limit are counted, the request
    waits for one (at most ``Settings.failed_lookup_wait_seconds``): woken in order of arrival when
    one of this process's requests for ``key`` ends, and asking again every few milliseconds for
    those another process holds. So a burst of right codes waits its turn, and a client that has
    used up its limit is refused at once."""
    if key in _USED_UP.get(rt.fast, ()) and await _used_up(rt, key, limit=limit, window_seconds=window_seconds):
        raise TooManyAttempts(minutes=max(1, window_seconds // 60))
    loop = asyncio.get_running_loop()
    name = (loop, key)
    local = _IN_FLIGHT.get(name) or _IN_FLIGHT.setdefault(name, _InFlight(_IN_FLIGHT, name))
    deadline = loop.time() + rt.settings.failed_lookup_wait_seconds
    pause = 0.002
    while True:
        window = await take_slot(rt, key, limit=limit, window_seconds=window_seconds)
        if window is not None:
            local.holding += 1
            return local, window
        remaining = deadline - loop.time()
        used_up = await _used_up(rt, key, limit=limit, window_seconds=window_seconds)
        if used_up or remaining <= 0:
            local.wake(every=used_up)  # used up: the others are refused too; else the next asks
            local.forget_if_idle()
            raise TooManyAttempts(minutes=max(1, window_seconds // 60))
        if local.holding or local.polling:
            # Woken when a request here ends or the one asking for this process gives up; now
            # and then on its own, for the slots another process holds.
            waiter = loop.create_future()
            local.waiting.append(waiter)
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await waiter
            except TimeoutError:
                pass
            continue
        # No request here holds one: another process's do. One request here asks, every few
        # milliseconds, for the others.
        local.polling = True
        try:
            await asyncio.sleep(min(pause, remaining))
        finally:
            local.polling = False
        pause = min(pause * 2, 0.05)


# The failures counted on their own, and when the window of the slots began.
_FAILURES = """SELECT f.count, s.window_start FROM rate_limit_counter s JOIN rate_limit_counter f ON f.key = {failed}
WHERE s.key = {key} AND s.window_start >= {since} AND f.window_start >= {since}"""
_FAILURES_PG = _FAILURES.format(failed="$1", key="$2", since="$3")
_FAILURES_SQLITE = _FAILURES.format(failed=":failed", key=":key", since=":since")


async def _used_up(rt: Runtime, key: str, *, limit: int, window_seconds: int) -> bool:
    """Whether ``limit`` failures are counted in ``key``'s window. Once they are, this process
    remembers it until the window of the slots ends (when :func:`take_slot` would start again),
    so the rest of a burst is refused without a statement."""
    now = utcnow()
    used_up = _USED_UP.setdefault(rt.fast, {})
    until = used_up.get(key)
    if until is not None:
        if until > now:
            return True
        del used_up[key]
    since = now - dt.timedelta(seconds=window_seconds)
    if rt.settings.is_sqlite:
        row = rt.fast.read_sqlite(_FAILURES_SQLITE, {"failed": key + _SETTLED, "key": key,
                                                     "since": sqlite_moment(since)})
        started = from_sqlite_moment(row[1]) if row is not None else None
    else:
        row = await rt.fast.fetchrow(_FAILURES_PG, key + _SETTLED, key, since)
        started = row[1] if row is not None else None
    if row is None or started is None or row[0] < limit:
        return False
    if len(used_up) >= _USED_UP_MOST:
        for old in [k for k, end in used_up.items() if end <= now]:
            del used_up[old]
    if len(used_up) < _USED_UP_MOST:
        used_up[key] = started + dt.timedelta(seconds=window_seconds)
    return True


_USED_UP: WeakKeyDictionary[Any, dict[str, dt.datetime]] = WeakKeyDictionary()
"""Per database (its ``Runtime.fast``): the keys whose limit is used up, and when their window
ends (this process's memory)."""
_USED_UP_MOST = 100_000


async def _counted_failure(rt: Runtime, key: str, window_seconds: int) -> None:
    # The slot stays taken; the failure is also counted on its own, for ``_take_waiting``.
    try:
        await take_slot(rt, key + _SETTLED, limit=2**31 - 1, window_seconds=window_seconds)
    except Exception as exc:  # noqa: BLE001 - as in _give_back_if_can
        log.warning("a failure was not counted on its own (%s)", type(exc).__name__)


async def _give_back_if_can(rt: Runtime, key: str, window: Any) -> None:
    # The block's work is done (a redemption may be committed): a slot that cannot be given back
    # now (the database is saturated) stays counted, rather than the answer becoming an error.
    try:
        await give_back(rt, key, window)
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
