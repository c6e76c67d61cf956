"""Engine, sessions and the one way to run a transaction.

SQLite: every writing transaction starts with ``BEGIN IMMEDIATE``, so writers queue on the database
lock instead of failing half-way; sessions from the *reader* (``Runtime.reader``) start a plain
``BEGIN`` and, thanks to WAL, read a consistent snapshot without waiting for writers. PostgreSQL: READ COMMITTED with
conditional UPDATEs and row locks; a deadlock or serialization failure is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from .settings import Settings

__all__ = ("create_engine", "make_sessionmaker", "transaction", "run_in_transaction", "writer_turn")

T = TypeVar("T")

# SQLSTATEs worth retrying: serialization_failure, deadlock_detected.
_RETRYABLE = {"40001", "40P01"}


def create_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    if settings.is_sqlite:
        # SQLite serialises writers itself; a small pool of file connections with WAL
        # lets readers run beside the writer.
        engine = create_async_engine(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=0, **kwargs
        )
        _sqlite_pragmas(engine)
        return engine
    if settings.database_schema:
        kwargs.setdefault("connect_args", {"server_settings": {"search_path": settings.database_schema}})
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
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
