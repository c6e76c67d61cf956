"""What every HTML page shares, whoever it is for: headers for pages that carry codes or personal
data, the client's address, safe return paths, and errors placed next to their field."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request
from litestar.response import Redirect

from .errors import DomainError
from .problems import problem_body

__all__ = ("NO_STORE", "client_ip", "errors_of", "login_redirect", "safe_next")

#: Pages and answers that show a voucher code or personal data: never cached, never sent on as Referer.
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def client_ip(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def safe_next(value: str | None, default: str, *, prefix: str = "/") -> str:
    """A return path on this site under ``prefix``: never another host (``//evil``) or a scheme."""
    if value and value.startswith(prefix) and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def login_redirect(request: Request[Any, Any, Any], login_path: str, home: str) -> Redirect:
    """Signed out: to the sign-in page, and back to this page afterwards."""
    target = request.url.path if request.method == "GET" else home
    return Redirect(f"{login_path}?next={quote(target)}", status_code=303, headers=NO_STORE)


def errors_of(exc: DomainError, fields: dict[str, str] | None = None) -> dict[str, str]:
    """The translated message keyed by the form field it belongs to (``form`` for the whole form)."""
    field = (fields or {}).get(exc.field or "", exc.field) or "form"
    return {field: problem_body(exc)["title"]}
