"""entrepreneur: confirmed e-mail and trade-register check on applications, sign-in links

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 11:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("application", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_confirmed_at", service.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("registry_checked_at", service.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("registry_employees", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("registry_postcode", sa.String(length=7), nullable=True))
        batch_op.add_column(sa.Column("registry_attempts", sa.Integer(), server_default="0", nullable=False))

    op.create_table(
        "sign_in_token",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("voucher_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", service.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["voucher_id"], ["voucher.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("sign_in_token", schema=None) as batch_op:
        batch_op.create_index("sign_in_tokens_of_voucher", ["voucher_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sign_in_token", schema=None) as batch_op:
        batch_op.drop_index("sign_in_tokens_of_voucher")
    op.drop_table("sign_in_token")
    with op.batch_alter_table("application", schema=None) as batch_op:
        batch_op.drop_column("registry_attempts")
        batch_op.drop_column("registry_postcode")
        batch_op.drop_column("registry_employees")
        batch_op.drop_column("registry_checked_at")
        batch_op.drop_column("email_confirmed_at")
