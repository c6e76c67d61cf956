"""vouchers_refuse(): lets a one-statement redemption undo itself when a rule refuses halfway

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 17:30:00

PostgreSQL only (``service.fastwrite``); SQLite needs nothing.
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""CREATE FUNCTION vouchers_refuse(code text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'vouchers-refused:' || code;
END $$""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS vouchers_refuse(text)")
