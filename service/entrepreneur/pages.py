"""Pages for entrepreneurs: a scheme's start page, the application form, confirming the e-mail
address, the application's status and "my voucher" (passwordless sign-in by a mailed link).

Handlers turn forms into calls of the domain functions (``applications``, ``registry``,
``signin``, ``vouchers``); the rules live there. No page sends a script.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from .. import (applications, history, i18n, links, oidc, outbox, qr, ratelimit, registry, schemes, signin, validity,
               vouchers)
from ..auth import Principal, end_session, requires, start_session
from ..codes import format_code
from ..db import run_in_transaction
from ..errors import N_, Conflict, NotFound, TooManyAttempts
from ..levels import level_at_least
from ..models import Application, Enrolment, Hold, Provider, Scheme, Voucher, utcnow
from ..runtime import Runtime
from ..vouchers import effective_status
from ..web import NO_STORE, client_ip
from . import eherkenning
from .common import entrepreneur_page

__all__ = ("ROUTES", "entrepreneur_page", "signed_in_voucher", "validate_application", "voucher_view")

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]

FIELDS = ("kvk_number", "company_name", "employees", "postcode", "contact_name", "email", "purpose")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def validate_application(form: dict[str, str], *, locale: str) -> tuple[dict[str, str], dict[str, str],
                                                                         applications.ApplicantDetails | None]:
    """``(what was typed, errors by field as msgids, details)``; details only when valid."""
    values = {name: (form.get(name) or "").strip() for name in FIELDS}
    errors: dict[str, str] = {}
    kvk = re.sub(r"[\s.]", "", values["kvk_number"])
    if not kvk:
        errors["kvk_number"] = N_("Enter your KvK number.")
    elif not re.fullmatch(r"\d{8}", kvk):
        errors["kvk_number"] = N_("A KvK number has 8 digits, for example 12345678.")
    if not values["company_name"]:
        errors["company_name"] = N_("Enter the name of your company.")
    elif len(values["company_name"]) > 200:
        errors["company_name"] = N_("Use at most 200 characters.")
    if not values["employees"]:
        errors["employees"] = N_("Enter how many people work at your company.")
    elif not values["employees"].isdigit() or int(values["employees"]) > 100_000:
        errors["employees"] = N_("Enter the number of people as a whole number, for example 3.")
    postcode = ""
    if not values["postcode"]:
        errors["postcode"] = N_("Enter the postcode of your business, for example 6811 AB.")
    else:
        postcode = registry.normalise_postcode(values["postcode"]) or ""
        if not postcode:
            errors["postcode"] = N_("This is not a Dutch postcode. Write it like 6811 AB.")
    if not values["contact_name"]:
        errors["contact_name"] = N_("Enter your name.")
    elif len(values["contact_name"]) > 200:
        errors["contact_name"] = N_("Use at most 200 characters.")
    if not values["email"]:
        errors["email"] = N_("Enter your e-mail address.")
    elif not _EMAIL.match(values["email"]) or len(values["email"]) > 254:
        errors["email"] = N_("Enter an e-mail address like name@example.nl.")
    if not values["purpose"]:
        errors["purpose"] = N_("Tell us in a few words what you want to use the voucher for.")
    elif len(values["purpose"]) > 2000:
        errors["purpose"] = N_("Use at most 2000 characters.")
    if errors:
        return values, errors, None
    details = msgspec.convert({
        "kvk_number": kvk, "company_name": values["company_name"], "employees": int(values["employees"]),
        "postcode": postcode, "contact_name": values["contact_name"], "email": values["email"],
        "purpose": values["purpose"], "locale": locale,
    }, applications.ApplicantDetails)
    return values, errors, details




async def _limit(rt: Runtime, *checks: tuple[str, int]) -> None:
    """Count one attempt per key in its own transaction (so a refusal still counts) and
    refuse when any key is over its limit."""
    window = rt.settings.limit_window_seconds
    async with rt.sessionmaker() as session, session.begin():
        counts = [await ratelimit.count_attempt(session, key, window_seconds=window) for key, _ in checks]
    if any(count > limit for count, (_, limit) in zip(counts, checks, strict=True)):
        raise TooManyAttempts(minutes=max(1, window // 60))


def _principal(request: Request[Any, Any, Any]) -> Principal | None:
    principal = request.scope.get("user")
    return principal if principal is not None and principal.role == "entrepreneur" else None


def signed_in_voucher(request: Request[Any, Any, Any]) -> int:
    """The signed-in entrepreneur's voucher: the only one their requests can touch."""
    principal = _principal(request)
    if principal is None or principal.voucher_id is None:
        raise NotAuthorizedException("sign in first")
    return principal.voucher_id


# --- start page and application --------------------------------------------------------------

@get(links.SCHEME_START, name="entrepreneur:start")
async def start(slug: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
    async with rt.sessionmaker() as session:
        scheme = await schemes.get_scheme(session, slug)
        summary = await schemes.summary(session, scheme)
    return entrepreneur_page("start", scheme=scheme, summary=summary)


def _proof_for(request: Request[Any, Any, Any], rt: Runtime, scheme: Scheme) -> applications.LoginProof | None:
    """This browser's eHerkenning proof, if this scheme demands one and the proof's level will do."""
    if scheme.proof != "eherkenning":
        return None
    proof = eherkenning.proof_in(request, rt)
    if proof is None or not level_at_least(proof.level, scheme.eherkenning_level or "EH2+"):
        return None
    return proof


def _apply_page(request: Request[Any, Any, Any], rt: Runtime, scheme: Scheme, *, status_code: int = 200,
                values: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> Template:
    return entrepreneur_page("apply", status_code=status_code, headers=NO_STORE, scheme=scheme, values=values or {},
                             errors=errors or {}, is_open=schemes.scheme_status(scheme) == "open",
                             proof=_proof_for(request, rt, scheme))


@get(links.SCHEME_START + "/aanvragen")
async def apply_form(request: Request[Any, Any, Any], slug: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
    async with rt.sessionmaker() as session:
        scheme = await schemes.get_scheme(session, slug)
    return _apply_page(request, rt, scheme)


@post(links.SCHEME_START + "/aanvragen")
async def apply_submit(request: Request[Any, Any, Any], slug: FromPath[str], data: Form,
                       rt: NamedDependency[Runtime]) -> Response[Any]:
    locale = i18n.current_locale()
    async with rt.reader() as session:
        scheme = await schemes.get_scheme(session, slug)
    proof = _proof_for(request, rt, scheme)
    if proof is not None:  # the KvK number is the one the login proved, whatever the form sent
        data = {**data, "kvk_number": proof.kvk_number}
    values, errors, details = validate_application(data, locale=locale)
    # The address and the e-mail address counted in one short transaction, the scheme read without one.
    await _limit(rt, (f"apply:ip:{client_ip(request)}", rt.settings.limit_per_ip), *(
        [(ratelimit.personal_key(rt, "apply:email", details.email), rt.settings.limit_per_address)]
        if details is not None else []))
    if scheme.proof == "eherkenning" and proof is None:
        # The login has lapsed (or never was): sign in first, then the form.
        return _apply_page(request, rt, scheme, status_code=403)
    if details is not None:

        async def work(session: AsyncSession) -> tuple[int, str]:
            fresh = await session.get_one(Scheme, scheme.id)
            # An earlier application that was never confirmed (a mistyped address, say) gives way.
            await session.execute(
                update(Application)
                .where(Application.scheme_id == fresh.id, Application.kvk_number == details.kvk_number,
                       Application.status == "unconfirmed")
                .values(status="withdrawn")
            )
            application = await applications.submit(session, fresh, details, proof)
            if proof is not None:
                # The login proved who applies: the register is asked at once, no mail to confirm first.
                application.status = registry.PENDING
                await session.flush()
                return application.id, application.public_id
            application.status = "unconfirmed"
            await session.flush()
            outbox.enqueue(session, to=application.email, template="application_confirm", locale=locale,
                           contact_name=application.contact_name, application_id=application.public_id,
                           scheme_name=fresh.name if locale == "nl" else fresh.name_en,
                           confirm_for=application.public_id,
                           hours=rt.settings.confirm_link_hours)
            return application.id, application.public_id

        try:
            application_id, public_id = await run_in_transaction(rt.sessionmaker, work)
        except Conflict as exc:
            errors[exc.field or "kvk_number"] = exc.message
        else:
            if proof is None:
                return Redirect(f"/aanvraag/{public_id}", status_code=303)
            # The proof has done its work: the cookie goes, the session remembers the login.
            answer = await _after_deciding(request, rt, application_id, public_id, via=eherkenning.VIA)
            answer.cookies.append(eherkenning.forget_proof(rt))
            return answer
    return _apply_page(request, rt, scheme, status_code=422, values=values, errors=errors)


async def _after_deciding(request: Request[Any, Any, Any], rt: Runtime, application_id: int,
                          public_id: str, *, via: str | None = None) -> Response[Any]:
    """Decide an application whose applicant is known (confirmed address, or eHerkenning) against the
    register; with a voucher, the applicant is signed in to it."""
    status = await registry.check_application(rt, application_id)
    if status == "granted":
        async with rt.reader() as session:
            row = (await session.execute(
                select(Voucher.id, Application.contact_name).join(Application, Application.id == Voucher.application_id)
                .where(Voucher.application_id == application_id))).first()
        if row is not None:
            start_session(request, Principal(kind="entrepreneur", role="entrepreneur", subject_id=row.id,
                                             name=row.contact_name, voucher_id=row.id, via=via))
            return Redirect("/mijn-voucher", status_code=303)
    return Redirect(f"/aanvraag/{public_id}", status_code=303)


# --- confirming the address, and the application's status ------------------------------------

@get("/aanvraag/bevestigen/{token:str}", response_headers=NO_STORE)
async def confirm_form(token: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
    # A mail scanner may open links: only the button (a POST) confirms.
    valid = signin.confirm_token_valid(rt, token)
    return entrepreneur_page("confirm", status_code=200 if valid else 400, token=token, valid=valid)


@post("/aanvraag/bevestigen/{token:str}")
async def confirm(request: Request[Any, Any, Any], token: FromPath[str], rt: NamedDependency[Runtime]) -> Response[Any]:
    application, confirmed_now = await run_in_transaction(
        rt.sessionmaker, lambda session: signin.confirm_email(session, rt, token))
    if application is None:
        return entrepreneur_page("confirm", status_code=400, token=token, valid=False)
    if confirmed_now:
        return await _after_deciding(request, rt, application.id, application.public_id)
    return Redirect(f"/aanvraag/{application.public_id}", status_code=303)


@get("/aanvraag/{public_id:str}", response_headers=NO_STORE)
async def status_page(request: Request[Any, Any, Any], public_id: FromPath[str], rt: NamedDependency[Runtime]) -> Template:
    # Unknown numbers are limited per address, counted before the lookup so that requests sent
    # at once cannot pass the limit; the session ends before the count's own write (on SQLite
    # every transaction holds the write lock).
    async with ratelimit.failures_limited(rt, f"status:ip:{client_ip(request)}",
                                          limit=rt.settings.failed_lookup_limit,
                                          window_seconds=rt.settings.failed_lookup_window_seconds,
                                          failures=("application-not-found",)), rt.sessionmaker() as session:
        state = await applications.application_state(session, public_id.strip().upper())
        register = await applications.register_facts_of(session, state.application_id)
        scheme = await schemes.get_scheme(session, state.scheme)
    principal = _principal(request)
    return entrepreneur_page("status", state=state, scheme=scheme, register=register,
                             signed_in=principal is not None)


# --- my voucher ---------------------------------------------------------------------------------

@get("/mijn-voucher", response_headers=NO_STORE)
async def my_voucher(request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                     done: Annotated[str | None, QueryParameter(name="klaar")] = None) -> Template:
    principal = _principal(request)
    if principal is None or principal.voucher_id is None:
        return entrepreneur_page("signin", values={}, errors={}, signed_out=request.query_params.get("uit") == "1",
                                 signed_out_everywhere=done == "overal",
                                 eherkenning=oidc.eherkenning(rt.settings) is not None)
    async with rt.sessionmaker() as session:
        view = await voucher_view(session, rt, principal.voucher_id)
    return entrepreneur_page("voucher", **view)


@post("/mijn-voucher/inloggen")
async def request_link(request: Request[Any, Any, Any], data: Form, rt: NamedDependency[Runtime]) -> Template:
    email = (data.get("email") or "").strip()
    if not _EMAIL.match(email) or len(email) > 254:
        return entrepreneur_page("signin", status_code=422, values={"email": email},
                                 eherkenning=oidc.eherkenning(rt.settings) is not None,
                     errors={"email": N_("Enter an e-mail address like name@example.nl.")})
    await _limit(rt, (f"signin:ip:{client_ip(request)}", rt.settings.limit_per_ip),
                 (ratelimit.personal_key(rt, "signin:email", email), rt.settings.limit_per_address))
    locale = i18n.current_locale()
    await run_in_transaction(rt.sessionmaker, lambda s: signin.request_sign_in(s, rt, email, locale=locale))
    # The same answer whether or not the address is known.
    return entrepreneur_page("signin_sent", email=email, minutes=rt.settings.sign_in_link_minutes)


@get("/mijn-voucher/inloggen/{token:str}", response_headers=NO_STORE)
async def sign_in_form(token: FromPath[str]) -> Template:
    return entrepreneur_page("signin_link", token=token)


@post("/mijn-voucher/inloggen/{token:str}")
async def sign_in_with_link(request: Request[Any, Any, Any], token: FromPath[str],
                            rt: NamedDependency[Runtime]) -> Response[Any]:
    await _limit(rt, (f"signin-link:ip:{client_ip(request)}", rt.settings.failed_lookup_limit))
    voucher_id = await run_in_transaction(rt.sessionmaker, lambda s: signin.use_sign_in_token(s, rt, token))
    if voucher_id is None:
        return entrepreneur_page("signin", status_code=400, values={}, errors={}, link_failed=True,
                                 eherkenning=oidc.eherkenning(rt.settings) is not None)
    async with rt.sessionmaker() as session:
        voucher = await session.get_one(Voucher, voucher_id)
        application = await session.get_one(Application, voucher.application_id)
    start_session(request, Principal(kind="entrepreneur", role="entrepreneur", subject_id=voucher.id,
                                     name=application.contact_name, voucher_id=voucher.id))
    return Redirect("/mijn-voucher", status_code=303)


@post("/mijn-voucher/uitloggen")
async def sign_out_page(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[Any]:
    principal = _principal(request)
    end_session(request)
    provider = oidc.eherkenning(rt.settings) if principal is not None and principal.via == "eherkenning" else None
    # Signed in with eHerkenning: end the broker's session too (RP-initiated logout), then back here.
    target = await oidc.logout_url(provider, rt.link("/mijn-voucher?uit=1")) if provider is not None else None
    return Redirect(target or "/mijn-voucher?uit=1", status_code=303)


@post("/mijn-voucher/overal-uitloggen")
async def sign_out_everywhere(request: Request[Any, Any, Any]) -> Response[Any]:
    """End every session of this voucher, on every device."""
    end_session(request, everywhere=True)
    return Redirect("/mijn-voucher?klaar=overal", status_code=303)


async def _code_of(rt: Runtime, voucher_id: int) -> str:
    """The code of a voucher that can still be used: an ended one has no QR code to show."""
    async with rt.sessionmaker() as session:
        voucher = await session.get(Voucher, voucher_id)
    if voucher is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    if effective_status(voucher) != "active":
        raise vouchers.refusal(voucher, 0, utcnow())
    return format_code(rt.keys.code_for(voucher.code_salt))


@get("/mijn-voucher/qr.png", guards=[requires("entrepreneur")])
async def qr_png(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[bytes]:
    code = await _code_of(rt, request.scope["user"].voucher_id)
    return Response(qr.qr_png(rt.link(f"/v/{code}")), media_type="image/png", headers={
        **NO_STORE, **_download(request, "voucher-qr.png")})


@get("/mijn-voucher/qr.svg", guards=[requires("entrepreneur")])
async def qr_svg(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[bytes]:
    code = await _code_of(rt, request.scope["user"].voucher_id)
    return Response(qr.qr_svg(rt.link(f"/v/{code}")), media_type="image/svg+xml", headers={
        **NO_STORE, **_download(request, "voucher-qr.svg")})


def _download(request: Request[Any, Any, Any], filename: str) -> dict[str, str]:
    if request.query_params.get("download"):
        return {"Content-Disposition": f'attachment; filename="{filename}"'}
    return {}


@get("/mijn-voucher/afdrukken", guards=[requires("entrepreneur")], response_headers=NO_STORE)
async def print_page(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Template:
    async with rt.sessionmaker() as session:
        view = await voucher_view(session, rt, request.scope["user"].voucher_id)
    return entrepreneur_page("print", **view)


def _ended_on(voucher: Voucher, status: str, events: list[history.HistoryRow]) -> dt.date | None:
    """The day a voucher stopped being usable, for the notice that replaces its code."""
    if status == "expired":
        return validity.last_day(voucher.expires_at)
    if status == "revoked" and voucher.ended_at is not None:
        return validity.local_day(voucher.ended_at)
    if status == "used_up":
        spent = [e.at for e in events if e.amount_cents < 0]
        return validity.local_day(max(spent)) if spent else None
    return None


async def voucher_view(session: AsyncSession, rt: Runtime, voucher_id: int) -> dict[str, Any]:
    """Everything "my voucher" shows: money, code, history, the coaches that take part."""
    voucher = await session.get(Voucher, voucher_id)
    if voucher is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    application = await session.get_one(Application, voucher.application_id)
    scheme = await session.get_one(Scheme, voucher.scheme_id)
    holds = (await session.execute(
        select(Hold, Provider.name).join(Provider, Provider.id == Hold.provider_id)
        .where(Hold.voucher_id == voucher.id, Hold.status == "open").order_by(Hold.id))).all()
    events = list(reversed(await history.voucher_history(session, voucher.id)))
    enrolment = aliased(Enrolment)
    coaches = (await session.execute(
        select(Provider, enrolment.categories).join(enrolment, enrolment.provider_id == Provider.id)
        .where(enrolment.scheme_id == scheme.id, enrolment.status == "approved").order_by(Provider.name))).all()
    status = effective_status(voucher)
    return {
        "voucher": voucher,
        "status": status,
        "ended_on": _ended_on(voucher, status, events),
        "application": application,
        "scheme": scheme,
        "scheme_name": scheme.name if i18n.current_locale() == "nl" else scheme.name_en,
        # An ended voucher's code is of no use to anyone, so it is not shown.
        "code": format_code(rt.keys.code_for(voucher.code_salt)) if status == "active" else None,
        "events": events,
        "open_holds": list(holds),
        "coaches": coaches,
    }


ROUTES = [start, apply_form, apply_submit, confirm_form, confirm, status_page, my_voucher, request_link,
          sign_in_form, sign_in_with_link, sign_out_page, sign_out_everywhere, qr_png, qr_svg, print_page]
