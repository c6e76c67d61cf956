"""Signing in and out as provider staff, the public form to apply as a provider with the
confirmation of its address, and the pages behind mailed one-time links: choosing a password
and resetting a forgotten one."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import select

from .. import i18n, ratelimit, staff
from ..auth import Principal, end_session, start_session
from ..db import run_in_transaction, transaction
from ..errors import N_, DomainError, InvalidInput
from ..models import Provider, Scheme
from ..runtime import Runtime
from ..schemes import CATEGORIES
from .common import NO_STORE, CATEGORY_LABELS, client_ip, errors_of, page, safe_next, status

__all__ = ("SignInPages",)

#: Sign-in attempts one address may make per window, on top of the per-account lock-out.
SIGN_IN_LIMIT = 30
SIGN_IN_WINDOW = 15 * 60
#: Password-reset requests and set-password attempts one client address may make per window.
RESET_LIMIT = 10
RESET_WINDOW = 15 * 60

Short = Annotated[str, msgspec.Meta(max_length=300)]
Long = Annotated[str, msgspec.Meta(max_length=2000)]


class LoginForm(msgspec.Struct, frozen=True, kw_only=True):
    """Checked in the handler, not by constraints, so that a mistake is shown next to its
    field with what was typed kept."""

    email: Short = ""
    password: Short = ""
    next: Short = ""


class ApplyForm(msgspec.Struct, frozen=True, kw_only=True):
    scheme: Short = ""
    name: Short = ""
    contact_name: Short = ""
    kvk_number: Short = ""
    email: Short = ""
    website: Short = ""
    iban: Short = ""
    description: Long = ""
    cat_coaching: Short = ""
    cat_retraining: Short = ""
    cat_financial_advice: Short = ""


class PasswordForm(msgspec.Struct, frozen=True, kw_only=True):
    password: Short = ""
    repeat: Short = ""


class ForgotForm(msgspec.Struct, frozen=True, kw_only=True):
    email: Short = ""


class EmptyForm(msgspec.Struct, frozen=True, kw_only=True):
    """Buttons that only carry the CSRF token."""


Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class SignInPages(Controller):
    path = "/coach"
    include_in_schema = False

    @get("/login")
    async def login_form(self, next_: Annotated[str | None, QueryParameter(name="next")] = None,
                         done: Annotated[str | None, QueryParameter(name="klaar")] = None) -> Template:
        return page("coach/login.html", values={"next": safe_next(next_)}, errors={}, done=done)

    @post("/login")
    async def login(self, request: Request[Any, Any, Any], data: Annotated[LoginForm, Form],
                    rt: NamedDependency[Runtime]) -> Template | Redirect:
        values = {"email": data.email, "next": safe_next(data.next)}
        try:
            async with transaction(rt.sessionmaker) as session:
                await ratelimit.check_limit(session, f"sign-in:{client_ip(request)}", limit=SIGN_IN_LIMIT,
                                            window_seconds=SIGN_IN_WINDOW)
        except DomainError as exc:
            return page("coach/login.html", status=status(exc), values=values, errors=errors_of(exc))
        # Committed whatever the outcome: the failure count must survive a refusal.
        async with transaction(rt.sessionmaker) as session:
            result = await staff.authenticate(session, data.email, data.password)
            if isinstance(result, staff.ProviderUser):
                provider = await session.get_one(Provider, result.provider_id)
                who = Principal(kind="provider-staff", role="coach", subject_id=result.id,
                                name=f"{result.name} ({provider.name})", provider_id=result.provider_id,
                                generation=result.session_generation)
        if isinstance(result, staff.SignInRefused):
            return page("coach/login.html", status=status(result), values=values, errors=errors_of(result))
        start_session(request, who)
        return Redirect(values["next"], status_code=303, headers=NO_STORE)

    @post("/logout")
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        end_session(request)
        return Redirect("/coach/login", status_code=303, headers=NO_STORE)

    @post("/logout-everywhere")
    async def logout_everywhere(self, request: Request[Any, Any, Any]) -> Redirect:
        """End every session of this account, on every device (a lost phone, a shared computer)."""
        end_session(request, everywhere=True)
        return Redirect("/coach/login?klaar=overal", status_code=303, headers=NO_STORE)

    @get("/apply")
    async def apply_form(self, rt: NamedDependency[Runtime]) -> Template:
        return page("coach/apply.html", **await _apply_context(rt, {}, {}))

    @post("/apply")
    async def apply(self, request: Request[Any, Any, Any], data: Annotated[ApplyForm, Form],
                    rt: NamedDependency[Runtime]) -> Template:
        values = msgspec.structs.asdict(data)
        categories = [c for c in CATEGORIES if values.get(f"cat_{c}")]
        try:
            async with transaction(rt.sessionmaker) as session:
                await ratelimit.check_limit(session, f"provider-apply:{client_ip(request)}",
                                            limit=rt.settings.limit_per_ip,
                                            window_seconds=rt.settings.limit_window_seconds)
            details = _application(data, categories)

            async def work(session: Any) -> Any:
                return await staff.apply(session, details)

            await run_in_transaction(rt.sessionmaker, work)
        except DomainError as exc:
            return page("coach/apply.html", status=status(exc), **await _apply_context(rt, values, errors_of(exc)))
        return page("coach/apply_done.html", email=data.email.strip())

    # A GET only shows a button: mail scanners that open links must not confirm an address.
    @get("/bevestigen/{token:str}")
    async def confirm_form(self, token: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
        valid = staff.confirm_token_valid(rt, token)
        return page("coach/confirm.html", status=200 if valid else 404, token=token, valid=valid, confirmed=False,
                    hours=rt.settings.confirm_link_hours)

    @post("/bevestigen/{token:str}")
    async def confirm(self, token: FromPath[str], data: Annotated[EmptyForm, Form],
                      rt: NamedDependency[Runtime]) -> Template:
        provider = await run_in_transaction(rt.sessionmaker, lambda s: staff.confirm_provider(s, rt, token))
        if provider is None:
            return page("coach/confirm.html", status=404, token=token, valid=False, confirmed=False,
                        hours=rt.settings.confirm_link_hours)
        return page("coach/confirm.html", token=token, valid=True, confirmed=True)

    @get("/wachtwoord/{token:str}")
    async def password_form(self, token: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
        async with rt.sessionmaker() as session:
            user = await staff.password_account(session, rt, token)
        if user is None:
            return page("coach/password.html", status=404, valid=False, token=token, errors={}, values={})
        return page("coach/password.html", valid=True, token=token, name=user.name,
                    errors={}, values={})

    @post("/wachtwoord/{token:str}")
    async def set_password(self, request: Request[Any, Any, Any], token: FromPath[str],
                           data: Annotated[PasswordForm, Form], rt: NamedDependency[Runtime]) -> Template | Redirect:
        try:
            async with transaction(rt.sessionmaker) as session:
                await ratelimit.check_limit(session, f"set-password:{client_ip(request)}", limit=RESET_LIMIT,
                                            window_seconds=RESET_WINDOW)
            await run_in_transaction(rt.sessionmaker, lambda s: staff.set_password(
                s, rt, token, password=data.password, repeat=data.repeat))
        except DomainError as exc:
            async with rt.sessionmaker() as session:
                user = await staff.password_account(session, rt, token)
            if user is None:
                return page("coach/password.html", status=404, valid=False, token=token, errors={}, values={})
            return page("coach/password.html", status=status(exc), valid=True, token=token, name=user.name,
                        errors=errors_of(exc), values={})
        # Whoever was signed in on this browser is not necessarily the account that was set.
        end_session(request)
        return Redirect("/coach/login?klaar=wachtwoord", status_code=303, headers=NO_STORE)

    @get("/wachtwoord-vergeten")
    async def forgot_form(self) -> Template:
        return page("coach/forgot.html", values={}, errors={}, sent=False)

    @post("/wachtwoord-vergeten")
    async def forgot(self, request: Request[Any, Any, Any], data: Annotated[ForgotForm, Form],
                     rt: NamedDependency[Runtime]) -> Template:
        if "@" not in data.email:
            error = InvalidInput("email-invalid", N_("Fill in a valid e-mail address, for example naam@voorbeeld.nl."),
                                 field="email")
            return page("coach/forgot.html", status=status(error), values={"email": data.email},
                        errors=errors_of(error), sent=False)
        try:
            async with transaction(rt.sessionmaker) as session:
                await ratelimit.check_limit(session, f"password-reset:{client_ip(request)}", limit=RESET_LIMIT,
                                            window_seconds=RESET_WINDOW)
        except DomainError as exc:
            return page("coach/forgot.html", status=status(exc), values={"email": data.email},
                        errors=errors_of(exc), sent=False)
        await run_in_transaction(rt.sessionmaker, lambda s: staff.request_reset(s, rt, data.email))
        # The same answer whether or not the address has an account.
        return page("coach/forgot.html", values={}, errors={}, sent=True, email=data.email.strip())


def _application(data: ApplyForm, categories: list[str]) -> staff.ProviderApplication:
    """The form as the domain's Struct; the first wrong field becomes an error next to it."""
    if not data.contact_name.strip():
        raise InvalidInput("field-invalid", N_("Fill in your name."), field="contact_name")
    raw = {"scheme": data.scheme, "name": data.name.strip(), "contact_name": data.contact_name.strip(),
           "kvk_number": data.kvk_number.replace(" ", ""),
           "email": data.email.strip(), "iban": data.iban, "categories": categories,
           "website": data.website.strip() or None, "description": data.description.strip(),
           "locale": i18n.current_locale()}  # mails to the provider in the language of this page
    try:
        return msgspec.convert(raw, staff.ProviderApplication)
    except msgspec.ValidationError as exc:
        field = str(exc).rpartition("at `$.")[2].rstrip("`").split("[")[0]
        raise InvalidInput("field-invalid", _FIELD_MESSAGES.get(field, _FIELD_MESSAGES["name"]),
                           field=field if field in _FIELD_MESSAGES else "name") from None


_FIELD_MESSAGES = {
    "scheme": N_("Choose a scheme."),
    "name": N_("Fill in the name of your organisation."),
    "contact_name": N_("Fill in your name."),
    "kvk_number": N_("A KvK number has 8 digits."),
    "email": N_("Fill in a valid e-mail address, for example naam@voorbeeld.nl."),
    "iban": N_("This is not a valid IBAN."),
    "categories": N_("Choose one or more of the scheme's categories."),
    "website": N_("Fill in the full address of your website, starting with https://."),
    "description": N_("The description can be at most 2000 characters."),
}


async def _apply_context(rt: Runtime, values: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    async with rt.sessionmaker() as session:
        schemes = list(await session.scalars(select(Scheme).where(Scheme.closed_at.is_(None)).order_by(Scheme.id)))
    return {"schemes": schemes, "categories": CATEGORY_LABELS, "values": values, "errors": errors}
