"""a scheme's redeemed figure is the sum over its enrolments; closing marks every enrolment

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 23:30:00

Every redemption updated the scheme's row to count what was redeemed and to refuse once the
scheme had closed, so all coaches of a scheme waited in one line for that row. The figure was
always the sum of the enrolments' ``received_cents`` (each change moved both by the same amount),
and closing now sets ``enrolment.scheme_closed_at``, which the redemption's UPDATE of the
enrolment checks. Existing enrolments of closed schemes get their scheme's closing time.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('enrolment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scheme_closed_at', UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE enrolment SET scheme_closed_at = "
               "(SELECT closed_at FROM scheme WHERE scheme.id = enrolment.scheme_id)")
    with op.batch_alter_table('scheme', schema=None) as batch_op:
        batch_op.drop_constraint('redeemed_within_committed', type_='check')
        batch_op.drop_column('redeemed_cents')


def downgrade() -> None:
    with op.batch_alter_table('scheme', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redeemed_cents', sa.BigInteger(), nullable=False, server_default='0'))
    op.execute("UPDATE scheme SET redeemed_cents = "
               "(SELECT COALESCE(SUM(received_cents), 0) FROM enrolment WHERE enrolment.scheme_id = scheme.id)")
    with op.batch_alter_table('scheme', schema=None) as batch_op:
        batch_op.alter_column('redeemed_cents', server_default=None)
        batch_op.create_check_constraint('redeemed_within_committed',
                                         'redeemed_cents >= 0 AND redeemed_cents <= committed_cents')
    with op.batch_alter_table('enrolment', schema=None) as batch_op:
        batch_op.drop_column('scheme_closed_at')
