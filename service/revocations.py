"""Revoked API tokens, told to every server process at once.

Each web process remembers the tokens it has checked (``auth.AuthMiddleware``), so that an API
call does not cost a database round trip for the token. With several processes, on several hosts,
a revocation made through one of them (or by ``vouchers token revoke``) must reach the memory of
all the others. On PostgreSQL the revocation sends a notice (``NOTIFY``) in its own transaction,
so it is delivered when, and only if, the revocation commits; every process listens on a connection
of its own and forgets what it remembered when one arrives. While that connection is down (and
until it is back) nothing is remembered at all: every call checks its token in the database.

On SQLite (one host) a remembered token is checked again after ``AuthMiddleware.TOKEN_CACHE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from .settings import Settings

__all__ = ("CHANNEL", "Revocations", "announce")

log = logging.getLogger(__name__)

CHANNEL = "vouchers_token_revoked"
PING_SECONDS = 5.0
RECONNECT_SECONDS = 1.0


async def announce(session: AsyncSession) -> None:
    """Tell every server process that a token was revoked, when the session's transaction commits."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class Revocations:
    """What this process has heard of revocations: a generation number that changes with each
    notice. A token remembered under an older generation is checked again. ``None`` while this
    process cannot hear the notices: remember nothing then."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._generation = 0
        self._listening = settings.is_sqlite

    def current(self) -> int | None:
        return self._generation if self._listening else None

    def _heard(self, *_notice: object) -> None:
        self._generation += 1

    def _lost(self, *_connection: object) -> None:
        self._listening = False

    async def listen(self) -> None:
        """Keep a connection that listens for notices, until cancelled (PostgreSQL only)."""
        url = make_url(self.settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        failures = 0
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(url, server_settings={"application_name": "vouchers-revocations"})
                connection.add_termination_listener(self._lost)
                await connection.add_listener(CHANNEL, self._heard)
                self._heard()  # whatever was revoked while nobody listened
                self._listening = True
                failures = 0
                while True:  # a connection cut off without a word shows itself here
                    await asyncio.sleep(PING_SECONDS)
                    await asyncio.wait_for(connection.execute("SELECT 1"), PING_SECONDS)
            except Exception as exc:  # whatever it was, listen again (nothing is remembered meanwhile)
                if failures == 0:  # once, not every second while the database is away
                    log.warning("not hearing token revocations (%s); checking every token meanwhile",
                                exc.__class__.__name__)
                failures += 1
            finally:
                self._listening = False
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(RECONNECT_SECONDS)
