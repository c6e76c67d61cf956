"""Domain errors: what went wrong in the scheme's own words. No web imports here; the API and
the pages turn them into answers in one place (``service.web.problems``).

Each error has a stable ``code`` (used in the problem ``type`` and in tests) and a message that
is an English msgid, translated when it is shown.
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "DomainError",
    "NotFound",
    "Refused",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "TooManyAttempts",
    "N_",
)


def N_(message: str) -> str:
    """Mark a message for translation without translating it yet."""
    return message


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    code: str = "error"
    message: str = N_("Something went wrong.")

    def __init__(self, code: str | None = None, message: str | None = None, /, **params: Any) -> None:
        self.code = code or self.code
        self.message = message or self.message
        self.params = params
        self.field: str | None = params.pop("field", None)
        super().__init__(self.message % params if params else self.message)


class InvalidInput(DomainError):
    """The request itself is wrong (a field, a format)."""

    code = "invalid-input"


class NotFound(DomainError):
    code = "not-found"
    message = N_("Not found.")


class Refused(DomainError):
    """The request is well-formed but the scheme's rules say no (expired, over balance, …)."""

    code = "refused"


class Conflict(DomainError):
    """The request clashes with the current state (duplicate, in flight)."""

    code = "conflict"


class Forbidden(DomainError):
    code = "forbidden"
    message = N_("You may not do this.")


class TooManyAttempts(DomainError):
    code = "too-many-attempts"
    message = N_("Too many attempts. Please wait %(minutes)s minutes and try again.")


#: Why an application was rejected, by reason code (stored on the application).
REJECTION_REASONS = {
    "too-many-employees": N_("More people work at your firm than the scheme allows."),
    "outside-area": N_("Your business is not established in the area of the scheme."),
    "not-in-register": N_("The KvK number is not in the trade register."),
    "not-active": N_("The firm is no longer registered as active in the trade register."),
    "already-has-voucher": N_("This KvK number already has a voucher in this scheme."),
}
