"""provider.locale: the language of the mails to a provider

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 00:45:00

Mails to providers were always in Dutch. A provider now gets them in the language it applied in;
existing providers keep Dutch.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provider', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=8), nullable=False, server_default='nl'))


def downgrade() -> None:
    with op.batch_alter_table('provider', schema=None) as batch_op:
        batch_op.drop_column('locale')
