"""The checks that refuse an action, each written once: the action calls its check, and so does
the preview that tells staff beforehand what the action will do (``service.interventions``), so
the rule cannot drift between the two. Plain functions over rows already read; no web, no writes.

The conditional UPDATE of each action still decides under concurrency; these checks give the same
refusal for the row as it was read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .errors import N_, NotFound, Refused
from .models import Application, Enrolment, Redemption, Scheme, Voucher

__all__ = ("ENDABLE", "UNDECIDED", "check_closable", "check_endable", "check_pending", "check_reversible",
           "check_undecided", "movable")

ENDABLE = ("active", "used_up")
"""Statuses of a voucher that has not ended: it can be revoked (and, when ``active``, expire)."""


def check_endable(voucher: Voucher, *, status: str, now: dt.datetime) -> None:
    """Refuse ending a voucher (``status`` "revoked" or "expired") that has ended already, or
    expiring one whose time has not come (``vouchers.end_voucher``)."""
    if voucher.status not in ENDABLE or (status == "expired" and voucher.status != "active"):
        raise Refused("voucher-ended", N_("This voucher has already ended."))
    if status == "expired" and voucher.expires_at > now:
        raise Refused("voucher-not-expired", N_("This voucher has not expired yet."))


def check_reversible(redemption: Redemption | None, *, provider_id: int | None, scheme: Scheme | None = None,
                     now: dt.datetime) -> Redemption:
    """Refuse reversing a redemption that does not exist (or, for a provider, is not its own),
    that a provider may no longer reverse (the scheme's reversal period; the municipality,
    ``provider_id=None``, may at any time), or that was reversed already
    (``vouchers.reverse_redemption``). Returns the redemption."""
    if redemption is None or (provider_id is not None and redemption.provider_id != provider_id):
        raise NotFound("redemption-not-found", N_("There is no such redemption."))
    if provider_id is not None:
        if scheme is None:
            raise TypeError("a provider's reversal is checked against its scheme's reversal period")
        if now > redemption.created_at + dt.timedelta(days=scheme.reversal_days):
            raise Refused("reversal-period-over", N_("The period for reversing this redemption has ended."))
    if redemption.reversed_at is not None:
        raise Refused("already-reversed", N_("This redemption has already been reversed."))
    return redemption


def check_closable(scheme: Scheme | None) -> Scheme:
    """Refuse closing a scheme that does not exist or is closed already
    (``interventions.close_scheme``). Returns the scheme."""
    if scheme is None:
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    if scheme.closed_at is not None:
        raise Refused("scheme-already-closed", N_("This scheme has already been closed."))
    return scheme


#: Application statuses the trade register (or intake) left undecided: staff decide them.
UNDECIDED = ("registry_pending", "received")


def check_undecided(application: Application | None) -> Application:
    """Refuse deciding an application that does not exist or is decided already
    (``interventions.decide_application``). Returns the application."""
    if application is None:
        raise NotFound("application-not-found", N_("There is no application with this number."))
    if application.status not in UNDECIDED:
        raise Refused("application-decided", N_("This application has already been decided."))
    return application


def check_pending(enrolment: Enrolment | None) -> Enrolment:
    """Refuse deciding a provider's request to take part that does not exist or is decided
    already (``interventions.decide_provider``). Returns the enrolment."""
    if enrolment is None:
        raise NotFound("enrolment-not-found", N_("There is no such provider application."))
    if enrolment.status != "pending":
        raise Refused("enrolment-decided", N_("This provider application has already been decided."))
    return enrolment


def movable(budget: Any, reserve: Any, committed: Any, amount: Any) -> Any:
    """Whether ``amount`` (negative: back to the budget) may move from the budget to the reserve:
    committed money stays in the budget and the reserve never goes below zero. Given the columns
    it is the WHERE clause of ``schemes.move_to_reserve``; given a row's numbers, the preview's
    answer."""
    return (budget - amount >= committed) & (reserve + amount >= 0)
