"""application.registry_active, registry_extracted_on: the register's facts a decision used

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 17:00:00

A refused applicant is shown what the trade register said (people working there, postcode of the
establishment, whether the firm is registered as active, and the date of the extract), so they can
have the register corrected or object. The figures were stored already; the status and the
extract's date are stored now too. Applications decided before stay without them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('application', schema=None) as batch_op:
        batch_op.add_column(sa.Column('registry_active', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('registry_extracted_on', sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('application', schema=None) as batch_op:
        batch_op.drop_column('registry_extracted_on')
        batch_op.drop_column('registry_active')
