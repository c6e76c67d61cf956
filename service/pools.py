"""How many connections to PostgreSQL the service opens, and whether the server takes them.

One formula, from the settings (README, "How pools are sized")::

    per process = db_pool_size + db_max_overflow + db_driver_connections
    total       = processes x per process

where the processes are every web worker and background process on every host
(``Settings.db_processes``; unset, those this command starts). The server takes
``max_connections`` minus the connections it keeps for superusers (``superuser_reserved_connections``
and, from PostgreSQL 16, ``reserved_connections``), and fewer still when the role or the database
has a ``CONNECTION LIMIT``. ``vouchers serve`` and ``vouchers worker`` refuse to start when the
total does not fit, with the numbers and what to change; a service that started anyway would
answer "too many clients" under load. When the server is full all the same (other clients share
it), requests are answered 503 with ``Retry-After`` (``service.problems``).
"""

from __future__ import annotations

import asyncpg
import msgspec
from sqlalchemy.engine import make_url

from .settings import ConfigError, Settings

__all__ = ("ServerRoom", "check", "per_process", "refusal", "server_room")


class ServerRoom(msgspec.Struct, frozen=True, kw_only=True):
    """What the server says about connections, read at start."""

    max_connections: int
    reserved: int
    """``superuser_reserved_connections`` plus ``reserved_connections`` (PostgreSQL 16 and later)."""
    role: str
    role_limit: int | None = None
    """The role's ``CONNECTION LIMIT``; None when it has none (-1 in ``pg_roles``)."""
    database_limit: int | None = None
    """The database's ``CONNECTION LIMIT``; None when it has none."""

    def available(self) -> tuple[int, str]:
        """How many connections this service's role may open on this database, and why."""
        room = [(self.max_connections - self.reserved,
                 f"max_connections {self.max_connections} - {self.reserved} reserved for superusers")]
        if self.role_limit is not None:
            room.append((self.role_limit, f"CONNECTION LIMIT {self.role_limit} of role {self.role}"))
        if self.database_limit is not None:
            room.append((self.database_limit, f"CONNECTION LIMIT {self.database_limit} of the database"))
        return min(room)


def per_process(settings: Settings) -> int:
    """The most connections one process opens: its pool, the pool's overflow, the driver's own."""
    return settings.db_pool_size + settings.db_max_overflow + settings.db_driver_connections


def refusal(settings: Settings, processes: int, room: ServerRoom) -> str | None:
    """Why ``processes`` processes with these settings would not fit the server, or None."""
    each = per_process(settings)
    total = processes * each
    available, why = room.available()
    if total <= available:
        return None
    return (
        f"PostgreSQL takes {available} connections from this service ({why}), but it would open up to "
        f"{total}: {processes} processes x {each} per process (VOUCHERS_DB_POOL_SIZE {settings.db_pool_size} "
        f"+ VOUCHERS_DB_MAX_OVERFLOW {settings.db_max_overflow} + VOUCHERS_DB_DRIVER_CONNECTIONS "
        f"{settings.db_driver_connections}). Make those three add up to {available // processes} or less, "
        f"or run fewer processes (--workers, VOUCHERS_DB_PROCESSES), or let the server take more "
        f"(max_connections).")


async def server_room(settings: Settings) -> ServerRoom:
    """Ask the server (one short connection of its own)."""
    url = make_url(settings.database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=10)
    try:
        row = await connection.fetchrow("""
            SELECT current_setting('max_connections')::int,
                   current_setting('superuser_reserved_connections')::int
                     + coalesce(current_setting('reserved_connections', true)::int, 0),
                   current_user,
                   (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
                   (SELECT datconnlimit FROM pg_database WHERE datname = current_database())""")
    finally:
        await connection.close()
    max_connections, reserved, role, role_limit, database_limit = row
    return ServerRoom(max_connections=max_connections, reserved=reserved, role=role,
                      role_limit=None if role_limit < 0 else role_limit,
                      database_limit=None if database_limit < 0 else database_limit)


async def check(settings: Settings, processes: int) -> None:
    """Refuse (:class:`ConfigError`) when ``processes`` processes would open more connections than
    the server takes; nothing to check on SQLite."""
    if settings.is_sqlite:
        return
    reason = refusal(settings, settings.db_processes or processes, await server_room(settings))
    if reason is not None:
        raise ConfigError(reason)
