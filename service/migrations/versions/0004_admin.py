"""admin: municipality staff accounts, the hash-chained audit log and its head, flag reviews

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_entry',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('table_name', sa.String(length=40), nullable=False),
    sa.Column('row_id', sa.String(length=40), nullable=False),
    sa.Column('before', sa.JSON(), nullable=False),
    sa.Column('after', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('audit_entry', schema=None) as batch_op:
        batch_op.create_index('audit_by_row', ['table_name', 'row_id'], unique=False)
        batch_op.create_index('audit_by_time', ['at'], unique=False)

    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.CheckConstraint('id = 1', name='one_audit_head'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('staff_user',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=True),
    sa.Column('totp_secret', sa.LargeBinary(length=128), nullable=False),
    sa.Column('setup_nonce', sa.String(length=32), nullable=True),
    sa.Column('activated_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_totp_step', sa.Integer(), nullable=False),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('locked_until', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sign_in_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("role IN ('beheerder', 'beoordelaar', 'financieel', 'lezer')", name='staff_role_known'),
    sa.CheckConstraint('failed_attempts >= 0', name='staff_failed_attempts_not_negative'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('flag_review',
    sa.Column('redemption_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.String(length=100), nullable=False),
    sa.Column('decided_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision IN ('kept', 'reversed')", name='flag_decision_known'),
    sa.ForeignKeyConstraint(['redemption_id'], ['redemption.id'], ),
    sa.PrimaryKeyConstraint('redemption_id')
    )

    op.bulk_insert(sa.table("audit_head", sa.column("id", sa.Integer()), sa.column("seq", sa.BigInteger()),
                            sa.column("hash", sa.String())), [{"id": 1, "seq": 0, "hash": "0" * 64}])
    # The log is append-only in the database too (the hash chain catches whoever drops these).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION audit_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'audit_entry is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry "
                   "FOR EACH ROW EXECUTE FUNCTION audit_entry_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_entry_no_{event.lower()} BEFORE {event} ON audit_entry "
                       "BEGIN SELECT RAISE(ABORT, 'audit_entry is append-only'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_entry_append_only ON audit_entry")
        op.execute("DROP FUNCTION IF EXISTS audit_entry_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_delete")
    op.drop_table('flag_review')
    op.drop_table('staff_user')
    op.drop_table('audit_head')
    with op.batch_alter_table('audit_entry', schema=None) as batch_op:
        batch_op.drop_index('audit_by_time')
        batch_op.drop_index('audit_by_row')

    op.drop_table('audit_entry')
