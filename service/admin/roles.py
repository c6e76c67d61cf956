"""Which staff role may do what: the one table every guard, page and test reads.

``beheerder`` may do everything; ``beoordelaar`` reviews applications, providers and reported
redemptions and intervenes on vouchers; ``financieel`` handles money (reserve, reports);
``lezer`` reads. Applicants' personal data is shown only to roles whose work needs it.
"""

from __future__ import annotations

from ..models_admin import STAFF_ROLES

__all__ = ("ADMIN", "ALL", "AUDIT", "FINANCE", "PERSONAL", "REPORTS", "REVIEW", "can")

ALL = STAFF_ROLES
PERSONAL = ("beheerder", "beoordelaar", "lezer")
"""See work queues and vouchers (names, e-mail addresses)."""
REVIEW = ("beheerder", "beoordelaar")
"""Decide applications, providers and reports; revoke, extend, reverse."""
FINANCE = ("beheerder", "financieel")
"""Move money between budget and reserve."""
REPORTS = ("beheerder", "financieel", "lezer")
AUDIT = ("beheerder", "lezer")
ADMIN = ("beheerder",)
"""Close a scheme, export a data subject's records."""


def can(role: str | None, allowed: tuple[str, ...]) -> bool:
    return role in allowed
