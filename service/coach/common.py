"""What every coach page shares: headers, the signed-in principal, errors next to fields, and
reading amounts the way people type them."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException
from litestar.response import Redirect, Template

from ..auth import Principal
from ..errors import N_, DomainError, InvalidInput
from .. import web
from ..problems import status_of
from ..web import NO_STORE, client_ip

__all__ = (
    "CATEGORY_LABELS",
    "NO_STORE",
    "client_ip",
    "errors_of",
    "page",
    "parse_euros",
    "principal",
    "safe_next",
    "to_login",
)


CATEGORY_LABELS = {
    "coaching": N_("Coaching"),
    "retraining": N_("Retraining or further training"),
    "financial_advice": N_("Financial advice"),
}

#: Domain error fields → the form field the message is shown next to.
_FIELDS = {"amount_cents": "amount", "price_cents": "price"}

_AMOUNT = re.compile(r"^(\d{1,3}(?:([.,])\d{3})*|\d+)(?:([.,])(\d{1,2}))?$")


def page(template: str, *, status: int = 200, **context: Any) -> Template:
    return Template(template, context=context, status_code=status, headers=NO_STORE)


def principal(request: Request[Any, Any, Any]) -> Principal:
    return request.scope["user"]  # the controller's guard has checked it


def errors_of(exc: DomainError) -> dict[str, str]:
    return web.errors_of(exc, _FIELDS)


def status(exc: DomainError) -> int:
    return status_of(exc)


def parse_euros(text: str, field: str = "amount") -> int:
    """``"125,50"``, ``"125.50"``, ``"€ 1.250,50"`` or ``"1250"`` → cents, with integers only.

    One or two digits after the last separator make it the decimal separator; groups of three
    after a separator are thousands (Dutch ``1.250`` is twelve hundred and fifty euro).
    """
    cleaned = text.replace("€", "").replace("EUR", "").replace(" ", "").replace("\u00a0", "").strip()
    match = _AMOUNT.match(cleaned)
    if not cleaned or match is None or (match.group(2) and match.group(3) == match.group(2)):
        raise InvalidInput("amount-invalid", N_("Type an amount in euros, for example 125,50."), field=field)
    whole = int(re.sub(r"[.,]", "", match.group(1)))
    cents = whole * 100 + int((match.group(4) or "0").ljust(2, "0"))
    if cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field=field)
    if cents > 100_000_000:
        raise InvalidInput("amount-too-large", N_("This amount is too large."), field=field)
    return cents


def safe_next(value: str | None, default: str = "/coach") -> str:
    return web.safe_next(value, default)


def to_login(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Redirect:
    return web.login_redirect(request, "/coach/login", "/coach")
