"""Tables of operations (migration 0014): the background process's heartbeat, which ``/readyz``
reads to tell the load balancer whether mail, the sweep and audit sealing are running.

Imported by :mod:`service.models`, so ``Base.metadata`` (and Alembic) see it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from .models_base import Base

__all__ = ("Heartbeat",)


class Heartbeat(Base):
    """When a background process (``vouchers worker``, or the one beside ``vouchers serve``) was
    last seen, one row per host: a host name is no personal data."""

    __tablename__ = "heartbeat"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[dt.datetime]
