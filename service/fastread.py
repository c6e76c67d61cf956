"""The coach's scan, straight through the database driver.

A scan is one indexed SELECT. Through an ORM session it costs about 1 ms of Python (session, pool
checkout, greenlet hand-off, result objects, the ROLLBACK at the end) against about 0.1 ms in the
database, and on SQLite every aiosqlite call is a hand-off to a thread. So this one read skips them:

* SQLite is read with the standard library's synchronous ``sqlite3`` on the event-loop thread.
  In WAL mode a reader never waits for the writer, and an indexed lookup takes tens of
  microseconds: less than the hand-off it replaces. The connection is ``query_only``.
* PostgreSQL is read through a small asyncpg pool of its own; asyncpg prepares the statement once
  per connection, and the pool resets nothing on release because nothing here changes a session.

Writes go through ``db.transaction`` and the domain functions, with one exception: on PostgreSQL
a coach's redemption is one statement on this pool (``service.fastwrite``), which writes the same
rows, ledger entry and audit entries as ``vouchers.redeem``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
from typing import Any

import msgspec
from sqlalchemy.engine import make_url

from .settings import Settings

__all__ = ("FastReader", "ScannedVoucher")


class ScannedVoucher(msgspec.Struct, frozen=True, kw_only=True):
    """What a scan reads: the voucher, what its scheme allows, and whose it is."""

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


# One round trip: the voucher with its scheme and application, and the client's count of failed
# lookups, which must be read before answering (see ``vouchers.find_voucher``). The LEFT JOIN from
# a one-row table always gives one row, so the count is there even when the code is unknown.
_SCAN = """
SELECT v.id, v.status, v.value_cents, v.balance_cents, v.held_cents, v.redeemed_cents, v.expires_at,
       s.slug, s.closed_at IS NOT NULL, s.categories, s.own_contribution_percent, a.company_name,
       (SELECT r.count FROM rate_limit_counter r WHERE r.key = {key} AND r.window_start >= {since})
FROM (SELECT 1 AS one) AS one
LEFT JOIN voucher v ON v.code_hash = {code_hash}
LEFT JOIN scheme s ON s.id = v.scheme_id
LEFT JOIN application a ON a.id = v.application_id
"""
_SQLITE_SCAN = _SCAN.format(code_hash="?1", key="?2", since="?3")
_POSTGRES_SCAN = _SCAN.format(code_hash="$1", key="$2", since="$3")


def _sqlite_moment(value: dt.datetime) -> str:
    # The form SQLAlchemy stores a UTC datetime in on SQLite, so that text comparison orders it.
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_sqlite_moment(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


async def _no_reset(_connection: Any) -> None:
    """Nothing to undo: the scan runs one SELECT in autocommit and sets nothing."""


class FastReader:
    """Per process: a ``sqlite3`` connection per thread, or an asyncpg pool per event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._pools: dict[asyncio.AbstractEventLoop, Any] = {}

    async def scan(self, code_hash: bytes, attempts_key: str, since: dt.datetime) -> tuple[ScannedVoucher | None, int]:
        """The voucher with this code hash (None if there is none), and the failed lookups counted
        against ``attempts_key`` since ``since``."""
        if self.settings.is_sqlite:
            row = self._sqlite().execute(_SQLITE_SCAN, (code_hash, attempts_key, _sqlite_moment(since))).fetchone()
            expires_at = _from_sqlite_moment(row[6]) if row[0] is not None else None
        else:
            pool = await self.pool()
            row = await pool.fetchrow(_POSTGRES_SCAN, code_hash, attempts_key, since)
            expires_at = row[6]
        attempts = row[12] or 0
        if row[0] is None:
            return None, attempts
        return ScannedVoucher(
            voucher_id=row[0], status=row[1], value_cents=row[2], balance_cents=row[3], held_cents=row[4],
            redeemed_cents=row[5], expires_at=expires_at, scheme=row[7], scheme_closed=bool(row[8]),
            categories=json.loads(row[9]), own_contribution_percent=row[10], company_name=row[11],
        ), attempts

    def _sqlite(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            path = make_url(self.settings.database_url).database
            connection = sqlite3.connect(path, isolation_level=None, cached_statements=16)
            # A reader in WAL mode does not wait for writers; the timeout covers the rare moments
            # (a checkpoint restarting the log) when it must.
            connection.execute("PRAGMA busy_timeout=5000")
            connection.execute("PRAGMA query_only=ON")
            self._local.connection = connection
        return connection

    async def pool(self) -> Any:
        """This event loop's asyncpg pool, made on first use. Its connections are in autocommit
        and are given back as they are: whoever uses one sets nothing on it."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool
        import asyncpg

        url = make_url(self.settings.database_url).set(drivername="postgresql")
        server_settings = {"application_name": "vouchers-scan"}
        if self.settings.database_schema:
            server_settings["search_path"] = self.settings.database_schema
        pool = await asyncpg.create_pool(
            url.render_as_string(hide_password=False), min_size=1, max_size=max(2, self.settings.db_pool_size // 2),
            reset=_no_reset, server_settings=server_settings,
        )
        # Two first scans at once may both have made a pool: keep one.
        kept = self._pools.setdefault(loop, pool)
        if kept is not pool:
            await pool.close()
        return kept

    async def close(self) -> None:
        """Close this event loop's pool and this thread's connection."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
