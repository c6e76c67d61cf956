"""audit log sealed after commit: entries are numbered by the database and chained by a sealer

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 15:00:00

Writers no longer lock the chain's head: an entry is inserted with its change and sealed
(``chain_seq``, ``prev_hash``, ``hash``) soon after by ``service.audit.seal``. Existing entries
keep their places (``chain_seq = seq``) and hashes. The triggers still refuse every change to an
entry, except the one sealing sets on an unsealed entry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_CONTENT = ("seq", "at", "actor", "address", "action", "table_name", "row_id")

_PG_FUNCTION = """
CREATE FUNCTION audit_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND {same}
       AND NEW.before::text = OLD.before::text AND NEW.after::text = OLD.after::text THEN
        RETURN NEW;  -- sealing an entry, once
    END IF;
    RAISE EXCEPTION 'audit_entry is append-only';
END $$
""".format(same=" AND ".join(f"NEW.{c} = OLD.{c}" for c in _CONTENT))

_SQLITE_SEALING = ("OLD.hash IS NULL AND NEW.hash IS NOT NULL AND "
                   + " AND ".join(f"NEW.{c} IS OLD.{c}" for c in (*_CONTENT, "before", "after")))


def _drop_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_entry_append_only ON audit_entry")
        op.execute("DROP FUNCTION IF EXISTS audit_entry_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_delete")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop_triggers(dialect)
    with op.batch_alter_table('audit_entry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain_seq', sa.BigInteger(), nullable=True))
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column('hash', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_unique_constraint('audit_chain_seq_unique', ['chain_seq'])
    op.execute("UPDATE audit_entry SET chain_seq = seq")
    if dialect == "postgresql":
        # What a BIGSERIAL column has: numbers from the database, after the existing entries.
        op.execute("CREATE SEQUENCE audit_entry_seq_seq OWNED BY audit_entry.seq")
        op.execute("SELECT setval('audit_entry_seq_seq', COALESCE((SELECT max(seq) FROM audit_entry), 0) + 1, false)")
        op.execute("ALTER TABLE audit_entry ALTER COLUMN seq SET DEFAULT nextval('audit_entry_seq_seq')")
        op.execute(_PG_FUNCTION)
        op.execute("CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry "
                   "FOR EACH ROW EXECUTE FUNCTION audit_entry_append_only()")
    else:
        # seq is an INTEGER PRIMARY KEY, so SQLite numbers new rows already.
        op.execute(f"CREATE TRIGGER audit_entry_no_update BEFORE UPDATE ON audit_entry WHEN NOT ({_SQLITE_SEALING}) "
                   "BEGIN SELECT RAISE(ABORT, 'audit_entry is append-only'); END")
        op.execute("CREATE TRIGGER audit_entry_no_delete BEFORE DELETE ON audit_entry "
                   "BEGIN SELECT RAISE(ABORT, 'audit_entry is append-only'); END")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop_triggers(dialect)
    if dialect == "postgresql":
        op.execute("ALTER TABLE audit_entry ALTER COLUMN seq DROP DEFAULT")
        op.execute("DROP SEQUENCE IF EXISTS audit_entry_seq_seq")
    # Unsealed entries cannot stay in a log whose every entry must carry its hash.
    op.execute("DELETE FROM audit_entry WHERE hash IS NULL")
    with op.batch_alter_table('audit_entry', schema=None) as batch_op:
        batch_op.drop_constraint('audit_chain_seq_unique', type_='unique')
        batch_op.alter_column('hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column('chain_seq')
    if dialect == "postgresql":
        op.execute("CREATE FUNCTION audit_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'audit_entry is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry "
                   "FOR EACH ROW EXECUTE FUNCTION audit_entry_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_entry_no_{event.lower()} BEFORE {event} ON audit_entry "
                       "BEGIN SELECT RAISE(ABORT, 'audit_entry is append-only'); END")
