"""site_history and background_lease: the public site's daily figures, and who builds it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 20:00:00

The background process keeps the public site current. It records each scheme's public figures
once a day and on change (places used, waiting list, committed, redeemed) for the site's history
chart and open data, and with several hosts one of them builds, holding a lease in the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'site_history',
        sa.Column('scheme_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('places_used', sa.Integer(), nullable=False),
        sa.Column('waiting_list', sa.Integer(), nullable=True),
        sa.Column('committed_cents', sa.BigInteger(), nullable=False),
        sa.Column('redeemed_cents', sa.BigInteger(), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('places_used >= 0 AND committed_cents >= 0', name='site_history_not_negative'),
        sa.ForeignKeyConstraint(['scheme_id'], ['scheme.id']),
        sa.PrimaryKeyConstraint('scheme_id', 'day'),
    )
    op.create_table(
        'background_lease',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('background_lease')
    op.drop_table('site_history')
