"""Tables of the municipality's side (migration 0004): staff accounts, the audit log and its
head, and decisions on reported redemptions.

Imported by :mod:`service.models`, so ``Base.metadata`` (and Alembic) see them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column

from .models_base import Base, Id, utcnow

__all__ = ("AuditEntry", "AuditHead", "FlagReview", "STAFF_ROLES", "StaffUser")

STAFF_ROLES = ("beheerder", "beoordelaar", "financieel", "lezer")


class StaffUser(Base):
    """A municipality staff account. Signing in takes the password and a TOTP code; failed
    attempts of either are counted here, so a lock-out holds in every server process."""

    __tablename__ = "staff_user"
    __table_args__ = (
        CheckConstraint("role IN ('beheerder', 'beoordelaar', 'financieel', 'lezer')", name="staff_role_known"),
        CheckConstraint("failed_attempts >= 0", name="staff_failed_attempts_not_negative"),
        Index("staff_by_sso_subject", "sso_subject", unique=True),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(200))
    """argon2id; None until the account is set up through its one-time link."""
    totp_secret: Mapped[bytes] = mapped_column(LargeBinary(128))
    """The TOTP secret, encrypted (AES-GCM) with a key derived from the server's secret."""
    activated_at: Mapped[dt.datetime | None]
    last_totp_step: Mapped[int] = mapped_column(Integer, default=0)
    """The last 30-second TOTP step used, so that a code works only once."""
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    last_sign_in_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None]
    sso_subject: Mapped[str | None] = mapped_column(String(255))
    """The ``sub`` of the municipality's own provider for an account that signs in there
    (migration 0015); None for password and TOTP only."""


class AuditEntry(Base):
    """One state change: who, what, when, from where, before and after. Append-only.

    Written with the change, in its transaction, without a lock; sealed shortly after by
    ``service.audit.seal``, which gives it the next place in the hash chain (``chain_seq``) and
    the hash of the entry before it (``service.audit.verify`` checks the chain)."""

    __tablename__ = "audit_entry"
    __table_args__ = (
        Index("audit_by_row", "table_name", "row_id"),
        Index("audit_by_time", "at"),
        UniqueConstraint("chain_seq", name="audit_chain_seq_unique"),
    )

    seq: Mapped[int] = mapped_column(Id, primary_key=True)
    """The entry's number, in the order entries were written."""
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    table_name: Mapped[str] = mapped_column(String(40))
    row_id: Mapped[str] = mapped_column(String(40))
    before: Mapped[dict[str, Any]] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    chain_seq: Mapped[int | None] = mapped_column(BigInteger)
    """Place in the hash chain, in the order entries were sealed; None until then."""
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Base):
    """The one row naming the last sealed entry of the chain (``seq`` is its ``chain_seq``).
    Sealing locks it, so the chain stays a line however many processes seal; deleting the last
    entries is caught against it."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="one_audit_head"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Id)
    hash: Mapped[str] = mapped_column(String(64))


# Every database starts with the head at the chain's start: migration 0004 inserts it, and this
# does for a schema made with ``create_all`` (the tests).
event.listen(AuditHead.__table__, "after_create",
             DDL("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')"))


class FlagReview(Base):
    """The municipality's decision on a redemption an entrepreneur reported."""

    __tablename__ = "flag_review"
    __table_args__ = (CheckConstraint("decision IN ('kept', 'reversed')", name="flag_decision_known"),)

    redemption_id: Mapped[int] = mapped_column(ForeignKey("redemption.id"), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(100))
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
