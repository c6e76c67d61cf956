"""Engine, sessions and the one way to run a transaction.

SQLite: every writing transaction starts with ``BEGIN IMMEDIATE``, so writers queue on the database
lock instead of failing half-way; sessions from the *reader* (``Runtime.reader``) start a plain
``BEGIN`` and, thanks to WAL, read a consistent snapshot without waiting for writers. PostgreSQL: READ COMMITTED with
conditional UPDATEs and row locks; a deadlock or serialization failure is retried.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from .settings import Settings

__all__ = ("create_engine", "is_saturated", "make_sessionmaker", "transaction", "run_in_transaction", "writer_turn")

T = TypeVar("T")

# SQLSTATEs worth retrying: serialization_failure, deadlock_detected.
_RETRYABLE = {"40001", "40P01"}
# The server takes no more connections now: too_many_connections (the server's, a role's or a
# database's limit), cannot_connect_now (starting up, shutting down), and the client's own
# "could not connect" classes.
_SATURATED = {"53300", "57P03", "08001", "08004", "08006"}


def is_saturated(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the database cannot take this request now, rather
    than that the request is wrong: no pooled connection free within ``db_pool_timeout_seconds``,
    the server full or refusing connections, SQLite's write lock not had within its busy timeout.
    Such a request is worth sending again in a moment (``service.problems`` answers 503)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, PoolTimeout | ConnectionRefusedError | asyncpg.TooManyConnectionsError
                      | asyncpg.CannotConnectNowError):
            return True
        if isinstance(error, sqlite3.OperationalError) and getattr(error, "sqlite_errorcode", None) in (
                sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return True
        if getattr(error, "sqlstate", None) in _SATURATED:
            return True
        todo += [error.__cause__, error.__context__, getattr(error, "orig", None)]
    return False


def create_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    if settings.is_sqlite:
        # SQLite serialises writers itself; a small pool of file connections with WAL
        # lets readers run beside the writer.
        engine = create_async_engine(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=0,
            pool_timeout=settings.db_pool_timeout_seconds, **kwargs
        )
        _sqlite_pragmas(engine)
        return engine
    if settings.database_schema:
        kwargs.setdefault("connect_args", {"server_settings": {"search_path": settings.database_schema}})
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=False,
        **kwargs,
    )


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that we can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process (only a power cut can lose the last
        # commits), which is what an acknowledged request needs.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


READ_ONLY = "vouchers_read_only"


def make_sessionmaker(engine: AsyncEngine, *, read_only: bool = False, writers: int | None = None,
                      pseudonym_key: bytes | None = None) -> async_sessionmaker[AsyncSession]:
    """Sessions for work that writes, or (``read_only``) for lookups that never write. With
    ``writers``, :func:`transaction` runs at most that many at once per process. ``pseudonym_key``
    lets ``applications.submit`` compare a KvK number with the pseudonyms of a privacy purge."""
    if read_only:
        engine = engine.execution_options(**{READ_ONLY: True})
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False,
                              info={WRITERS: writers, PSEUDONYM_KEY: pseudonym_key})


WRITERS = "vouchers_writers"
PSEUDONYM_KEY = "vouchers_kvk_pseudonym_key"
_turns: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Semaphore]] = WeakKeyDictionary()
_holding_turn: ContextVar[bool] = ContextVar("holding_write_turn", default=False)


@asynccontextmanager
async def writer_turn(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    """Let this process's write transactions take turns, a few at a time, in asyncio.

    On SQLite one at a time: they would queue in SQLite's busy handler otherwise, which sleeps in
    steps of up to 100 ms. On PostgreSQL a few: a transaction holding a hot row waits for the
    event loop between statements, and the more transactions interleave there, the longer every
    lock is held. An optimisation only: the database's locks are what keep the books right.
    """
    writers = (sessionmaker.kw.get("info") or {}).get(WRITERS)
    if writers is None or _holding_turn.get():
        yield
        return
    semaphores = _turns.setdefault(asyncio.get_running_loop(), {})
    semaphore = semaphores.get(sessionmaker)
    if semaphore is None:
        semaphore = semaphores[sessionmaker] = asyncio.Semaphore(writers)
    async with semaphore:
        token = _holding_turn.set(True)
        try:
            yield
        finally:
            _holding_turn.reset(token)


@asynccontextmanager
async def transaction(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed when the block ends, or rolled back if it raises."""
    async with writer_turn(sessionmaker), sessionmaker() as session, session.begin():
        yield session


async def run_in_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 5,
) -> T:
    """Run ``work`` in a fresh transaction, again if PostgreSQL reports a deadlock."""
    for attempt in range(1, attempts + 1):
        try:
            async with transaction(sessionmaker) as session:
                return await work(session)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            if sqlstate not in _RETRYABLE or attempt == attempts:
                raise
            await asyncio.sleep(0.005 * attempt)
    raise AssertionError("unreachable")
