"""coach: provider staff accounts, offers, payout batches, report fields on redemptions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:23:52.166312
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('payout_batch',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('message_id', sa.String(length=35), nullable=False),
    sa.Column('total_cents', sa.BigInteger(), nullable=False),
    sa.Column('transaction_count', sa.Integer(), nullable=False),
    sa.Column('sepa_xml', sa.LargeBinary(), nullable=False),
    sa.Column('sepa_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('total_cents > 0', name='payout_total_positive'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    op.create_table('offer',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('scheme_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('title', sa.String(length=120), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('price_cents', sa.BigInteger(), nullable=False),
    sa.Column('duration', sa.String(length=120), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('hidden_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('hidden_by', sa.String(length=16), nullable=True),
    sa.Column('hidden_reason', sa.Text(), nullable=True),
    sa.CheckConstraint("hidden_by IS NULL OR hidden_by IN ('provider', 'municipality')", name='offer_hidden_by_known'),
    sa.CheckConstraint('price_cents > 0', name='offer_price_positive'),
    sa.ForeignKeyConstraint(['provider_id'], ['provider.id'], ),
    sa.ForeignKeyConstraint(['scheme_id'], ['scheme.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('offer', schema=None) as batch_op:
        batch_op.create_index('offers_of_scheme', ['scheme_id', 'hidden_at'], unique=False)

    op.create_table('provider_user',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('locked_until', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sign_in_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', service.models.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('failed_attempts >= 0', name='failed_attempts_not_negative'),
    sa.ForeignKeyConstraint(['provider_id'], ['provider.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    with op.batch_alter_table('provider_user', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_user_provider_id'), ['provider_id'], unique=False)

    op.create_table('payout_line',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('batch_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('enrolment_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('scheme_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('clawback_cents', sa.BigInteger(), nullable=False),
    sa.Column('iban', sa.String(length=34), nullable=False),
    sa.Column('creditor_name', sa.String(length=200), nullable=False),
    sa.Column('end_to_end_id', sa.String(length=35), nullable=False),
    sa.CheckConstraint('amount_cents > 0', name='payout_line_positive'),
    sa.ForeignKeyConstraint(['batch_id'], ['payout_batch.id'], ),
    sa.ForeignKeyConstraint(['enrolment_id'], ['enrolment.id'], ),
    sa.ForeignKeyConstraint(['provider_id'], ['provider.id'], ),
    sa.ForeignKeyConstraint(['scheme_id'], ['scheme.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('batch_id', 'enrolment_id', name='one_line_per_enrolment'),
    sa.UniqueConstraint('end_to_end_id')
    )
    with op.batch_alter_table('redemption', schema=None) as batch_op:
        batch_op.add_column(sa.Column('flag_note', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('clawback_batch_id', sa.BigInteger(), nullable=True))




def downgrade() -> None:

    with op.batch_alter_table('redemption', schema=None) as batch_op:
        batch_op.drop_column('clawback_batch_id')
        batch_op.drop_column('flag_note')

    op.drop_table('payout_line')
    with op.batch_alter_table('provider_user', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_user_provider_id'))

    op.drop_table('provider_user')
    with op.batch_alter_table('offer', schema=None) as batch_op:
        batch_op.drop_index('offers_of_scheme')

    op.drop_table('offer')
    op.drop_table('payout_batch')

