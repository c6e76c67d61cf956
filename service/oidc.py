"""Signing in through an OpenID Connect provider: eHerkenning through a broker for
entrepreneurs, the municipality's own provider for staff.

The authorization code flow with PKCE, ``state`` and ``nonce`` (authlib's httpx client); the ID
token's signature is checked against the provider's JWKS and its claims (issuer, audience,
nonce, expiry with a configured clock skew) with authlib's ``CodeIDToken`` rules. Everything
that can go wrong becomes a :class:`LoginFailed` with a reason code, which the pages turn into
a page telling the person what to do and a log line without personal data.

No web imports: the pages keep what :func:`begin` returns in a short-lived signed cookie (nobody
is signed in yet) and hand it back to :func:`finish` with the query of the provider's redirect.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    MissingKeyError,
)
from joserfc.jwk import KeySet, import_key

from .levels import LEVELS, level_at_least, level_of

__all__ = ("LEVELS", "LoginFailed", "Pending", "Provider", "SignedIn", "begin", "eherkenning", "finish",
           "level_at_least", "level_of", "log_refusal", "logout_url", "staff", "still_signed_in")

log = logging.getLogger(__name__)

DISCOVERY_SECONDS = 300.0
"""How long a provider's discovery document and keys are kept per process; an unknown key id
makes the keys be fetched again at once (the provider has rotated them)."""


def eherkenning(settings: Any) -> Provider | None:
    """The eHerkenning broker the settings name, or None when there is none."""
    if not settings.eherkenning_issuer:
        return None
    return Provider(issuer=settings.eherkenning_issuer, client_id=settings.eherkenning_client_id,
                    client_secret=settings.eherkenning_client_secret,
                    private_key_file=settings.eherkenning_private_key_file,
                    timeout_seconds=settings.oidc_timeout_seconds, clock_skew_seconds=settings.oidc_clock_skew_seconds)


def staff(settings: Any) -> Provider | None:
    """The municipality's own provider for staff, or None when there is none."""
    if not settings.staff_oidc_issuer:
        return None
    return Provider(issuer=settings.staff_oidc_issuer, client_id=settings.staff_oidc_client_id,
                    client_secret=settings.staff_oidc_client_secret, scope="openid email profile",
                    timeout_seconds=settings.oidc_timeout_seconds, clock_skew_seconds=settings.oidc_clock_skew_seconds)


class LoginFailed(Exception):
    """Signing in did not prove anything. ``reason`` is one of: ``unavailable`` (the provider is
    down or too slow), ``cancelled`` (the person stopped, or the provider sent an error),
    ``state`` (the answer does not belong to a sign-in this browser started), ``unverified``
    (the ID token's signature, issuer, audience, nonce or expiry is wrong: ``detail`` says
    which), ``level`` (the level of assurance is below what is required), ``no-kvk`` (no KvK
    number in the token), ``not-allowed`` (staff: no group that maps to a role)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    """Where and as whom to sign in (from the settings)."""

    issuer: str
    client_id: str
    client_secret: str | None = None
    private_key_file: str | None = None
    """A PEM or JWK file with the client's private key: ``private_key_jwt`` instead of the secret."""
    scope: str = "openid"
    timeout_seconds: float = 10.0
    clock_skew_seconds: int = 60


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """What the browser keeps (signed by the server) between being sent to the provider and its return."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    purpose: str
    """What the sign-in is for: ``apply:<slug>``, ``voucher`` or ``staff``."""
    started_at: float
    next: str = ""


class SignedIn(msgspec.Struct, frozen=True, kw_only=True):
    """A verified ID token's claims, and the access token (for userinfo later)."""

    claims: dict[str, Any]
    access_token: str | None


class _Metadata(msgspec.Struct, frozen=True):
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None


_cache: dict[str, tuple[float, _Metadata, KeySet | None]] = {}


def _http(provider: Provider) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=provider.timeout_seconds, follow_redirects=False)


async def metadata(provider: Provider) -> _Metadata:
    """The provider's discovery document (cached); ``unavailable`` when it cannot be read."""
    cached = _cache.get(provider.issuer)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        async with _http(provider) as client:
            response = await client.get(url)
        response.raise_for_status()
        found = msgspec.json.decode(response.content, type=_Metadata)
    except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise LoginFailed("unavailable", f"discovery: {type(exc).__name__}") from None
    if found.issuer.rstrip("/") != provider.issuer.rstrip("/"):
        raise LoginFailed("unverified", "discovery issuer")
    _cache[provider.issuer] = (time.monotonic() + DISCOVERY_SECONDS, found, None)
    return found


async def _keys(provider: Provider, meta: _Metadata, *, fresh: bool = False) -> KeySet:
    cached = _cache.get(provider.issuer)
    if not fresh and cached is not None and cached[2] is not None and cached[0] > time.monotonic():
        return cached[2]
    try:
        async with _http(provider) as client:
            response = await client.get(meta.jwks_uri)
        response.raise_for_status()
        keys = KeySet.import_key_set(response.json())
    except (httpx.HTTPError, ValueError, JoseError) as exc:
        raise LoginFailed("unavailable", f"jwks: {type(exc).__name__}") from None
    _cache[provider.issuer] = (time.monotonic() + DISCOVERY_SECONDS, meta, keys)
    return keys


def _private_key(path: Path) -> Any:
    """A JWK (JSON) or PEM file's key; PEM may hold an RSA or an EC key."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        return import_key(json.loads(text))
    try:
        return import_key(text, "RSA")
    except (ValueError, JoseError):
        return import_key(text, "EC")


def _client_auth(provider: Provider, token_endpoint: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(headers, form fields)`` that authenticate this client at the token endpoint: a signed
    assertion (``private_key_jwt``, RFC 7523) when a private key is configured, else the secret
    (``client_secret_basic``)."""
    if provider.private_key_file:
        key = _private_key(Path(provider.private_key_file))
        assertion = private_key_jwt_sign(key, provider.client_id, token_endpoint,
                                         alg="ES256" if key.key_type == "EC" else "RS256")
        return {}, {"client_id": provider.client_id, "client_assertion": assertion,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    # RFC 6749 2.3.1: both form-encoded before they are joined.
    pair = f"{quote(provider.client_id, safe='')}:{quote(provider.client_secret or '', safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}, {}


async def begin(provider: Provider, redirect_uri: str, purpose: str, *, acr: str | None = None,
                next_: str = "", ui_locales: str | None = None) -> tuple[str, Pending]:
    """The provider's address to send the person to, and what to keep until they return.
    ``ui_locales`` asks the provider to show its pages in the person's language."""
    meta = await metadata(provider)
    pending = Pending(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
                      verifier=secrets.token_urlsafe(48), redirect_uri=redirect_uri, purpose=purpose,
                      started_at=time.time(), next=next_)
    url = prepare_grant_uri(
        meta.authorization_endpoint, provider.client_id, "code", redirect_uri=redirect_uri, scope=provider.scope,
        state=pending.state, nonce=pending.nonce, code_challenge=create_s256_code_challenge(pending.verifier),
        code_challenge_method="S256", acr_values=acr, ui_locales=ui_locales)
    return url, pending


PENDING_SECONDS = 30 * 60
"""How long a sign-in may take at the provider."""


async def finish(provider: Provider, pending: Pending | None, query: dict[str, str]) -> SignedIn:
    """Check the provider's redirect (``state``), exchange the code (with the PKCE verifier) and
    verify the ID token. Raises :class:`LoginFailed`."""
    if pending is None or time.time() - pending.started_at > PENDING_SECONDS:
        raise LoginFailed("state", "no sign-in pending")
    if not hmac.compare_digest(query.get("state", ""), pending.state):
        raise LoginFailed("state", "state differs")
    if "error" in query or not query.get("code"):
        raise LoginFailed("cancelled", f"provider error: {query.get('error', 'no code')[:40]}")
    meta = await metadata(provider)
    headers, auth_fields = _client_auth(provider, meta.token_endpoint)
    body = prepare_token_request("authorization_code", redirect_uri=pending.redirect_uri, code=query["code"],
                                 code_verifier=pending.verifier, **auth_fields)
    try:
        async with _http(provider) as client:
            response = await client.post(meta.token_endpoint, content=body, headers={
                **headers, "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        token = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    except httpx.TimeoutException:
        raise LoginFailed("unavailable", "token endpoint timed out") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginFailed("unavailable", f"token endpoint: {type(exc).__name__}") from None
    if response.status_code != 200 or not isinstance(token, dict):
        error = token.get("error") if isinstance(token, dict) else None
        raise LoginFailed("cancelled", f"token endpoint refused: {str(error or response.status_code)[:40]}")
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise LoginFailed("unverified", "no id_token")
    claims = await _verified(provider, meta, id_token, pending.nonce, token.get("access_token"))
    return SignedIn(claims=claims, access_token=token.get("access_token"))


async def _verified(provider: Provider, meta: _Metadata, id_token: str, nonce: str,
                    access_token: str | None) -> dict[str, Any]:
    keys = await _keys(provider, meta)
    try:
        try:
            decoded = jwt.decode(id_token, keys, algorithms=["RS256", "PS256", "ES256"])
        except (InvalidKeyIdError, MissingKeyError):
            # Perhaps rotated at the provider: read its keys once more.
            decoded = jwt.decode(id_token, await _keys(provider, meta, fresh=True),
                                 algorithms=["RS256", "PS256", "ES256"])
    except (InvalidKeyIdError, MissingKeyError):
        raise LoginFailed("unverified", "unknown key id") from None
    except BadSignatureError:
        raise LoginFailed("unverified", "bad signature") from None
    except (JoseError, ValueError) as exc:
        raise LoginFailed("unverified", f"not a signed token: {type(exc).__name__}") from None
    claims = CodeIDToken(decoded.claims, decoded.header, options={
        "iss": {"essential": True, "value": meta.issuer},
        "aud": {"essential": True, "value": provider.client_id},
    }, params={"nonce": nonce, "client_id": provider.client_id, "access_token": access_token})
    try:
        claims.validate(leeway=provider.clock_skew_seconds)
    except ExpiredTokenError:
        raise LoginFailed("unverified", "expired") from None
    except ClaimError as exc:
        raise LoginFailed("unverified", f"claim {exc.claim}") from None
    except JoseError as exc:
        raise LoginFailed("unverified", f"claims: {type(exc).__name__}") from None
    return dict(claims)


async def logout_url(provider: Provider, post_logout_redirect_uri: str) -> str | None:
    """The provider's end-session address (RP-initiated logout) to send the browser to, or None
    when the provider has none or cannot be reached (the session here has ended either way)."""
    try:
        meta = await metadata(provider)
    except LoginFailed:
        return None
    if not meta.end_session_endpoint:
        return None
    return str(httpx.URL(meta.end_session_endpoint, params={
        "client_id": provider.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}))


async def still_signed_in(provider: Provider, access_token: str) -> bool:
    """Whether the provider still accepts this sign-in (its userinfo endpoint answers for the
    access token): an account disabled there is refused at its next request here."""
    try:
        meta = await metadata(provider)
        if not meta.userinfo_endpoint:
            return True
        async with _http(provider) as client:
            response = await client.get(meta.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"})
    except (LoginFailed, httpx.HTTPError):
        return False  # unknown counts as refused: the person can sign in again
    return response.status_code == 200


def log_refusal(event: str, failure: LoginFailed, request_id: str) -> None:
    """One line an operator can match with the reference the person quotes; no claims, no
    KvK number, no pseudonym: only what went wrong."""
    log.warning(msgspec.json.encode({"event": event, "reason": failure.reason, "detail": failure.detail,
                                     "request_id": request_id}).decode())
