"""Signing in with eHerkenning (OpenID Connect through the municipality's broker): to apply for
a scheme that demands it, and to open "my voucher".

The person presses a button (a POST with its CSRF token), goes to the broker, and comes back to
``/eherkenning/terug``. Nobody is signed in yet, so what the journey must remember lives in
short-lived cookies signed by the server (``web.signed_cookie``: HttpOnly, SameSite=Lax, under the
narrowest path that works, removed when used): the login's ``state``, ``nonce`` and PKCE verifier
until the broker sends the person back; then what the login proved (KvK number, level, the acting
person's pseudonym, the branch) for ``PROOF_SECONDS`` as an ``applications.LoginProof``, until the
application is submitted. The apply form takes the KvK number from that cookie and nowhere else: its
signature keeps it from being altered, and it stays in the browser that signed in. Opening "my
voucher" starts a server-side session that remembers it came through eHerkenning (``via``), so that
signing out ends the broker's session too. Whatever goes wrong is shown as a
page that says what to do; the log gets the reason and the request id, nothing personal; and
nothing is recorded.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Redirect, Template
from sqlalchemy import select

from .. import applications, i18n, links, oidc, schemes
from ..auth import Principal, start_session
from ..errors import N_, NotFound
from ..levels import LEVELS, level_at_least, level_of
from ..models import Application, Scheme, Voucher
from ..problems import login_failure_status, request_id_of
from ..runtime import Runtime
from ..settings import Settings
from ..web import NO_STORE, cleared_cookie, read_signed_cookie, signed_cookie
from .common import entrepreneur_page

__all__ = ("CALLBACK", "ROUTES", "VIA", "forget_proof", "proof_in")

CALLBACK = "/eherkenning/terug"
VIA = "eherkenning"
"""``Principal.via`` of a session opened with eHerkenning."""
PROOF_SECONDS = 30 * 60
"""How long after the login the apply form still takes its proof."""

# The cookies of the journey: (name, path). Each is read only where its path says.
PENDING = ("vouchers_eherkenning_pending", "/eherkenning")
"""From the button to the broker's answer at ``CALLBACK``: an ``oidc.Pending``."""
PROOF = ("vouchers_eherkenning_proof", "/regelingen")
"""From the broker's answer to the submitted application: an ``applications.LoginProof``."""
CHOICE = ("vouchers_eherkenning_choice", "/mijn-voucher/eherkenning")
"""A firm with more than one voucher: the KvK number the login proved, until one is chosen."""


def _keep(rt: Runtime, cookie: tuple[str, str], value: Any, max_age: int) -> Cookie:
    return signed_cookie(rt, cookie[0], value, path=cookie[1], max_age=max_age)


def _drop(rt: Runtime, cookie: tuple[str, str]) -> Cookie:
    return cleared_cookie(rt, cookie[0], path=cookie[1])


def _with(response: Response[Any], *cookies: Cookie) -> Response[Any]:
    response.cookies.extend(cookies)
    return response


def proof_in(request: Request[Any, Any, Any], rt: Runtime) -> applications.LoginProof | None:
    """The eHerkenning proof this browser holds, while it is fresh."""
    return read_signed_cookie(request, rt, PROOF[0], applications.LoginProof)


def forget_proof(rt: Runtime) -> Cookie:
    """The cookie that removes the proof (once the application is in)."""
    return _drop(rt, PROOF)


def failed_page(request: Request[Any, Any, Any], failure: oidc.LoginFailed, *, again: str, level: str | None = None,
                have: str | None = None) -> Template:
    """What the person reads when signing in did not work, and one log line for the operator."""
    request_id = request_id_of(request.scope)
    oidc.log_refusal("eherkenning_refused", failure, request_id)
    return entrepreneur_page("eherkenning_failed", status_code=login_failure_status(failure.reason), headers=NO_STORE,
                             reason=failure.reason, again=again, level=level, have=have, reference=request_id)


def _provider(settings: Settings) -> oidc.Provider:
    provider = oidc.eherkenning(settings)
    if provider is None:
        raise oidc.LoginFailed("not-configured", "no eHerkenning broker configured")
    return provider


async def _go(request: Request[Any, Any, Any], rt: Runtime, purpose: str, level: str, again: str) -> Response[Any]:
    try:
        url, pending = await oidc.begin(_provider(rt.settings), rt.link(CALLBACK), purpose, acr=LEVELS[level],
                                        ui_locales=i18n.current_locale())
    except oidc.LoginFailed as failure:
        return failed_page(request, failure, again=again)
    # A new login replaces an earlier one's proof, whatever its outcome.
    return Redirect(url, status_code=303, headers=NO_STORE,
                    cookies=[forget_proof(rt), _keep(rt, PENDING, pending, oidc.PENDING_SECONDS)])


@post(links.SCHEME_START + "/eherkenning")
async def start_apply(request: Request[Any, Any, Any], slug: FromPath[str], rt: NamedDependency[Runtime]
                      ) -> Response[Any]:
    async with rt.sessionmaker() as session:
        scheme = await schemes.get_scheme(session, slug)
    if scheme.proof != "eherkenning":
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    return await _go(request, rt, f"apply:{scheme.slug}", scheme.eherkenning_level or "EH2+",
                     links.path(links.SCHEME_START, slug=scheme.slug) + "/aanvragen")


@post("/mijn-voucher/eherkenning")
async def start_voucher(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[Any]:
    return await _go(request, rt, "voucher", rt.settings.eherkenning_level, "/mijn-voucher")


def _proof(settings: Settings, claims: dict[str, Any]) -> applications.LoginProof:
    """The login's facts under the claim names the broker uses; ``no-kvk`` without a KvK number."""
    kvk = claims.get(settings.eherkenning_kvk_claim)
    if not isinstance(kvk, str) or not kvk.isdigit() or len(kvk) != 8:
        raise oidc.LoginFailed("no-kvk", "no KvK number in the token")
    level = level_of(claims.get(settings.eherkenning_level_claim))
    if level is None:
        raise oidc.LoginFailed("level", "no known level in the token")
    person = claims.get(settings.eherkenning_person_claim)
    if not isinstance(person, str) or not person or len(person) > 128:
        raise oidc.LoginFailed("unverified", "no acting person in the token")
    branch = claims.get(settings.eherkenning_branch_claim)
    branch = branch if isinstance(branch, str) and branch.isdigit() and len(branch) == 12 else None
    return applications.LoginProof(kvk_number=kvk, level=level, acting_person=person,  # type: ignore[arg-type]
                                   branch_number=branch)


@get(CALLBACK, response_headers=NO_STORE)
async def callback(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[Any]:
    # Used once: whatever the outcome, the pending login is gone with this answer.
    pending = read_signed_cookie(request, rt, PENDING[0], oidc.Pending)
    return _with(await _callback(request, rt, pending), _drop(rt, PENDING))


async def _callback(request: Request[Any, Any, Any], rt: Runtime, pending: oidc.Pending | None) -> Response[Any]:
    purpose = pending.purpose if pending is not None else "voucher"
    again = (links.path(links.SCHEME_START, slug=purpose[6:]) + "/aanvragen" if purpose.startswith("apply:")
             else "/mijn-voucher")
    query = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    try:
        signed = await oidc.finish(_provider(rt.settings), pending, query)
        proof = _proof(rt.settings, signed.claims)
    except oidc.LoginFailed as failure:
        return failed_page(request, failure, again=again)
    if purpose.startswith("apply:"):
        async with rt.sessionmaker() as session:
            scheme = await schemes.get_scheme(session, purpose[6:])
        required = scheme.eherkenning_level or "EH2+"
        if not level_at_least(proof.level, required):
            return failed_page(request, oidc.LoginFailed("level", f"{proof.level} below {required}"), again=again,
                               level=required, have=proof.level)
        return Redirect(again, status_code=303, headers=NO_STORE, cookies=[_keep(rt, PROOF, proof, PROOF_SECONDS)])
    return await _open_voucher(request, rt, proof, again)


async def _firm_vouchers(rt: Runtime, kvk_number: str) -> list[Any]:
    """The firm's vouchers, newest first: id, scheme names, status and the scheme's level."""
    async with rt.sessionmaker() as session:
        return list((await session.execute(
            select(Voucher.id, Application.company_name, Scheme.name, Scheme.name_en, Voucher.status,
                   Scheme.eherkenning_level)
            .join(Application, Application.id == Voucher.application_id)
            .join(Scheme, Scheme.id == Voucher.scheme_id)
            .where(Voucher.kvk_number == kvk_number)
            .order_by(Voucher.id.desc()))).all())


def _required(settings: Settings, rows: list[Any]) -> str:
    """The configured level, or the strictest of the firm's schemes when that is higher."""
    required = settings.eherkenning_level
    for row in rows:
        if row.eherkenning_level is not None and level_at_least(row.eherkenning_level, required):
            required = row.eherkenning_level
    return required


async def _open_voucher(request: Request[Any, Any, Any], rt: Runtime, proof: applications.LoginProof,
                        again: str) -> Response[Any]:
    """Sign in to the firm's voucher: whoever acts for the firm sees it, the applicant or a colleague.
    A firm with vouchers of more than one scheme chooses which to open."""
    rows = await _firm_vouchers(rt, proof.kvk_number)
    required = _required(rt.settings, rows)
    if not level_at_least(proof.level, required):
        return failed_page(request, oidc.LoginFailed("level", f"{proof.level} below {required}"), again=again,
                           level=required, have=proof.level)
    if not rows:
        return entrepreneur_page("signin", status_code=404, headers=NO_STORE, values={}, errors={},
                                 no_voucher_for_firm=True, eherkenning=True)
    if len(rows) == 1:
        return _sign_in_to(request, rows[0].id, rows[0].company_name)
    # Which firm the login proved is kept briefly, so that the choice can only be one of its vouchers.
    return _with(entrepreneur_page("eherkenning_choose", headers=NO_STORE, rows=rows),
                 _keep(rt, CHOICE, proof.kvk_number, PROOF_SECONDS))


def _sign_in_to(request: Request[Any, Any, Any], voucher_id: int, company_name: str) -> Response[Any]:
    start_session(request, Principal(kind="entrepreneur", role="entrepreneur", subject_id=voucher_id,
                                     name=company_name, voucher_id=voucher_id, via=VIA))
    return Redirect("/mijn-voucher", status_code=303, headers=NO_STORE)


class ChoiceForm(msgspec.Struct, frozen=True, kw_only=True):
    voucher: Annotated[int, msgspec.Meta(ge=1)]


@post("/mijn-voucher/eherkenning/kies")
async def choose(request: Request[Any, Any, Any], data: Annotated[ChoiceForm, Body(
        media_type=RequestEncodingType.URL_ENCODED)], rt: NamedDependency[Runtime]) -> Response[Any]:
    kvk_number = read_signed_cookie(request, rt, CHOICE[0], str)
    if kvk_number is not None:
        for row in await _firm_vouchers(rt, kvk_number):
            if row.id == data.voucher:
                return _with(_sign_in_to(request, row.id, row.company_name), _drop(rt, CHOICE))
    return _with(Redirect("/mijn-voucher", status_code=303, headers=NO_STORE), _drop(rt, CHOICE))


ROUTES = [start_apply, start_voucher, callback, choose]
