"""What the municipality's pages share: who is signed in, what their role allows, errors next
to fields, the audit context of each request."""

from __future__ import annotations

import base64
from typing import Any

from litestar import Request, Response
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import ASGIMiddleware
from litestar.response import Redirect, Template
from litestar.types import ASGIApp, Receive, Scope, Send

from .. import audit, i18n, spreadsheet
from ..auth import Principal
from ..errors import DomainError
from .. import web
from ..problems import status_of
from ..qr import render_svg
from .. import reports
from . import roles
from ..web import NO_STORE, client_ip

__all__ = ("NO_STORE", "AuditContextMiddleware", "client_ip", "errors_of", "page", "qr_data_uri", "report_csv_response",
           "safe_next", "status", "to_login", "who")



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
    return web.errors_of(exc)


def status(exc: DomainError) -> int:
    return status_of(exc)


def safe_next(value: str | None, default: str = "/beheer") -> str:
    return web.safe_next(value, default, prefix="/beheer")


def to_login(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Redirect:
    return web.login_redirect(request, "/beheer/inloggen", "/beheer")


def qr_data_uri(text: str) -> str:
    """An SVG QR code as a data: URI (allowed by the pages' Content-Security-Policy). Not cached:
    it carries a secret."""
    return "data:image/svg+xml;base64," + base64.b64encode(render_svg(text)).decode()


def report_csv_response(report: reports.CouncilReport, slug: str) -> Response[bytes]:
    """The council report as a CSV download with headings in the reader's language (the pages
    and the API serve the same file)."""
    labels = {"section": i18n.gettext("section"), "item": i18n.gettext("item"),
              "euros": i18n.gettext("amount in euros"), "count": i18n.gettext("count")}
    return Response(reports.report_csv(report, labels), media_type=spreadsheet.MEDIA_TYPE,
                    headers={**NO_STORE, "Content-Disposition": f'attachment; filename="rapportage-{slug}.csv"'})
