"""eHerkenning: a scheme says which proof it demands; an application records what the login proved;
a staff account may sign in through the municipality's own provider; a session remembers how it
was signed in

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 19:40:00

``scheme.proof`` is ``email`` (today's flow, for every existing scheme) or ``eherkenning`` (the
KvK number comes from an eHerkenning login), with ``scheme.eherkenning_level`` the lowest level of
assurance it accepts. An application to such a scheme keeps the login's level, the broker's
pseudonym of the acting person and the branch number, if any; never a name. A staff account that
signs in through the municipality's provider keeps that provider's subject (``sso_subject``).
A session (``user_session``) keeps how it was signed in (``via``: ``eherkenning`` or ``sso``) and,
for staff signed in at the provider, the provider's access token (``sso_token``), with which the
provider is asked at every request whether the account still works.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheme', schema=None) as batch_op:
        batch_op.add_column(sa.Column('proof', sa.String(length=16), nullable=False, server_default='email'))
        batch_op.add_column(sa.Column('eherkenning_level', sa.String(length=4), nullable=True))
    with op.batch_alter_table('application', schema=None) as batch_op:
        batch_op.add_column(sa.Column('assurance_level', sa.String(length=4), nullable=True))
        batch_op.add_column(sa.Column('acting_person', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('branch_number', sa.String(length=12), nullable=True))
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sso_subject', sa.String(length=255), nullable=True))
        batch_op.create_index('staff_by_sso_subject', ['sso_subject'], unique=True)
    with op.batch_alter_table('user_session', schema=None) as batch_op:
        batch_op.add_column(sa.Column('via', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('sso_token', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('user_session', schema=None) as batch_op:
        batch_op.drop_column('sso_token')
        batch_op.drop_column('via')
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.drop_index('staff_by_sso_subject')
        batch_op.drop_column('sso_subject')
    with op.batch_alter_table('application', schema=None) as batch_op:
        batch_op.drop_column('branch_number')
        batch_op.drop_column('acting_person')
        batch_op.drop_column('assurance_level')
    with op.batch_alter_table('scheme', schema=None) as batch_op:
        batch_op.drop_column('eherkenning_level')
        batch_op.drop_column('proof')
