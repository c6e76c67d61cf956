"""Who is asking: one principal per request, from a bearer token (systems) or the signed
session cookie (people), and one way of guarding routes by role."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import select

from . import oidc
from .models import ApiToken, ProviderUser
from .models_admin import StaffUser
from .providers import authenticate_token
from .runtime import Runtime

__all__ = ("STAFF_SSO_TOKEN", "AuthMiddleware", "Principal", "requires", "sign_in", "sign_out")

STAFF_SSO_TOKEN = "staff_sso_token"
"""Session key of the access token of a staff member signed in through the municipality's own
provider: with it the provider is asked at every request whether the account still works."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in party. ``role`` is what guards check."""

    kind: str
    """``token``, ``provider-staff``, ``staff`` or ``entrepreneur``."""
    role: str
    """``coach`` and ``admin`` for tokens; staff and entrepreneur roles for people."""
    subject_id: int
    name: str
    provider_id: int | None = None
    voucher_id: int | None = None
    generation: int = 0
    """A provider account's ``session_generation`` at sign-in; a reset raises it, which ends this session."""

    @property
    def actor(self) -> str:
        """How this party is named in records: never a personal detail, only kind and id."""
        return f"{self.kind}:{self.subject_id}"


def _from_token(token: ApiToken) -> Principal:
    return Principal(kind="token", role=token.role, subject_id=token.id, name=token.name, provider_id=token.provider_id)


class AuthMiddleware(ASGIMiddleware):
    """Sets ``scope["user"]`` to a :class:`Principal` or None. Guards decide what is allowed.

    Valid tokens are remembered for ``TOKEN_CACHE_SECONDS`` per process, which saves a database
    round trip on every API call; a revoked token therefore stops working within that time.
    """

    TOKEN_CACHE_SECONDS = 15.0
    TOKEN_CACHE_SIZE = 4096

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._tokens: dict[bytes, tuple[float, Principal]] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        scope["user"] = await self._principal(scope)
        await next_app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return None
                return await self._token_principal(token.strip())
        if scope["path"].startswith("/api/"):
            # The API takes bearer tokens only, so a browser's cookie can never be used
            # against it from another site (the API has no CSRF token).
            return None
        session_data = scope.get("session") or {}
        principal = session_data.get("principal") if isinstance(session_data, dict) else None
        if isinstance(principal, dict):
            found = await self._session_principal(principal)
            sso_token = session_data.get(STAFF_SSO_TOKEN)
            if found is not None and found.kind == "staff" and isinstance(sso_token, str):
                # Signed in at the municipality's provider: an account disabled there is refused now.
                provider = oidc.staff(self.rt.settings)
                if provider is None or not await oidc.still_signed_in(provider, sso_token):
                    return None
            return found
        return None

    async def _session_principal(self, data: dict[str, Any]) -> Principal | None:
        """The person in the session cookie, if their account may still be used: a disabled
        staff account loses access at its next request, not when the cookie expires."""
        try:
            principal = Principal(**data)
        except TypeError:
            return None
        if principal.kind == "provider-staff":
            async with self.rt.reader() as session:
                row = (
                    await session.execute(
                        select(ProviderUser.provider_id, ProviderUser.disabled_at,
                               ProviderUser.session_generation).where(ProviderUser.id == principal.subject_id)
                    )
                ).first()
            if (row is None or row.disabled_at is not None or row.provider_id != principal.provider_id
                    or row.session_generation != principal.generation):
                return None
        elif principal.kind == "staff":
            async with self.rt.reader() as session:
                row = (
                    await session.execute(
                        select(StaffUser.role, StaffUser.disabled_at).where(StaffUser.id == principal.subject_id)
                    )
                ).first()
            # A changed role takes effect at once too: sign in again for the new one.
            if row is None or row.disabled_at is not None or row.role != principal.role:
                return None
        return principal

    async def _token_principal(self, token: str) -> Principal:
        key = self.rt.token_hash(token)
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.rt.reader() as session:
            row = await authenticate_token(session, self.rt, token)
        if row is None:
            self._tokens.pop(key, None)
            raise NotAuthorizedException("invalid token")
        principal = _from_token(row)
        if len(self._tokens) >= self.TOKEN_CACHE_SIZE:
            self._tokens.clear()
        self._tokens[key] = (now + self.TOKEN_CACHE_SECONDS, principal)
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


def sign_in(request: Any, principal: Principal) -> None:
    """Start a session for ``principal`` (every journey signs in through here)."""
    request.clear_session()
    request.set_session({"principal": asdict(principal)})


def sign_out(request: Any) -> None:
    request.clear_session()
