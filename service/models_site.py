"""Tables of the public site (migration 0012): the daily figures per scheme, and the lease that
lets one background process of several do a piece of work (build the site).

Imported by :mod:`service.models`, so ``Base.metadata`` (and Alembic) see them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .models_base import Base, utcnow

__all__ = ("BackgroundLease", "SiteHistory")


class SiteHistory(Base):
    """A scheme's public figures at the end of one day (Amsterdam time); the day's row is
    updated while the day lasts. ``waiting_list`` is NULL for days taken from the ledger before
    the service kept this table (the ledger does not know the waiting list)."""

    __tablename__ = "site_history"
    __table_args__ = (
        CheckConstraint("places_used >= 0 AND committed_cents >= 0", name="site_history_not_negative"),
    )

    scheme_id: Mapped[int] = mapped_column(ForeignKey("scheme.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    places_used: Mapped[int] = mapped_column(Integer)
    waiting_list: Mapped[int | None] = mapped_column(Integer)
    committed_cents: Mapped[int] = mapped_column(BigInteger)
    redeemed_cents: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BackgroundLease(Base):
    """Who does one piece of background work until when (``service.lease``). A holder renews its
    lease every round; when it stops, another process takes the work over once it has run out."""

    __tablename__ = "background_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime]
