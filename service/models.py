"""Database tables. Money is always integer cents; counters on rows exist for speed and are
checked against the ledger by ``vouchers check``.

The invariants that must hold under any load are written here as CHECK constraints too, so that
even a bug in the domain code cannot store an overspent budget or a negative balance.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DDL,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .models_base import Base, Id, UTCDateTime, utcnow  # noqa: F401  (UTCDateTime: migrations name it here)
# The tables of the other sides live in their own modules; imported here so that Base.metadata
# (and Alembic) see every table once this module is imported.
from .models_admin import AuditEntry, AuditHead, FlagReview, StaffUser  # noqa: F401  (migration 0004)
from .models_ops import Heartbeat  # noqa: F401  (migration 0014)
from .models_site import BackgroundLease, SiteHistory  # noqa: F401  (migration 0012)

__all__ = (
    "ApiToken",
    "Application",
    "Base",
    "Enrolment",
    "Hold",
    "IdempotencyRecord",
    "LedgerEntry",
    "OutboxMessage",
    "Provider",
    "RateLimitCounter",
    "Redemption",
    "Scheme",
    "Voucher",
    "ProviderUser",
    "Offer",
    "PayoutBatch",
    "PayoutLine",
    "AccountLink",
    "UserSession",
)

class Scheme(Base):
    """A regeling: one budget, one cap on entrepreneurs, one set of rules."""

    __tablename__ = "scheme"
    __table_args__ = (
        CheckConstraint("places_used >= 0 AND places_used <= max_places", name="places_within_cap"),
        CheckConstraint("committed_cents >= 0 AND committed_cents <= budget_cents", name="committed_within_budget"),
        CheckConstraint("budget_cents >= 0 AND reserve_cents >= 0", name="budget_not_negative"),
        CheckConstraint("allocation IN ('first_come', 'lottery')", name="allocation_known"),
        CheckConstraint("waiting_count >= 0", name="waiting_count_not_negative"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text, default="")
    summary_en: Mapped[str] = mapped_column(Text, default="")
    allocation: Mapped[str] = mapped_column(String(16))
    categories: Mapped[list[Any]] = mapped_column(JSON)
    value_cents: Mapped[int] = mapped_column(BigInteger)
    own_contribution_percent: Mapped[int] = mapped_column(Integer, default=0)
    provider_cap_cents: Mapped[int | None] = mapped_column(BigInteger)
    max_employees: Mapped[int] = mapped_column(Integer)
    postcodes: Mapped[list[Any]] = mapped_column(JSON)
    applications_open_at: Mapped[dt.datetime]
    applications_close_at: Mapped[dt.datetime]
    validity_days: Mapped[int] = mapped_column(Integer)
    hold_days: Mapped[int] = mapped_column(Integer)
    reversal_days: Mapped[int] = mapped_column(Integer)
    lottery_seed_hash: Mapped[str | None] = mapped_column(String(64))
    lottery_seed: Mapped[str | None] = mapped_column(String(200))
    proof: Mapped[str] = mapped_column(String(16), default="email", server_default="email")
    """What an applicant proves (migration 0015): ``email`` (an address that answers) or
    ``eherkenning`` (the KvK number comes from an eHerkenning login)."""
    eherkenning_level: Mapped[str | None] = mapped_column(String(4))
    """The lowest eHerkenning level of assurance an ``eherkenning`` scheme accepts."""
    drawn_at: Mapped[dt.datetime | None]
    closed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    # Figures. Changed only by conditional UPDATEs in service.ledger, always with a ledger entry.
    budget_cents: Mapped[int] = mapped_column(BigInteger)
    reserve_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    max_places: Mapped[int] = mapped_column(Integer)
    places_used: Mapped[int] = mapped_column(Integer, default=0)
    committed_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    # What has been redeemed is the sum of its enrolments' ``received_cents`` (``schemes.redeemed``):
    # a redemption changes the voucher's and the provider's rows, never this one, so coaches of
    # different providers do not wait for each other.
    waitlist_seq: Mapped[int] = mapped_column(Integer, default=0)
    """Last waiting-list number handed out; numbers only grow, so positions are stable."""
    waiting_count: Mapped[int] = mapped_column(Integer, default=0)


class Application(Base):
    """An entrepreneur's request for a voucher. ``public_id`` is the pseudonym used in the draw
    and on status pages; it says nothing about the applicant."""

    __tablename__ = "application"
    __table_args__ = (
        # One live application per KvK number per scheme; a rejected one may be tried again.
        Index(
            "one_live_application_per_kvk",
            "scheme_id",
            "kvk_number",
            unique=True,
            sqlite_where=text("status NOT IN ('rejected', 'withdrawn')"),
            postgresql_where=text("status NOT IN ('rejected', 'withdrawn')"),
        ),
        Index("waiting_list_order", "scheme_id", "status", "waitlist_number"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    status: Mapped[str] = mapped_column(String(24))
    kvk_number: Mapped[str] = mapped_column(String(8))
    company_name: Mapped[str] = mapped_column(String(200))
    employees: Mapped[int] = mapped_column(Integer)
    postcode: Mapped[str] = mapped_column(String(7))
    contact_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    purpose: Mapped[str] = mapped_column(Text, default="")
    locale: Mapped[str] = mapped_column(String(5), default="nl")
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    waitlist_number: Mapped[int | None] = mapped_column(Integer)
    lottery_rank: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[dt.datetime | None]
    # Online applications (service.entrepreneur_pages): status ``unconfirmed`` until the mailed
    # link is followed, then ``registry_pending`` until the trade register has answered.
    email_confirmed_at: Mapped[dt.datetime | None]
    registry_checked_at: Mapped[dt.datetime | None]
    registry_employees: Mapped[int | None] = mapped_column(Integer)
    """People working at the firm according to the register (the figure the decision used)."""
    registry_postcode: Mapped[str | None] = mapped_column(String(7))
    registry_active: Mapped[bool | None] = mapped_column(Boolean)
    """Whether the register lists the firm as active; None when it was not found or not asked."""
    registry_extracted_on: Mapped[dt.date | None] = mapped_column(Date)
    """The date of the register's extract the decision used."""
    # Applications to a scheme that demands eHerkenning (migration 0015): what the login proved.
    assurance_level: Mapped[str | None] = mapped_column(String(4))
    """The eHerkenning level of assurance of the login (``EH3``); None for an ``email`` scheme."""
    acting_person: Mapped[str | None] = mapped_column(String(128))
    """The broker's pseudonym of the person who applied for the firm; never a name."""
    branch_number: Mapped[str | None] = mapped_column(String(12))
    """The branch (vestiging) number, when the login's authorisation named one."""
    registry_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Voucher(Base):
    """Only a keyed hash of the code is stored. The code itself is derived from ``code_salt`` and
    the server's secret, so the holder can be shown it again but a database copy cannot redeem."""

    __tablename__ = "voucher"
    __table_args__ = (
        UniqueConstraint("scheme_id", "kvk_number", name="one_voucher_per_kvk"),
        CheckConstraint(
            "balance_cents >= 0 AND held_cents >= 0 AND redeemed_cents >= 0 AND returned_cents >= 0",
            name="voucher_amounts_not_negative",
        ),
        CheckConstraint(
            "balance_cents + held_cents + redeemed_cents + returned_cents = value_cents",
            name="voucher_money_accounted_for",
        ),
        CheckConstraint("status IN ('active', 'used_up', 'expired', 'revoked')", name="voucher_status_known"),
        Index("voucher_expiry", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    application_id: Mapped[int] = mapped_column(ForeignKey("application.id"), unique=True)
    kvk_number: Mapped[str] = mapped_column(String(8))
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    code_salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    status: Mapped[str] = mapped_column(String(16), default="active")
    value_cents: Mapped[int] = mapped_column(BigInteger)
    balance_cents: Mapped[int] = mapped_column(BigInteger)
    held_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    redeemed_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    returned_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    holds_place: Mapped[bool] = mapped_column(Boolean, default=True)
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    end_reason: Mapped[str | None] = mapped_column(Text)


class Provider(Base):
    """An aanbieder: a coach or training provider."""

    __tablename__ = "provider"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kvk_number: Mapped[str] = mapped_column(String(8), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    website: Mapped[str | None] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    iban: Mapped[str] = mapped_column(String(34))
    locale: Mapped[str] = mapped_column(String(8), default="nl")
    """The language of the mails to the provider: the one its first application was made in,
    until its staff choose another on ``/coach/settings``."""
    contact_name: Mapped[str] = mapped_column(String(200), default="")
    """Who signed up on ``/coach/apply``; they become its first staff account once they confirm."""
    email_confirmed_at: Mapped[dt.datetime | None]
    """None until the address of a web sign-up is confirmed; staff decide only confirmed ones."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Enrolment(Base):
    """A provider's participation in one scheme, approved by the municipality per category."""

    __tablename__ = "enrolment"
    __table_args__ = (
        UniqueConstraint("scheme_id", "provider_id", name="one_enrolment_per_scheme"),
        CheckConstraint("status IN ('pending', 'approved', 'refused', 'suspended')", name="enrolment_status_known"),
        CheckConstraint("cap_cents IS NULL OR received_cents <= cap_cents", name="provider_within_cap"),
        CheckConstraint("held_cents >= 0", name="enrolment_held_not_negative"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    provider_id: Mapped[int] = mapped_column(ForeignKey("provider.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    categories: Mapped[list[Any]] = mapped_column(JSON)
    cap_cents: Mapped[int | None] = mapped_column(BigInteger)
    received_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    held_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    """Set aside for this provider by open holds; counts against the cap as received money does."""
    paid_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    decided_at: Mapped[dt.datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    scheme_closed_at: Mapped[dt.datetime | None]
    """When the scheme closed, set on all its enrolments by ``close_scheme``. Every redemption
    updates its enrolment's row on the condition that this is empty, and PostgreSQL checks that
    condition again on the newest version of a row it waited for: so no redemption commits after
    the close, without every redemption of the scheme locking the scheme's row."""


class ApiToken(Base):
    """A bearer token for systems; only its hash is stored."""

    __tablename__ = "api_token"
    __table_args__ = (CheckConstraint("role IN ('coach', 'admin')", name="token_role_known"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    provider_id: Mapped[int | None] = mapped_column(ForeignKey("provider.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class Redemption(Base):
    """Money a coach records against a voucher. A reversal adds a ledger entry and stamps
    ``reversed_at``; the row itself is never deleted."""

    __tablename__ = "redemption"
    __table_args__ = (
        CheckConstraint("amount_cents > 0 AND invoice_cents >= amount_cents", name="redemption_amounts"),
        Index("redemptions_of_provider", "provider_id", "created_at"),
        Index("redemptions_of_voucher", "voucher_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    voucher_id: Mapped[int] = mapped_column(ForeignKey("voucher.id"))
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolment.id"))
    provider_id: Mapped[int] = mapped_column(ForeignKey("provider.id"))
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("hold.id"))
    category: Mapped[str] = mapped_column(String(32))
    invoice_cents: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    own_contribution_cents: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(100))
    session_date: Mapped[dt.date | None] = mapped_column(Date)
    recorded_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reversed_at: Mapped[dt.datetime | None]
    reversal_reason: Mapped[str | None] = mapped_column(Text)
    flagged_at: Mapped[dt.datetime | None]
    payout_batch_id: Mapped[int | None] = mapped_column(BigInteger)
    # Added by migration 0002 (coaches).
    flag_note: Mapped[str | None] = mapped_column(Text)
    """What the entrepreneur wrote when reporting this redemption."""
    clawback_batch_id: Mapped[int | None] = mapped_column(BigInteger)
    """The payout batch that took back this redemption's money after it was paid and then reversed."""


class Hold(Base):
    """Money set aside on a voucher for a provider until the provider confirms delivery."""

    __tablename__ = "hold"
    __table_args__ = (
        CheckConstraint("amount_cents > 0 AND invoice_cents >= amount_cents", name="hold_amounts"),
        CheckConstraint("status IN ('open', 'confirmed', 'released')", name="hold_status_known"),
        Index("open_holds", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    voucher_id: Mapped[int] = mapped_column(ForeignKey("voucher.id"))
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolment.id"))
    provider_id: Mapped[int] = mapped_column(ForeignKey("provider.id"))
    offer_id: Mapped[int | None] = mapped_column(BigInteger)
    category: Mapped[str] = mapped_column(String(32))
    invoice_cents: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    own_contribution_cents: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="open")
    release_reason: Mapped[str | None] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    decided_at: Mapped[dt.datetime | None]


class LedgerEntry(Base):
    """One movement of money (and/or a place) from one account to another. Append-only.

    Accounts are ``(kind, id)`` pairs: ``funding`` (money given to a scheme), ``budget`` and
    ``reserve`` (per scheme), ``voucher`` and ``held`` (per voucher), ``provider`` (per
    enrolment) and ``bank`` (paid out). ``places`` is +1 when a place is taken, -1 when given back.
    """

    __tablename__ = "ledger_entry"
    __table_args__ = (
        CheckConstraint("amount_cents >= 0", name="entry_amount_not_negative"),
        CheckConstraint("places IN (-1, 0, 1)", name="entry_places"),
        Index("entries_from", "from_kind", "from_id"),
        Index("entries_to", "to_kind", "to_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    kind: Mapped[str] = mapped_column(String(24))
    from_kind: Mapped[str] = mapped_column(String(12))
    from_id: Mapped[int] = mapped_column(BigInteger)
    to_kind: Mapped[str] = mapped_column(String(12))
    to_id: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    places: Mapped[int] = mapped_column(Integer, default=0)
    voucher_id: Mapped[int | None] = mapped_column(BigInteger)
    redemption_id: Mapped[int | None] = mapped_column(BigInteger)
    hold_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    memo: Mapped[str] = mapped_column(Text, default="")


class OutboxMessage(Base):
    """A mail written in the same transaction as the change it reports; rendered and sent later."""

    __tablename__ = "outbox_message"
    __table_args__ = (Index("outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(200), unique=True)
    to_address: Mapped[str] = mapped_column(String(254))
    template: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str] = mapped_column(String(5))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]


class IdempotencyRecord(Base):
    """The answer given to one ``Idempotency-Key``, so that a retry gets the same answer."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("scope", "key", name="one_answer_per_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scope: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None]


class RateLimitCounter(Base):
    """A fixed-window counter shared by every server process."""

    __tablename__ = "rate_limit_counter"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[dt.datetime]
    count: Mapped[int] = mapped_column(Integer)


# --- Coach issue (migration 0002) -------------------------------------------------------------


class ProviderUser(Base):
    """A provider's staff account for the coach pages. Failed sign-ins are counted here, not in
    memory, so a lock-out holds in every server process."""

    __tablename__ = "provider_user"
    __table_args__ = (CheckConstraint("failed_attempts >= 0", name="failed_attempts_not_negative"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("provider.id"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(200))
    """argon2id; None until the person sets it through a mailed one-time link."""
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    last_sign_in_at: Mapped[dt.datetime | None]
    session_generation: Mapped[int] = mapped_column(Integer, default=0)
    """Stored with each session (``UserSession.generation``); raising it (a password reset) ends them all."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None]


class Offer(Base):
    """What a provider offers in a scheme. Hidden offers (by the provider or the municipality)
    are kept for the record but no longer shown."""

    __tablename__ = "offer"
    __table_args__ = (
        CheckConstraint("price_cents > 0", name="offer_price_positive"),
        CheckConstraint("hidden_by IS NULL OR hidden_by IN ('provider', 'municipality')", name="offer_hidden_by_known"),
        Index("offers_of_scheme", "scheme_id", "hidden_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("provider.id"))
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    title: Mapped[str] = mapped_column(String(120))
    category: Mapped[str] = mapped_column(String(32))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    duration: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    hidden_at: Mapped[dt.datetime | None]
    hidden_by: Mapped[str | None] = mapped_column(String(16))
    hidden_reason: Mapped[str | None] = mapped_column(Text)


class PayoutBatch(Base):
    """One payment run for all providers. Written once, with its SEPA file, and never changed."""

    __tablename__ = "payout_batch"
    __table_args__ = (CheckConstraint("total_cents > 0", name="payout_total_positive"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    period_start: Mapped[dt.date] = mapped_column(Date)
    period_end: Mapped[dt.date] = mapped_column(Date)
    """Exclusive: the batch pays what was recorded before this day."""
    message_id: Mapped[str] = mapped_column(String(35), unique=True)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    transaction_count: Mapped[int] = mapped_column(Integer)
    sepa_xml: Mapped[bytes] = mapped_column(LargeBinary)
    sepa_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PayoutLine(Base):
    """One credit transfer in a batch: what one enrolment (provider in a scheme) is paid."""

    __tablename__ = "payout_line"
    __table_args__ = (
        UniqueConstraint("batch_id", "enrolment_id", name="one_line_per_enrolment"),
        CheckConstraint("amount_cents > 0", name="payout_line_positive"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("payout_batch.id"))
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolment.id"))
    provider_id: Mapped[int] = mapped_column(ForeignKey("provider.id"))
    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    clawback_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    iban: Mapped[str] = mapped_column(String(34))
    creditor_name: Mapped[str] = mapped_column(String(200))
    end_to_end_id: Mapped[str] = mapped_column(String(35), unique=True)


class SignInToken(Base):
    """A one-time "my voucher" sign-in link. Only a keyed hash of the token is stored; using
    it stamps ``used_at``, so it works once, and only until ``expires_at``."""

    __tablename__ = "sign_in_token"
    __table_args__ = (Index("sign_in_tokens_of_voucher", "voucher_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    voucher_id: Mapped[int] = mapped_column(ForeignKey("voucher.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class AccountLink(Base):
    """A mailed one-time link that lets a person set a password: a municipality staff member's
    setup, a provider contact's or colleague's first password, a forgotten one. The token is
    derived from ``salt`` with a key only the server has (so the outbox need not store it) and
    only a keyed hash of it is kept; using it stamps ``used_at`` in a conditional UPDATE."""

    __tablename__ = "account_link"
    __table_args__ = (
        CheckConstraint("(staff_user_id IS NULL) <> (provider_user_id IS NULL)", name="account_link_one_account"),
        CheckConstraint("purpose IN ('setup', 'reset')", name="account_link_purpose_known"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    purpose: Mapped[str] = mapped_column(String(16))
    staff_user_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"), index=True)
    provider_user_id: Mapped[int | None] = mapped_column(ForeignKey("provider_user.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class UserSession(Base):
    """A signed-in person's session (``service.sessions``). The browser's cookie holds only a
    random id; this row holds a keyed hash of it, never the id itself, so a copy of the database
    signs nobody in. Revoking it (logout, "log out everywhere", a new password, a disabled
    account) ends it at once in every server process."""

    __tablename__ = "user_session"
    __table_args__ = (
        CheckConstraint("kind IN ('staff', 'provider-staff', 'entrepreneur')", name="user_session_kind_known"),
        Index("user_sessions_of_subject", "kind", "subject_id"),
        Index("user_sessions_by_last_seen", "last_seen_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    id_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``staff`` (municipality), ``provider-staff`` (coaches) or ``entrepreneur`` ("my voucher")."""
    role: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[int] = mapped_column(Id)
    """The staff account, provider account or voucher signed in."""
    generation: Mapped[int] = mapped_column(Integer, default=0)
    """A provider account's ``session_generation`` at sign-in: raising it ends the session too."""
    created_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    """Moved on at most once a minute, so that reading a page does not become a write."""
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    via: Mapped[str | None] = mapped_column(String(16), default=None)
    """How the person signed in, when it was not a password or a mailed link: ``eherkenning``
    (an entrepreneur, through the broker) or ``sso`` (staff, through the municipality's provider);
    signing out then ends the session there too."""
    sso_token: Mapped[str | None] = mapped_column(Text, default=None)
    """With ``sso``: the provider's access token, with which the provider is asked at every request
    whether the account still works. Ends with the session."""


# A statement that must undo itself when a rule refuses halfway calls this (``service.fastwrite``);
# PostgreSQL only. Migration 0006 creates it, and this does for a schema made with ``create_all``.
REFUSE_FUNCTION = """CREATE FUNCTION vouchers_refuse(code text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'vouchers-refused:' || code;
END $$"""
event.listen(Redemption.__table__, "after_create", DDL(REFUSE_FUNCTION).execute_if(dialect="postgresql"))
