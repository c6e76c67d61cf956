"""The daily series behind the site's history chart and open data: each scheme's public figures
(places used, waiting list, committed, redeemed) at the end of each day, kept in ``site_history``.

The background process calls :func:`record_day` every round (``sitegen.keeper``): the day's row is
written the first time the day is seen and rewritten when a figure changed, so the row of a day
that has ended holds its last figures. The first time a scheme is recorded, its earlier days are
filled in from the ledger; the ledger does not know the waiting list, so those days have none.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db import transaction
from ..models import LedgerEntry, Scheme, SiteHistory, utcnow
from ..schemes import redeemed
from .snapshot import FiguresPoint
from .text import AMSTERDAM

__all__ = ("history", "record_day")

# How each kind of ledger entry moves the public figures.
_COMMITS = {"issue": 1, "revoked": -1, "expired": -1, "return": -1}
_REDEEMS = {"redeem": 1, "confirm": 1, "reverse": -1}


async def _from_ledger(session: AsyncSession, scheme_id: int, before: dt.date) -> list[SiteHistory]:
    """Figures at the end of each day with activity before ``before``, summed per day in the database."""
    day = func.date(LedgerEntry.created_at)
    rows = await session.execute(
        select(day, LedgerEntry.kind, func.sum(LedgerEntry.amount_cents), func.sum(LedgerEntry.places))
        .where(LedgerEntry.scheme_id == scheme_id)
        .group_by(day, LedgerEntry.kind)
        .order_by(day)
    )
    per_day: dict[dt.date, list[int]] = defaultdict(lambda: [0, 0, 0])
    for when, kind, amount, places in rows:
        key = when if isinstance(when, dt.date) else dt.date.fromisoformat(str(when))
        per_day[key][0] += int(places or 0)
        per_day[key][1] += _COMMITS.get(kind, 0) * int(amount or 0)
        per_day[key][2] += _REDEEMS.get(kind, 0) * int(amount or 0)
    out, totals = [], [0, 0, 0]
    for key in sorted(per_day):
        totals = [a + b for a, b in zip(totals, per_day[key], strict=True)]
        if key < before:
            out.append(SiteHistory(scheme_id=scheme_id, day=key, places_used=max(totals[0], 0), waiting_list=None,
                                   committed_cents=max(totals[1], 0), redeemed_cents=totals[2]))
    return out


async def record_day(sessionmaker: async_sessionmaker[AsyncSession], now: dt.datetime | None = None) -> int:
    """Write today's figures of every scheme where they are new or changed; returns how many rows
    were written (0 when nothing changed)."""
    today = (now or utcnow()).astimezone(AMSTERDAM).date()
    written = 0
    async with transaction(sessionmaker) as session:
        for scheme in await session.scalars(select(Scheme).order_by(Scheme.id)):
            figures = {"places_used": scheme.places_used, "waiting_list": scheme.waiting_count,
                       "committed_cents": scheme.committed_cents,
                       "redeemed_cents": await redeemed(session, scheme.id)}
            row = await session.get(SiteHistory, (scheme.id, today))
            if row is None:
                if await session.scalar(select(func.count()).where(SiteHistory.scheme_id == scheme.id)) == 0:
                    earlier = await _from_ledger(session, scheme.id, today)
                    session.add_all(earlier)
                    written += len(earlier)
                session.add(SiteHistory(scheme_id=scheme.id, day=today, **figures))
                written += 1
            elif any(getattr(row, name) != value for name, value in figures.items()):
                for name, value in figures.items():
                    setattr(row, name, value)
                row.recorded_at = utcnow()
                written += 1
    return written


async def history(session: AsyncSession, scheme_id: int) -> tuple[FiguresPoint, ...]:
    """The scheme's recorded days, oldest first."""
    rows = await session.scalars(select(SiteHistory).where(SiteHistory.scheme_id == scheme_id)
                                 .order_by(SiteHistory.day))
    return tuple(FiguresPoint(day=r.day, places_used=r.places_used, waiting_list=r.waiting_list,
                              committed_cents=r.committed_cents, redeemed_cents=r.redeemed_cents) for r in rows)
