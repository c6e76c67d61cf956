"""What every HTML page shares, whoever it is for: headers for pages that carry codes or personal
data, the client's address, safe return paths, errors placed next to their field, and short-lived
signed cookies for what a sign-in journey must remember before anyone is signed in."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import msgspec
from litestar import Request
from litestar.datastructures import Cookie
from litestar.middleware import ASGIMiddleware
from litestar.response import Redirect
from litestar.types import ASGIApp, Receive, Scope, Send

from .errors import DomainError
from .problems import problem_body

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ("NO_STORE", "ForwardedClientMiddleware", "client_ip", "cleared_cookie", "errors_of", "login_redirect",
           "read_signed_cookie", "safe_next", "signed_cookie")

#: Pages and answers that show a voucher code or personal data: never cached, never sent on as Referer.
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def client_ip(request: Request[Any, Any, Any]) -> str:
    """The client's address: the connection's, or the one a trusted proxy forwarded
    (``ForwardedClientMiddleware``)."""
    return request.client.host if request.client else "unknown"


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, an IPv4 address written in IPv6 (``::ffff:192.0.2.1``, as a dual-stack
    socket reports IPv4 clients) as the IPv4 address it is; None when it is no address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _within(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Networks) -> bool:
    return any(ip in network for network in networks)


class ForwardedClientMiddleware(ASGIMiddleware):
    """Behind reverse proxies, the client is who the proxies saw. When the connection comes from a
    trusted proxy, the client becomes the right-most address in ``X-Forwarded-For`` that is not a
    trusted proxy: the one the nearest proxy appended itself. Addresses further left were sent by
    the client and could be anything, so they are never used; nor is a value that is no address."""

    def __init__(self, trusted: Networks) -> None:
        self.trusted = trusted

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        peer = scope.get("client")
        peer_ip = _address(peer[0]) if peer else None
        if peer_ip is not None and _within(peer_ip, self.trusted):
            hops = [hop.strip() for name, value in scope.get("headers", ()) if name.lower() == b"x-forwarded-for"
                    for hop in value.decode("latin-1").split(",") if hop.strip()]
            for hop in reversed(hops):
                ip = _address(hop)
                if ip is None:
                    break  # not an address: keep the proxy's own
                if not _within(ip, self.trusted):
                    scope["client"] = (str(ip), 0)
                    break
        await next_app(scope, receive, send)


def head_as_get(app: ASGIApp) -> ASGIApp:
    """Answer HEAD as GET without the body (RFC 9110 9.3.2), for every page. Litestar routes HEAD only
    to handlers declared for it and answers 405 otherwise; this runs before its routing."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await app(scope, receive, send)
            return
        scope["method"] = "GET"

        async def send_headers_only(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await app(scope, receive, send_headers_only)

    return handle


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


T = TypeVar("T")


def signed_cookie(rt: Runtime, name: str, value: Any, *, path: str, max_age: int) -> Cookie:
    """A cookie holding ``value`` (anything msgspec encodes) for ``max_age`` seconds, signed by the
    server for this cookie's name, so that it cannot be forged, altered or passed off as another
    cookie. HttpOnly, SameSite=Lax, Secure on https, only sent under ``path``. Not a session: it
    signs nobody in; it only carries a sign-in journey from one request to the next."""
    encoded = base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")
    return _cookie(rt, name, rt.sign(name, encoded, max_age), path=path, max_age=max_age)


def cleared_cookie(rt: Runtime, name: str, *, path: str) -> Cookie:
    """Removes a cookie of :func:`signed_cookie` (same name and path)."""
    return _cookie(rt, name, "", path=path, max_age=0)


def read_signed_cookie(request: Request[Any, Any, Any], rt: Runtime, name: str, type_: type[T]) -> T | None:
    """The value of a :func:`signed_cookie` this browser sent, or None when it is absent, forged,
    expired or not a ``type_``."""
    token = request.cookies.get(name)
    encoded = rt.unsign(name, token) if token else None
    if encoded is None:
        return None
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)), type=type_)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _cookie(rt: Runtime, name: str, value: str, *, path: str, max_age: int) -> Cookie:
    return Cookie(key=name, value=value, path=path, max_age=max_age, httponly=True, samesite="lax",
                  secure=rt.settings.base_url.startswith("https://"))
