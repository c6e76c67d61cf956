"""Run Alembic from code, so ``vouchers db upgrade`` needs no alembic.ini."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ("alembic_config", "migration_state", "script_directory", "stamp_head", "upgrade")

State = Literal["current", "behind", "ahead"]


def alembic_config(database_url: str, schema: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["database_schema"] = schema
    return config


def upgrade(database_url: str, schema: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url, schema), revision)


@functools.cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


def migration_state(connection: Any) -> tuple[State, list[str], list[str]]:
    """(state, the database's revisions, this code's heads) over a synchronous connection
    (``await conn.run_sync(migration_state)``).

    ``behind``: a migration of this code is not applied (or none is: an empty database), so the
    code would meet tables it does not know. ``ahead``: the database carries a revision this code
    does not know, which a newer version applied while this one still serves; migrations are
    additive first (README), so this code still works on it."""
    scripts = script_directory()
    applied = list(MigrationContext.configure(connection).get_current_heads())
    heads = list(scripts.get_heads())
    known = {rev.revision for rev in scripts.walk_revisions()}
    if any(rev not in known for rev in applied):
        return "ahead", applied, heads
    done: set[str] = set()
    for rev in applied:
        done.update(r.revision for r in scripts.iterate_revisions(rev, "base"))
    return ("current" if known <= done else "behind"), applied, heads


def stamp_head(connection: Any) -> None:
    """Mark tables made from the models (``Base.metadata.create_all``) as fully migrated."""
    MigrationContext.configure(connection).stamp(script_directory(), "head")
