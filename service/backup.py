"""Backups that restore: ``vouchers backup FILE``, ``vouchers restore FILE`` and ``vouchers backup
verify FILE``.

SQLite: SQLite's online backup API, from a connection that holds one read transaction, so the copy
is one consistent moment while the server goes on writing (WAL: readers and the writer do not wait
for each other). PostgreSQL: ``pg_dump`` in its custom format (compressed, restorable table by
table), and ``pg_restore`` in one transaction. Both show progress (``service.progress``).

``verify`` restores into a scratch database (a temporary file; a new PostgreSQL database on the
same server, dropped afterwards) and runs ``vouchers check`` and ``vouchers audit verify`` on it: a
backup counts when it restores and its books and audit chain are whole.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from .progress import progress
from .settings import Settings

__all__ = ("BackupError", "backup", "restore", "verify")

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_MAGIC = b"PGDMP"
PAGES_PER_STEP = 256


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


# --- SQLite ----------------------------------------------------------------------------------

def _sqlite_path(settings: Settings) -> Path:
    return Path(make_url(settings.database_url).database or "")


def _sqlite_copy(source: sqlite3.Connection, target: sqlite3.Connection, label: str) -> None:
    with progress(label, unit="pages") as shown:
        source.backup(target, pages=PAGES_PER_STEP,
                      progress=lambda _status, remaining, total: shown.update(total - remaining, total))


def _backup_sqlite(settings: Settings, file: Path) -> None:
    path = _sqlite_path(settings)
    if not path.exists():
        raise BackupError(f"no database at {path}")
    partial = file.with_name(file.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(path, isolation_level=None)
    target = sqlite3.connect(partial)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        # One read transaction: the copy is this moment, and writers go on meanwhile.
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _sqlite_copy(source, target, "backup")
        source.execute("COMMIT")
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        target.close()
        source.close()
    partial.replace(file)


def _restore_sqlite(file: Path, database: Path, label: str = "restore") -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    target = sqlite3.connect(database, isolation_level=None)
    try:
        target.execute("PRAGMA busy_timeout=30000")
        # Through SQLite's locks, so another connection never sees half a database.
        _sqlite_copy(source, target, label)
        if target.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            target.execute("PRAGMA journal_mode=WAL")
    finally:
        target.close()
        source.close()


# --- PostgreSQL ------------------------------------------------------------------------------

def pg_tool(name: str) -> str:
    """``pg_dump`` or ``pg_restore``: on PATH, or the newest under /usr/lib/postgresql/*/bin
    (where Debian's server package puts them)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
    if candidates:
        return candidates[-1]
    raise BackupError(f"{name} is not installed: install PostgreSQL's client programs (Debian: "
                      f"apt-get install postgresql-client), of the server's version or newer")


@dataclass(frozen=True)
class _PgTarget:
    env: dict[str, str]
    """libpq's variables: the password goes in PGPASSWORD, never on the command line."""
    schema: str | None


def _pg_target(settings: Settings, database: str | None = None) -> _PgTarget:
    url = make_url(settings.database_url)
    env = {**os.environ, "PGDATABASE": database or url.database or "", "PGHOST": url.host or "localhost",
           "PGPORT": str(url.port or 5432), "PGUSER": url.username or os.environ.get("USER", "postgres")}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return _PgTarget(env, settings.database_schema)


def _run_pg(command: list[str], target: _PgTarget, label: str, total: int | None, pattern: str) -> None:
    """Run pg_dump or pg_restore with --verbose; each table it reports is a step of progress."""
    with progress(label, total=total, unit="tables") as shown:
        process = subprocess.Popen(command, env=target.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        assert process.stderr is not None
        errors = []
        for line in process.stderr:
            if re.search(pattern, line):
                shown.advance()
            elif "error" in line.lower() or "fatal" in line.lower():
                errors.append(line.strip())
        if process.wait() != 0:
            raise BackupError(f"{Path(command[0]).name} failed: " + (" ".join(errors[-3:]) or f"exit {process.returncode}"))


def _pg_tables(settings: Settings, database: str | None = None) -> int:
    import asyncio

    from sqlalchemy import text

    from .db import create_engine

    async def count() -> int:
        engine = create_engine(settings if database is None else _with_database(settings, database))
        try:
            async with engine.connect() as conn:
                return int(await conn.scalar(text(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")) or 0)
        finally:
            await engine.dispose()

    return asyncio.run(count())


def _with_database(settings: Settings, database: str) -> Settings:
    import msgspec

    url = make_url(settings.database_url).set(database=database)
    return msgspec.structs.replace(settings, database_url=url.render_as_string(hide_password=False))


def _backup_pg(settings: Settings, file: Path) -> None:
    target = _pg_target(settings)
    partial = file.with_name(file.name + ".partial")
    command = [pg_tool("pg_dump"), "--no-password", "--format=custom", "--no-owner", "--no-privileges", "--verbose",
               f"--file={partial}"]
    if target.schema:
        command.append(f"--schema={target.schema}")
    # pg_dump takes one snapshot (REPEATABLE READ) and does not block the server's writers.
    _run_pg(command, target, "backup", _pg_tables(settings), r"dumping contents of table")
    partial.replace(file)


def _restore_pg(settings: Settings, file: Path, *, database: str | None = None, label: str = "restore") -> None:
    target = _pg_target(settings, database)
    tables = _listed_tables(file)
    command = [pg_tool("pg_restore"), "--no-password", "--clean", "--if-exists", "--no-owner", "--no-privileges",
               "--single-transaction", "--exit-on-error", "--verbose", f"--dbname={target.env['PGDATABASE']}",
               str(file)]
    _run_pg(command, target, label, tables, r"processing data for table")


def _listed_tables(file: Path) -> int:
    listing = subprocess.run([pg_tool("pg_restore"), "--list", str(file)], capture_output=True, text=True)
    if listing.returncode != 0:
        raise BackupError(f"{file} is not a readable pg_dump file: {listing.stderr.strip()}")
    return sum(1 for line in listing.stdout.splitlines() if " TABLE DATA " in line)


# --- what the commands call ------------------------------------------------------------------

def _kind(file: Path) -> str:
    with file.open("rb") as f:
        head = f.read(16)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PG_MAGIC):
        return "postgres"
    raise BackupError(f"{file} is not a backup made by `vouchers backup`")


def _matching(settings: Settings, file: Path) -> None:
    kind = _kind(file)
    if (kind == "sqlite") != settings.is_sqlite:
        raise BackupError(f"{file} is a {kind} backup, but VOUCHERS_DATABASE_URL names a "
                          f"{'SQLite' if settings.is_sqlite else 'PostgreSQL'} database")


def backup(settings: Settings, file: Path) -> None:
    """Write a consistent copy of the database to ``file`` (replaced only when complete)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    if settings.is_sqlite:
        _backup_sqlite(settings, file)
    else:
        _backup_pg(settings, file)


def restore(settings: Settings, file: Path) -> None:
    """Replace the database's contents by the backup's. Stop the servers and workers first."""
    _matching(settings, file)
    if settings.is_sqlite:
        _restore_sqlite(file, _sqlite_path(settings))
    else:
        _restore_pg(settings, file)


@contextmanager
def scratch(settings: Settings, file: Path) -> Iterator[dict[str, str]]:
    """The backup restored into a scratch database; yields the VOUCHERS_* variables naming it."""
    _matching(settings, file)
    if settings.is_sqlite:
        with tempfile.TemporaryDirectory(prefix="vouchers-verify-") as folder:
            database = Path(folder) / "scratch.db"
            _restore_sqlite(file, database, "restore into scratch")
            yield {"VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
        return
    name = f"vouchers_verify_{secrets.token_hex(6)}"
    _admin(settings, f'CREATE DATABASE "{name}"')
    try:
        scratch_settings = _with_database(settings, name)
        _restore_pg(settings, file, database=name, label="restore into scratch")
        yield {"VOUCHERS_DATABASE_URL": scratch_settings.database_url}
    finally:
        _admin(settings, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(settings: Settings, sql: str) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(settings.database_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


def verify(settings: Settings, file: Path) -> list[tuple[str, int, str]]:
    """Restore into a scratch database and run ``vouchers check`` and ``vouchers audit verify``
    there; (command, exit code, output) of each."""
    results = []
    with scratch(settings, file) as variables:
        env = {**os.environ, **variables}
        if settings.database_schema:
            env["VOUCHERS_DATABASE_SCHEMA"] = settings.database_schema
        for command in (["check"], ["audit", "verify"]):
            done = subprocess.run([sys.executable, "-m", "service.cli", *command], env=env, capture_output=True,
                                  text=True)
            results.append(("vouchers " + " ".join(command), done.returncode, (done.stdout + done.stderr).strip()))
    return results
