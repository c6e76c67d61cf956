"""The service's hottest requests, straight through the database driver.

A scan is one indexed SELECT. Through an ORM session it costs about 1 ms of Python (session, pool
checkout, greenlet hand-off, result objects, the ROLLBACK at the end) against about 0.1 ms in the
database, and on SQLite every aiosqlite call is a hand-off to a thread. So the scan, and the two
busiest writes (``service.fastwrite``), skip them:

* SQLite is used through the standard library's synchronous ``sqlite3`` on the event-loop thread.
  In WAL mode a reader never waits for the writer, and an indexed lookup takes tens of
  microseconds: less than the hand-off it replaces. Reads use a ``query_only`` connection. A
  write (:meth:`FastPath.write`) runs a whole transaction in one go, with no ``await`` between
  BEGIN and COMMIT, so it holds the database's write lock for well under a millisecond; the lock
  is asked for without waiting in SQLite's busy handler, and while another writer has it this
  coroutine sleeps and asks again.
* PostgreSQL is used through a few asyncpg connections of its own per event loop
  (:class:`_Connections`); asyncpg prepares each statement once per connection. Scans that arrive
  while this process is reading others are read together, in one statement (``groups.grouped``):
  the round trip, not the lookup, was most of a scan's cost.

Every other change goes through ``db.transaction`` and the domain functions; ``service.fastwrite``
writes the same rows, ledger entries and audit entries as those, and the tests compare the two.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import groups, statements
from .settings import Settings

__all__ = ("Delivered", "FastPath", "ScannedVoucher")

T = TypeVar("T")


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    """A redemption the asking provider recorded on the scanned voucher (the page's "Recorded")."""

    amount_cents: int
    invoice_cents: int
    reference: str


class ScannedVoucher(msgspec.Struct, frozen=True, kw_only=True):
    """What a scan reads: the voucher, what its scheme allows, and whose it is; for a provider,
    its enrolment in the scheme, and a redemption it asked for by id."""

    voucher_id: int
    status: str
    value_cents: int
    balance_cents: int
    held_cents: int
    redeemed_cents: int
    expires_at: dt.datetime
    scheme: str
    scheme_closed: bool
    categories: list[str]
    own_contribution_percent: int
    company_name: str
    scheme_name: str
    scheme_name_en: str
    enrolment_status: str | None = None
    """The asking provider's enrolment in the scheme; None when it has none (or nobody asked)."""
    enrolment_categories: list[str] = []
    delivered: Delivered | None = None


# One round trip: the voucher with its scheme and application, and the client's count of failed
# lookups, which must be read before answering (see ``vouchers.find_voucher``). The LEFT JOIN from
# a one-row table always gives one row, so the count is there even when the code is unknown. A
# coach's page asks for the rest of what it shows in the same read: its provider's enrolment and
# the redemption it has just recorded (both NULL for the API's scan, which matches nothing).
_SCAN = """
SELECT v.id, v.status, v.value_cents, v.balance_cents, v.held_cents, v.redeemed_cents, v.expires_at,
       s.slug, s.closed_at IS NOT NULL, s.categories, s.own_contribution_percent, a.company_name,
       (SELECT r.count FROM rate_limit_counter r WHERE r.key = {key} AND r.window_start >= {since}),
       s.name, s.name_en, e.status, e.categories, d.amount_cents, d.invoice_cents, d.reference
FROM {scans}
LEFT JOIN voucher v ON v.code_hash = {code_hash}
LEFT JOIN scheme s ON s.id = v.scheme_id
LEFT JOIN application a ON a.id = v.application_id
LEFT JOIN enrolment e ON e.scheme_id = v.scheme_id AND e.provider_id = {provider}
LEFT JOIN redemption d ON d.id = {done} AND d.voucher_id = v.id AND d.provider_id = {provider}
"""
_SQLITE_SCAN = _SCAN.format(scans="(SELECT 1 AS one) AS one", code_hash="?1", key="?2", since="?3",
                            provider="?4", done="?5")
_POSTGRES_SCAN = _SCAN.format(scans="(SELECT 1 AS one) AS one", code_hash="$1", key="$2", since="$3",
                              provider="$4::bigint", done="$5::bigint")
# Scans that arrive together (``groups.grouped``): a row for each, in the order asked.
_POSTGRES_SCANS = _SCAN.format(
    scans="unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[])"
          " WITH ORDINALITY AS q(code_hash, key, since, provider, done, n)",
    code_hash="q.code_hash", key="q.key", since="q.since", provider="q.provider", done="q.done") + "ORDER BY q.n"


def sqlite_moment(value: dt.datetime) -> str:
    # The form SQLAlchemy stores a UTC datetime in on SQLite, so that text comparison orders it.
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def from_sqlite_moment(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


class _Turns(asyncio.Semaphore):
    """Turns at the connections, served in order of asking; a request that has waited
    ``wait_seconds`` (None: as long as it takes) gives up as one waiting for the pool does
    (``db.is_saturated``: a 503)."""

    def __init__(self, size: int, wait_seconds: float | None) -> None:
        super().__init__(size)
        self._wait_seconds = wait_seconds

    async def __aenter__(self) -> None:
        if not self.locked() or self._wait_seconds is None:  # a place is free, or no time limit
            await self.acquire()
            return
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self.acquire()
        except TimeoutError:
            raise PoolTimeout(f"no driver connection free within {self._wait_seconds} s") from None


class _Connections:
    """One event loop's connections to PostgreSQL: up to ``size``, each opened when first needed,
    lent to one coroutine at a time, in order of asking.

    asyncpg's own pool does more on every loan than this path needs: it shields each release
    from cancellation with a task of its own, and keeps timeouts and a reset hook. With 16
    statements at a time that doubled what a statement cost this process (BENCHMARKS.md). Nothing here sets anything
    on a connection, and a loan ends in the coroutine that took it, so a connection goes back as
    it is; one whose state is unknown (cancelled or cut off mid-statement) is closed instead, and
    its place opens a new one when next lent.
    """

    def __init__(self, url: str, server_settings: dict[str, str], size: int,
                 wait_seconds: float | None = None) -> None:
        self._url = url
        self._server_settings = server_settings
        # A turn for each place; asyncio's semaphore serves waiters in order of arrival, so a
        # request that waits for a connection is not overtaken by those that come after it.
        self._turns = _Turns(size, wait_seconds)
        self._free: list[asyncpg.Connection | None] = [None] * size  # None: a place not opened yet
        self._open: set[asyncpg.Connection] = set()

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._turns:
            connection = self._free.pop()  # the most recently used, whose backend is warm
            try:
                if connection is None or connection.is_closed():
                    self._open.discard(connection)
                    connection = None
                    connection = await asyncpg.connect(self._url, server_settings=self._server_settings)
                    self._open.add(connection)
                yield connection
            except BaseException as exc:
                # An ERROR ends the statement and leaves the session usable once its transaction is
                # rolled back; a FATAL one, a lost connection or a cancelled statement leave it in
                # no known state.
                if connection is not None and (getattr(exc, "severity_en", None) != "ERROR"
                                               or connection.is_in_transaction()):
                    connection.terminate()
                    self._open.discard(connection)
                    connection = None
                raise
            finally:
                self._free.append(connection)

    async def close(self) -> None:
        for connection in list(self._open):
            try:
                await connection.close(timeout=5)
            except Exception:  # noqa: BLE001 - at shutdown a connection that will not close is dropped
                connection.terminate()
        self._open.clear()


class FastPath:
    """Per process: two ``sqlite3`` connections per thread (reads, writes), or a few asyncpg
    connections per event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._connections: dict[asyncio.AbstractEventLoop, _Connections] = {}

    async def scan(self, code_hash: bytes, attempts_key: str, since: dt.datetime, *, provider_id: int | None = None,
                   delivered: int | None = None) -> tuple[ScannedVoucher | None, int]:
        """The voucher with this code hash (None if there is none), and the failed lookups counted
        against ``attempts_key`` since ``since``. With ``provider_id``, also that provider's
        enrolment in the voucher's scheme and its redemption ``delivered`` of this voucher."""
        ask = (code_hash, attempts_key, since, provider_id, delivered)
        if self.settings.is_sqlite:
            row = self._sqlite().execute(_SQLITE_SCAN, (code_hash, attempts_key, sqlite_moment(since), provider_id,
                                                        delivered)).fetchone()
            expires_at = from_sqlite_moment(row[6]) if row[0] is not None else None
        else:
            row = await groups.grouped((self, "scan"), ask, self._scan, self._scans)
            expires_at = row[6]
        attempts = row[12] or 0
        if row[0] is None:
            return None, attempts
        return ScannedVoucher(
            voucher_id=row[0], status=row[1], value_cents=row[2], balance_cents=row[3], held_cents=row[4],
            redeemed_cents=row[5], expires_at=expires_at, scheme=row[7], scheme_closed=bool(row[8]),
            categories=json.loads(row[9]), own_contribution_percent=row[10], company_name=row[11],
            scheme_name=row[13], scheme_name_en=row[14], enrolment_status=row[15],
            enrolment_categories=json.loads(row[16]) if row[16] is not None else [],
            delivered=Delivered(amount_cents=row[17], invoice_cents=row[18], reference=row[19])
            if row[17] is not None else None,
        ), attempts

    async def _scan(self, one: tuple[bytes, str, dt.datetime, int | None, int | None]) -> Any:
        return await self.fetchrow(_POSTGRES_SCAN, *one)

    async def _scans(self, many: list[tuple[bytes, str, dt.datetime, int | None, int | None]]) -> list[Any]:
        code_hashes, keys, since, providers, done = zip(*many, strict=True)
        async with self.connection() as connection:
            statements.sent(_POSTGRES_SCANS)
            rows = await connection.fetch(_POSTGRES_SCANS, code_hashes, keys, since, providers, done)
        if len(rows) != len(many):  # a code hash is unique; anything else and each is read alone
            raise LookupError(f"{len(rows)} rows for {len(many)} scans")
        return rows

    async def write(self, work: Callable[[sqlite3.Connection], T], writers: Any) -> T:
        """Run ``work`` in one SQLite write transaction on this thread's writable connection,
        committed when it returns and rolled back if it raises. ``work`` must not await: the event
        loop waits while it runs, and the database's write lock is held only that long.

        ``writers`` is the session path's turn-taking (``db.writer_turn``): in this process a
        write waits its turn in asyncio; another process's write is waited out here."""
        connection = self._sqlite_writer()
        async with writers:
            # Another process's write lasts well under a millisecond (or, for the session path's
            # writes, a few): ask again often, and a failed ask costs microseconds.
            # Given up after as long as the engine's busy timeout (``db._sqlite_pragmas``).
            pause, deadline = 0.0001, time.monotonic() + 30
            while True:
                try:
                    connection.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                        raise
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.002)
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        return result

    def _sqlite_writer(self) -> sqlite3.Connection:
        # As the engine's connections (``db._sqlite_pragmas``), but the lock is waited for in
        # asyncio (``write``), never in SQLite's busy handler on the event loop's thread.
        return self._sqlite_connection("writer", ("synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=0"), 64)

    def read_sqlite(self, sql: str, params: dict[str, Any]) -> Any:
        """One row of a read on this thread's ``query_only`` connection."""
        return self._sqlite().execute(sql, params).fetchone()

    def _sqlite(self) -> sqlite3.Connection:
        # A reader in WAL mode does not wait for writers; the timeout covers the rare moments (a
        # checkpoint restarting the log) when it must.
        return self._sqlite_connection("connection", ("busy_timeout=5000", "query_only=ON"), 16)

    def _sqlite_connection(self, slot: str, pragmas: tuple[str, ...], cached_statements: int) -> sqlite3.Connection:
        """This thread's connection in ``slot``, opened on first use, in autocommit (we say BEGIN)."""
        connection = getattr(self._local, slot, None)
        if connection is None:
            path = make_url(self.settings.database_url).database
            connection = sqlite3.connect(path, isolation_level=None, cached_statements=cached_statements)
            for pragma in pragmas:
                connection.execute(f"PRAGMA {pragma}")
            setattr(self._local, slot, connection)
        # SQLite tells each statement to a trace callback, which costs a little on every one: it
        # is set only while somebody listens (``service.statements``).
        listened = statements.listened()
        if getattr(self._local, slot + "_traced", False) != listened:
            connection.set_trace_callback(statements.sent if listened else None)
            setattr(self._local, slot + "_traced", listened)
        return connection

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """Lend this event loop's next free connection to PostgreSQL (``async with``). It is in
        autocommit; whoever borrows it sets nothing on it."""
        loop = asyncio.get_running_loop()
        connections = self._connections.get(loop)
        if connections is None:
            url = make_url(self.settings.database_url).set(drivername="postgresql")
            server_settings = {"application_name": "vouchers-fastpath"}
            if self.settings.database_schema:
                server_settings["search_path"] = self.settings.database_schema
            connections = self._connections[loop] = _Connections(
                url.render_as_string(hide_password=False), server_settings, self.settings.db_driver_connections,
                self.settings.db_pool_timeout_seconds)
        return connections.lend()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """One statement in autocommit on PostgreSQL: its first row, or None."""
        async with self.connection() as connection:
            statements.sent(sql)
            return await connection.fetchrow(sql, *args)

    async def close(self) -> None:
        """Close this event loop's connections to PostgreSQL and this thread's to SQLite."""
        connections = self._connections.pop(asyncio.get_running_loop(), None)
        if connections is not None:
            await connections.close()
        for name in ("connection", "writer"):
            connection = getattr(self._local, name, None)
            if connection is not None:
                connection.close()
                setattr(self._local, name, None)
                setattr(self._local, name + "_traced", False)
