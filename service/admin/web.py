"""What the municipality's pages share: who is signed in, what their role allows, errors next
to fields, the audit context of each request."""

from __future__ import annotations

import base64
import io
from typing import Any
from urllib.parse import quote

import qrcode
import qrcode.constants
from litestar import Request
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import ASGIMiddleware
from litestar.response import Redirect, Template
from litestar.types import ASGIApp, Receive, Scope, Send
from qrcode.image.svg import SvgPathImage

from .. import audit
from ..auth import Principal
from ..errors import DomainError
from ..problems import problem_body, status_of
from . import roles

__all__ = ("NO_STORE", "AuditContextMiddleware", "client_ip", "errors_of", "page", "qr_data_uri", "safe_next",
           "status", "to_login", "who")

#: Every page here shows personal data or money: never cached, never sent on as Referer.
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


class AuditContextMiddleware(ASGIMiddleware):
    """Names the actor (the signed-in principal, or ``anonymous``) and the client's address for
    the audit log, for everything this request changes. Runs after the auth middleware."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        principal = scope.get("user")
        client = scope.get("client")
        address = client[0] if client else ""
        audit.set_context(principal.actor if isinstance(principal, Principal) else "anonymous", address)
        await next_app(scope, receive, send)


def who(request: Request[Any, Any, Any]) -> Principal:
    return request.scope["user"]  # the guards have checked it


def page(request: Request[Any, Any, Any], template: str, *, status: int = 200, **context: Any) -> Template:
    principal = request.scope.get("user")
    role = principal.role if isinstance(principal, Principal) and principal.kind == "staff" else None
    allowed = {name: roles.can(role, getattr(roles, name)) for name in
               ("ALL", "PERSONAL", "REVIEW", "FINANCE", "REPORTS", "AUDIT", "ADMIN")}
    return Template(template, context={"who": principal if role else None, "allowed": allowed, "errors": {},
                                       "values": {}, **context}, status_code=status, headers=NO_STORE)


def errors_of(exc: DomainError) -> dict[str, str]:
    return {exc.field or "form": problem_body(exc)["title"]}


def status(exc: DomainError) -> int:
    return status_of(exc)


def safe_next(value: str | None, default: str = "/beheer") -> str:
    if value and value.startswith("/beheer") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def to_login(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Redirect:
    target = request.url.path if request.method == "GET" else "/beheer"
    return Redirect(f"/beheer/inloggen?next={quote(target)}", status_code=303, headers=NO_STORE)


def client_ip(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def qr_data_uri(text: str) -> str:
    """An SVG QR code as a data: URI (allowed by the pages' Content-Security-Policy). Not cached:
    it carries a secret."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    code.add_data(text)
    code.make(fit=True)
    buffer = io.BytesIO()
    code.make_image(image_factory=SvgPathImage).save(buffer)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()
