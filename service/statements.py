"""Every statement this process sends to a database, told to whoever listens.

The paths to the database are three: SQLAlchemy's engines, the standard library's ``sqlite3`` and
asyncpg's own connections of ``service.fastpath``. Each tells :func:`sent` what it sends, so a test
can count the statements of one request and the benchmark print them, whatever path they took.
Nobody listens in production: then telling costs one truth test per statement.

Transaction control is told as the words ``BEGIN``, ``COMMIT`` and ``ROLLBACK`` (SQLAlchemy's
events for them; SQLite's own text), so a listener can tell a read transaction that was only
rolled back from a statement that did work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ("listened", "listening", "sent")

_listeners: list[Callable[[str], None]] = []


def sent(sql: str) -> None:
    """Tell every listener that ``sql`` went to a database."""
    if _listeners:
        for listener in list(_listeners):
            listener(sql)


def listened() -> bool:
    """Whether anybody listens (a path whose telling costs more than a test asks first)."""
    return bool(_listeners)


@contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Call ``listener`` with each statement sent while the block runs, from any task or thread of
    this process."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


@event.listens_for(Engine, "before_cursor_execute")
def _cursor(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    # SQLite's BEGIN IMMEDIATE (``db._sqlite_pragmas``) is told by the "begin" event below.
    if _listeners and not statement.startswith("BEGIN"):
        sent(statement)


@event.listens_for(Engine, "begin")
def _begin(_conn: Any) -> None:
    sent("BEGIN")


@event.listens_for(Engine, "commit")
def _commit(_conn: Any) -> None:
    sent("COMMIT")


@event.listens_for(Engine, "rollback")
def _rollback(_conn: Any) -> None:
    sent("ROLLBACK")
