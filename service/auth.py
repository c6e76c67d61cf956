"""Who is asking: one principal per request, from a bearer token (systems) or the session
cookie (people), and one way of guarding routes by role.

Every sign-in calls :func:`start_session` and every sign-out :func:`end_session`. Both only note
what is to happen; :class:`AuthMiddleware` does it when the answer starts (writing the session's
row and the cookie), so that they stay plain calls that any sign-in journey can make. The cookie
carries only a random id (``service.sessions``), is HttpOnly, SameSite=Lax, Secure and
``__Host-`` prefixed on https, and is sent only when it changes: at sign-in, at sign-out, and once
to remove a cookie whose session has ended.

A staff member signed in through the municipality's own provider (``Principal.via == "sso"``)
is checked there too, after the session's lookup: the provider's userinfo endpoint must still
accept the session's access token, so an account disabled at the provider is refused at its next
request here.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from . import oidc, sessions
from .db import transaction
from .models import ApiToken
from .providers import authenticate_token
from .revocations import Revocations
from .runtime import Runtime
from .sessions import Principal

__all__ = ("AuthMiddleware", "Principal", "end_session", "requires", "sign_in", "sign_out", "start_session")

# What a request's handler asked for (see start_session), and the session id its cookie carried.
_CHANGE = "vouchers_session_change"
_SESSION_ID = "vouchers_session_id"


def _from_token(token: ApiToken) -> Principal:
    return Principal(kind="token", role=token.role, subject_id=token.id, name=token.name, provider_id=token.provider_id)


class AuthMiddleware(ASGIMiddleware):
    """Sets ``scope["user"]`` to a :class:`Principal` or None. Guards decide what is allowed.

    Valid tokens are remembered per process, which saves a database round trip on every API
    call. A revocation is heard at once on PostgreSQL (``revocations``), by every process on every
    host, and forgets them; a token is checked again after ``TOKEN_CACHE_SECONDS`` in any case.
    Sessions are never remembered: each request reads its session in one statement.
    """

    TOKEN_CACHE_SECONDS = 15.0
    TOKEN_CACHE_SIZE = 4096

    def __init__(self, rt: Runtime, revocations: Revocations) -> None:
        self.rt = rt
        self.revocations = revocations
        self._tokens: dict[bytes, tuple[float, int, Principal]] = {}
        settings = rt.settings
        self._cookie = settings.session_cookie
        self._cookie_attributes = "; Path=/; HttpOnly; SameSite=Lax" + (
            "; Secure" if settings.base_url.startswith("https://") else "")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = scope.get("headers", ())
        for name, value in headers:
            if name == b"authorization":
                scope["user"] = await self._bearer_principal(value)
                await next_app(scope, receive, send)
                return
        if scope["path"].startswith(("/api/", "/static/")):
            # The API takes bearer tokens only, so a browser's cookie can never be used
            # against it from another site (the API has no CSRF token). Static files need nobody.
            scope["user"] = None
            await next_app(scope, receive, send)
            return
        session_id = _cookie(headers, self._cookie)
        principal = await sessions.lookup(self.rt, session_id) if session_id else None
        if principal is not None and principal.via == "sso" and not await self._still_at_provider(principal):
            principal = None
        scope["user"] = principal
        scope[_SESSION_ID] = session_id  # type: ignore[literal-required]
        # A cookie whose session has ended is removed, once; otherwise the answer carries no
        # cookie unless the handler signs someone in or out.
        stale = session_id is not None and principal is None

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = await self._apply(scope, message["status"], stale)
                if cookie is not None:
                    message["headers"] = [*message.get("headers", ()), (b"set-cookie", cookie.encode("latin-1"))]
            await send(message)

        await next_app(scope, receive, send_with_session)

    async def _apply(self, scope: Scope, status: int, stale: bool) -> str | None:
        """Carry out what the handler asked (start or end a session): the Set-Cookie to send."""
        change = scope.get(_CHANGE)  # type: ignore[call-overload]
        if change is None:
            return self._expired() if stale else None
        what, principal = change
        old_id = scope.get(_SESSION_ID)  # type: ignore[call-overload]
        current = scope.get("user")
        if what == "start" and status >= 400:  # a sign-in that failed after all starts nothing
            return None
        if what != "start" and not old_id:  # signing out a browser that had no session
            return None
        settings = self.rt.settings
        async with transaction(self.rt.sessionmaker) as session:
            if what == "end-everywhere" and isinstance(current, Principal) and current.kind in sessions.KINDS:
                await sessions.revoke_all(session, current.kind, current.subject_id)
            elif old_id:
                await sessions.revoke(session, settings, old_id)
            if what == "start":
                new_id = await sessions.create(session, settings, principal)
        if what != "start":
            return self._expired() if old_id else None
        _idle, absolute = settings.session_timeouts(principal.kind)
        return f"{self._cookie}={new_id}; Max-Age={absolute}{self._cookie_attributes}"

    async def _still_at_provider(self, principal: Principal) -> bool:
        """Whether the municipality's provider still accepts this staff member's sign-in."""
        provider = oidc.staff(self.rt.settings)
        return provider is not None and await oidc.still_signed_in(provider, principal.sso_token or "")

    def _expired(self) -> str:
        return f"{self._cookie}=; Max-Age=0{self._cookie_attributes}"

    async def _bearer_principal(self, value: bytes) -> Principal | None:
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return await self._token_principal(token.strip())

    async def _token_principal(self, token: str) -> Principal:
        key = self.rt.token_hash(token)
        now = time.monotonic()
        # Read before the database is: a revocation heard while it is asked makes the answer old.
        generation = self.revocations.current()
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > now and cached[1] == generation:
            return cached[2]
        async with self.rt.reader() as session:
            row = await authenticate_token(session, self.rt, token)
        if row is None:
            self._tokens.pop(key, None)
            raise NotAuthorizedException("invalid token")
        principal = _from_token(row)
        if generation is None:  # not hearing revocations: remember nothing
            return principal
        if len(self._tokens) >= self.TOKEN_CACHE_SIZE:
            self._tokens.clear()
        self._tokens[key] = (now + self.TOKEN_CACHE_SECONDS, generation, principal)
        return principal


def requires(*roles: str) -> Any:
    """A guard letting through principals with one of ``roles``. Async on purpose: Litestar runs
    a plain function guard in a worker thread, a hand-off per request for a dictionary lookup."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        if principal is None:
            raise NotAuthorizedException("sign in first")
        if principal.role not in roles:
            raise PermissionDeniedException("not allowed for this role")

    guard.__name__ = f"requires_{'_or_'.join(roles)}"
    return guard


def _cookie(headers: Any, name: str) -> str | None:
    """The value of cookie ``name`` in the request's Cookie headers."""
    wanted = name.encode("latin-1") + b"="
    for header, value in headers:
        if header == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(wanted):
                    found = part[len(wanted):].decode("latin-1").strip('"')
                    return found or None
    return None


def start_session(request: Any, principal: Principal) -> None:
    """Sign ``principal`` in: every sign-in journey ends here. A new session with a new random
    id replaces whatever session this browser had (so an id planted before sign-in is useless)."""
    request.scope[_CHANGE] = ("start", principal)


def end_session(request: Any, *, everywhere: bool = False) -> None:
    """Sign out this browser; with ``everywhere``, every session of the same account as well."""
    request.scope[_CHANGE] = ("end-everywhere" if everywhere else "end", None)


# The names the journeys used before sessions moved to the server.
sign_in = start_session
sign_out = end_session
