"""Signing in as municipality staff: password, then a TOTP code; and setting up an account
through its one-time link."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template

from .. import audit, i18n, municipality, oidc, ratelimit
from ..auth import Principal, end_session, start_session
from ..db import transaction
from ..errors import N_, DomainError
from ..municipality import StaffSignInRefused
from ..models_admin import StaffUser
from ..problems import login_failure_status, request_id_of
from ..runtime import Runtime
from ..web import cleared_cookie, read_signed_cookie, signed_cookie
from .web import NO_STORE, client_ip, errors_of, page, qr_data_uri, safe_next, status

__all__ = ("AdminSignInPages", "SIGN_IN_LIMIT", "SIGN_IN_WINDOW")

SIGN_IN_LIMIT = 30
"""Sign-in steps one IP address may try per window, on top of the per-account lock-out."""
SIGN_IN_WINDOW = 15 * 60
SSO_CALLBACK = "/beheer/inloggen/sso/terug"
SSO_PENDING_COOKIE = "vouchers_staff_sso_pending"
"""From the button to the provider's answer: the sign-in's ``state``, ``nonce`` and PKCE verifier
(an ``oidc.Pending``), signed by the server, only sent to ``SSO_PENDING_PATH``, removed when used."""
SSO_PENDING_PATH = "/beheer/inloggen/sso"
SSO_VIA = "sso"
"""``Principal.via`` of a session signed in at the municipality's provider."""
CODE_STEP_SECONDS = 300
"""How long the code step waits after a right password."""

Short = Annotated[str, msgspec.Meta(max_length=300)]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class LoginForm(msgspec.Struct, frozen=True, kw_only=True):
    email: Short = ""
    password: Short = ""
    next: Short = ""


class NextForm(msgspec.Struct, frozen=True, kw_only=True):
    next: Short = ""


class CodeForm(msgspec.Struct, frozen=True, kw_only=True):
    code: Short = ""


class SetupForm(msgspec.Struct, frozen=True, kw_only=True):
    password: Short = ""
    repeat: Short = ""
    code: Short = ""


PENDING_COOKIE = "vouchers_staff_pending"
"""Between the password and the code: which account gave the right password, and where to go
next, signed by the server and valid for ``CODE_STEP_SECONDS``. Not a session: it signs nobody in."""


def _pending(request: Request[Any, Any, Any], rt: Runtime) -> dict[str, Any] | None:
    token = request.cookies.get(PENDING_COOKIE)
    value = rt.unsign("staff-pending", token) if token else None
    if value is None:
        return None
    user_id, _, next_ = value.partition(":")
    try:
        return {"id": int(user_id), "next": base64.urlsafe_b64decode(next_ + "==").decode()}
    except (ValueError, binascii.Error):
        return None


def _b64(text: str) -> str:
    # Cookie values are safest without any characters a parser might unquote.
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _pending_cookie(rt: Runtime, value: str = "", max_age: int = 0) -> Cookie:
    return Cookie(key=PENDING_COOKIE, value=value, path="/beheer/inloggen", max_age=max_age, httponly=True,
                  samesite="lax", secure=rt.settings.base_url.startswith("https://"))


async def _limit(rt: Runtime, request: Request[Any, Any, Any]) -> None:
    async with transaction(rt.sessionmaker) as session:
        await ratelimit.check_limit(session, f"staff-sign-in:{client_ip(request)}", limit=SIGN_IN_LIMIT,
                                    window_seconds=SIGN_IN_WINDOW)


class AdminSignInPages(Controller):
    path = "/beheer"
    include_in_schema = False

    @get("/inloggen")
    async def login_form(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                         next_: Annotated[str | None, QueryParameter(name="next")] = None,
                         done: Annotated[str | None, QueryParameter(name="klaar")] = None) -> Template:
        return page(request, "admin/login.html", values={"next": safe_next(next_)}, done=done,
                    sso=oidc.staff(rt.settings) is not None)

    # --- single sign-on through the municipality's own provider ----------------------------

    @post("/inloggen/sso")
    async def sso_start(self, request: Request[Any, Any, Any], data: Annotated[NextForm, Form],
                        rt: NamedDependency[Runtime]) -> Response[Any]:
        provider = oidc.staff(rt.settings)
        try:
            if provider is None:
                raise oidc.LoginFailed("not-configured", "no staff provider configured")
            url, pending = await oidc.begin(provider, rt.link(SSO_CALLBACK), "staff", next_=safe_next(data.next),
                                            ui_locales=i18n.current_locale())
        except oidc.LoginFailed as failure:
            return _sso_failed(request, failure)
        return Redirect(url, status_code=303, headers=NO_STORE, cookies=[
            signed_cookie(rt, SSO_PENDING_COOKIE, pending, path=SSO_PENDING_PATH, max_age=oidc.PENDING_SECONDS)])

    @get(SSO_CALLBACK.removeprefix("/beheer"))
    async def sso_callback(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[Any]:
        # Used once: whatever the outcome, the pending sign-in is gone with this answer.
        pending = read_signed_cookie(request, rt, SSO_PENDING_COOKIE, oidc.Pending)
        answer = await self._sso_finish(request, rt, pending)
        answer.cookies.append(cleared_cookie(rt, SSO_PENDING_COOKIE, path=SSO_PENDING_PATH))
        return answer

    async def _sso_finish(self, request: Request[Any, Any, Any], rt: Runtime,
                          pending: oidc.Pending | None) -> Response[Any]:
        provider = oidc.staff(rt.settings)
        try:
            if provider is None:
                raise oidc.LoginFailed("not-configured", "no staff provider configured")
            signed = await oidc.finish(provider, pending, {k: v for k, v in request.query_params.items()
                                                           if isinstance(v, str)})
            claims = signed.claims
            role = municipality.role_from_groups(claims.get(rt.settings.staff_oidc_group_claim),
                                                 rt.settings.staff_roles())
            if role is None:
                raise oidc.LoginFailed("not-allowed", "no group that maps to a role")
        except oidc.LoginFailed as failure:
            return _sso_failed(request, failure)
        email = claims.get("email") if claims.get("email_verified", True) is not False else None
        try:
            async with transaction(rt.sessionmaker) as db:
                user = await municipality.sso_account(
                    db, rt, subject=str(claims["sub"]), email=email if isinstance(email, str) else None,
                    name=str(claims.get("name") or ""), role=role)
                audit.set_context(f"staff:{user.id}", client_ip(request))
        except DomainError as exc:
            return page(request, "admin/login.html", status=status(exc), values={"next": "/beheer"},
                        errors=errors_of(exc), sso=True)
        # The provider is asked at every request whether the account still works (service.auth),
        # with the access token the session keeps.
        start_session(request, Principal(kind="staff", role=user.role, subject_id=user.id, name=user.name,
                                         via=SSO_VIA, sso_token=signed.access_token or ""))
        return Redirect(safe_next(pending.next if pending else None), status_code=303, headers=NO_STORE)

    @post("/inloggen")
    async def login(self, request: Request[Any, Any, Any], data: Annotated[LoginForm, Form],
                    rt: NamedDependency[Runtime]) -> Template | Redirect:
        values = {"email": data.email, "next": safe_next(data.next)}
        try:
            await _limit(rt, request)
        except DomainError as exc:
            return page(request, "admin/login.html", status=status(exc), values=values, errors=errors_of(exc))
        async with transaction(rt.sessionmaker) as session:  # committed whatever the outcome
            result = await municipality.check_password(session, data.email, data.password)
        if isinstance(result, StaffUser) and result.sso_subject is not None and oidc.staff(rt.settings) is not None:
            # Linked to the municipality's provider: signing in goes there, so that an account
            # disabled at the provider cannot come in with an old password.
            result = StaffSignInRefused("use-sso", N_("This account signs in with your municipality account."))
        if not isinstance(result, StaffUser):
            return page(request, "admin/login.html", status=status(result), values=values, errors=errors_of(result),
                        sso=oidc.staff(rt.settings) is not None)
        pending = rt.sign("staff-pending", f"{result.id}:{_b64(values['next'])}", CODE_STEP_SECONDS)
        return Redirect("/beheer/inloggen/code", status_code=303, headers=NO_STORE,
                        cookies=[_pending_cookie(rt, pending, CODE_STEP_SECONDS)])

    @get("/inloggen/code")
    async def code_form(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Template | Redirect:
        if _pending(request, rt) is None:
            return Redirect("/beheer/inloggen", status_code=303, headers=NO_STORE)
        return page(request, "admin/code.html")

    @post("/inloggen/code")
    async def code(self, request: Request[Any, Any, Any], data: Annotated[CodeForm, Form],
                   rt: NamedDependency[Runtime]) -> Template | Redirect:
        pending = _pending(request, rt)
        if pending is None:
            return Redirect("/beheer/inloggen", status_code=303, headers=NO_STORE)
        try:
            await _limit(rt, request)
        except DomainError as exc:
            return page(request, "admin/code.html", status=status(exc), errors=errors_of(exc))
        audit.set_context(f"staff:{pending['id']}", client_ip(request))
        async with transaction(rt.sessionmaker) as session:
            result = await municipality.check_code(session, rt, int(pending["id"]), data.code)
        if not isinstance(result, StaffUser):
            if result.code != "code-wrong":  # locked or gone: start again
                answer = page(request, "admin/login.html", status=status(result), values={"next": "/beheer"},
                              errors=errors_of(result))
                answer.cookies.append(_pending_cookie(rt))
                return answer
            return page(request, "admin/code.html", status=status(result), errors=errors_of(result))
        start_session(request, Principal(kind="staff", role=result.role, subject_id=result.id, name=result.name))
        return Redirect(safe_next(pending.get("next")), status_code=303, headers=NO_STORE,
                        cookies=[_pending_cookie(rt)])

    @post("/uitloggen")
    async def logout(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Redirect:
        principal = request.scope.get("user")
        end_session(request)
        # Signed in at the municipality's provider: end the session there too, then back here.
        provider = oidc.staff(rt.settings) if principal is not None and principal.via == SSO_VIA else None
        target = await oidc.logout_url(provider, rt.link("/beheer/inloggen")) if provider is not None else None
        return Redirect(target or "/beheer/inloggen", status_code=303, headers=NO_STORE)

    @post("/overal-uitloggen")
    async def logout_everywhere(self, request: Request[Any, Any, Any]) -> Redirect:
        """End every session of this account, on every device (a lost laptop, a shared computer)."""
        end_session(request, everywhere=True)
        return Redirect("/beheer/inloggen?klaar=overal", status_code=303, headers=NO_STORE)

    @get("/instellen/{token:str}")
    async def setup_form(self, request: Request[Any, Any, Any], token: FromPath[str],
                         rt: NamedDependency[Runtime]) -> Template:
        async with rt.sessionmaker() as session:
            user = await municipality.setup_account(session, rt, token)
            if user is None:
                return page(request, "admin/setup_invalid.html", status=404)
            return _setup_page(request, rt, user, token)

    @post("/instellen/{token:str}")
    async def setup(self, request: Request[Any, Any, Any], token: FromPath[str], data: Annotated[SetupForm, Form],
                    rt: NamedDependency[Runtime]) -> Template | Redirect:
        try:
            await _limit(rt, request)
            async with transaction(rt.sessionmaker) as session:
                user = await municipality.setup_account(session, rt, token)
                if user is None:
                    return page(request, "admin/setup_invalid.html", status=404)
                audit.set_context(f"staff:{user.id}", client_ip(request))
                await municipality.complete_setup(session, rt, token, password=data.password, repeat=data.repeat,
                                                  code=data.code)
        except DomainError as exc:
            async with rt.sessionmaker() as session:
                user = await municipality.setup_account(session, rt, token)
                if user is None:
                    return page(request, "admin/setup_invalid.html", status=404)
                return _setup_page(request, rt, user, token, errors=errors_of(exc), status_code=status(exc))
        return Redirect("/beheer/inloggen?klaar=ingesteld", status_code=303, headers=NO_STORE)


def _sso_failed(request: Request[Any, Any, Any], failure: oidc.LoginFailed) -> Template:
    """The sign-in page again, saying what went wrong at the provider; one log line without
    personal data."""
    reference = request_id_of(request.scope)
    oidc.log_refusal("staff_sso_refused", failure, reference)
    return page(request, "admin/login.html", status=login_failure_status(failure.reason),
                values={"next": "/beheer"}, sso=True, sso_failed=failure.reason, reference=reference)


def _setup_page(request: Request[Any, Any, Any], rt: Runtime, user: StaffUser, token: str, *,
                errors: dict[str, str] | None = None, status_code: int = 200) -> Template:
    secret = municipality.totp_secret(rt, user)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return page(request, "admin/setup.html", status=status_code, errors=errors or {}, account=user, token=token,
                secret=grouped, qr=qr_data_uri(municipality.otpauth_uri(rt, user)))
