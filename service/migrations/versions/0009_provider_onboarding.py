"""Providers join from the web: one-time account links, a provider's contact and confirmation,
staff accounts without a password yet, and a session generation per provider account

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 17:00:00

A web sign-up names its contact, who confirms the address and becomes the first staff account
(without a password until they set one from a mailed link). Providers that exist already were
added by staff and count as confirmed. The staff setup nonce gives way to ``account_link``, which
municipality and provider accounts share.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('provider', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contact_name', sa.String(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('email_confirmed_at', service.models.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE provider SET email_confirmed_at = created_at")
    with op.batch_alter_table('provider_user', schema=None) as batch_op:
        batch_op.alter_column('password_hash', existing_type=sa.String(length=200), nullable=True)
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.drop_column('setup_nonce')
    op.create_table('account_link',
    sa.Column('id', Id, nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('salt', sa.LargeBinary(length=16), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('staff_user_id', Id, nullable=True),
    sa.Column('provider_user_id', Id, nullable=True),
    sa.Column('created_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('(staff_user_id IS NULL) <> (provider_user_id IS NULL)', name='account_link_one_account'),
    sa.CheckConstraint("purpose IN ('setup', 'reset')", name='account_link_purpose_known'),
    sa.ForeignKeyConstraint(['provider_user_id'], ['provider_user.id'], ),
    sa.ForeignKeyConstraint(['staff_user_id'], ['staff_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('account_link', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_link_provider_user_id'), ['provider_user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_account_link_staff_user_id'), ['staff_user_id'], unique=False)


def downgrade() -> None:
    op.drop_table('account_link')
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('setup_nonce', sa.String(length=32), nullable=True))
    # Accounts still without a password cannot be kept under the old rule that every one has one.
    op.execute("DELETE FROM provider_user WHERE password_hash IS NULL")
    with op.batch_alter_table('provider_user', schema=None) as batch_op:
        batch_op.drop_column('session_generation')
        batch_op.alter_column('password_hash', existing_type=sa.String(length=200), nullable=False)
    with op.batch_alter_table('provider', schema=None) as batch_op:
        batch_op.drop_column('email_confirmed_at')
        batch_op.drop_column('contact_name')
