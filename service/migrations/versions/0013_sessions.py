"""user_session: sessions kept on the server, so that they can be ended

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 20:00:00

The session lived in an encrypted cookie, so a copy taken before logout kept working until the
cookie ran out. The cookie now carries only a random id; this table holds a keyed hash of it, the
principal, and when the session started and was last used, so that logout, "log out everywhere",
a new password and a disabled account end it at once in every server process, and idle and
absolute timeouts are checked on the server. Sessions in old cookies are not carried over:
everybody signs in once more.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('user_session',
    sa.Column('id', Id, nullable=False),
    sa.Column('id_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('subject_id', Id, nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('created_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', service.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.CheckConstraint("kind IN ('staff', 'provider-staff', 'entrepreneur')", name='user_session_kind_known'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('id_hash')
    )
    with op.batch_alter_table('user_session', schema=None) as batch_op:
        batch_op.create_index('user_sessions_by_last_seen', ['last_seen_at'], unique=False)
        batch_op.create_index('user_sessions_of_subject', ['kind', 'subject_id'], unique=False)


def downgrade() -> None:
    op.drop_table('user_session')
