"""The one rule for a voucher's end date.

A voucher can be used up to and including a day in Dutch time ("t/m 31 december 2027"). It is
stored as the exclusive instant that follows that day: 00:00 of the next day in Europe/Amsterdam,
so the rules compare ``expires_at > now`` and nothing rounds. Everyone who shows, mails or exports
an end date asks :func:`last_day` for the day, so staff, the holder and the API see the same one.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

__all__ = ("ZONE", "end_after", "issued_expiry", "last_day", "local_day")

ZONE = ZoneInfo("Europe/Amsterdam")


def local_day(moment: dt.datetime) -> dt.date:
    """The date in Dutch time at ``moment``."""
    return moment.astimezone(ZONE).date()


def end_after(day: dt.date) -> dt.datetime:
    """The stored end of a voucher usable up to and including ``day``: the next day's 00:00 in
    Dutch time, in UTC."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), ZONE).astimezone(dt.UTC)


def last_day(expires_at: dt.datetime) -> dt.date:
    """The last day a voucher that ends at ``expires_at`` can be used."""
    return local_day(expires_at - dt.timedelta(microseconds=1))


def issued_expiry(issued_at: dt.datetime, validity_days: int) -> dt.datetime:
    """A new voucher's end: ``validity_days`` full days after the day it is issued, never less."""
    return end_after(local_day(issued_at) + dt.timedelta(days=validity_days))
