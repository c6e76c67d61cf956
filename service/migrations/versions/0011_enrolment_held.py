"""enrolment.held_cents: a provider's open reservations count against its cap

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 17:30:00

A hold set money aside for a provider without looking at the most one provider may receive, so
a provider at its cap could still block vouchers' money with reservations until they lapsed.
Open holds are now counted on the enrolment, and the conditional UPDATEs of holds and
redemptions refuse when what was received plus what is held would pass the cap. Existing open
holds are counted in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('enrolment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_cents', sa.BigInteger(), nullable=False, server_default='0'))
    op.execute("UPDATE enrolment SET held_cents = (SELECT COALESCE(SUM(amount_cents), 0) FROM hold "
               "WHERE hold.enrolment_id = enrolment.id AND hold.status = 'open')")
    with op.batch_alter_table('enrolment', schema=None) as batch_op:
        batch_op.alter_column('held_cents', server_default=None)
        batch_op.create_check_constraint('enrolment_held_not_negative', 'held_cents >= 0')


def downgrade() -> None:
    with op.batch_alter_table('enrolment', schema=None) as batch_op:
        batch_op.drop_constraint('enrolment_held_not_negative', type_='check')
        batch_op.drop_column('held_cents')
