"""Applications: eligibility, allocation (first come or lottery), the waiting list.

A place and the voucher's value are taken from the scheme by one conditional UPDATE
(:func:`take_place`), so the cap and the budget hold however many applications arrive at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from . import audit, ledger, outbox, privacy, validity
from .codes import new_public_id
from .levels import level_at_least
from .db import PSEUDONYM_KEY
from .errors import N_, Conflict, InvalidInput, NotFound, Refused
from .models import Application, Scheme, Voucher, utcnow
from .runtime import Runtime
from .schemes import postcode_accepted, scheme_name, scheme_status

__all__ = (
    "JOIN_WAITING_LIST",
    "PLACE_FOR_NEWCOMER",
    "TAKE_FOR_NEWCOMER",
    "ApplicantDetails",
    "ApplicationState",
    "LoginProof",
    "DrawResult",
    "RegisterFacts",
    "application_state",
    "decide",
    "draw",
    "draw_order",
    "issue_voucher",
    "issued_mail",
    "promote_waiting",
    "register_facts",
    "register_facts_of",
    "reject",
    "state_after_decision",
    "submit",
    "take_place",
    "voucher_values",
)

KvkNumber = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{8}$", description="KvK number: 8 digits")]
Postcode = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{3} ?[A-Za-z]{2}$", description="Dutch postcode, e.g. 6811 AB")]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s\x00-\x1f\x7f-\x9f\ufeff]{1,64}@[^@\s\x00-\x1f\x7f-\x9f\ufeff]+\.[^@\s\x00-\x1f\x7f-\x9f\ufeff]+$",
                                    max_length=254)]


class ApplicantDetails(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an entrepreneur tells us when applying."""

    kvk_number: KvkNumber
    company_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    employees: Annotated[int, msgspec.Meta(ge=0, le=100000)]
    postcode: Postcode
    contact_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    email: Email
    purpose: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    locale: Annotated[str, msgspec.Meta(pattern=r"^(nl|en)$")] = "nl"


class LoginProof(msgspec.Struct, frozen=True, kw_only=True):
    """What an eHerkenning login proved: the firm, the level of assurance, the acting person's
    pseudonym and the branch, if the authorisation named one. Only the sign-in pages make one."""

    kvk_number: KvkNumber
    level: Literal["EH1", "EH2", "EH2+", "EH3", "EH4"]
    acting_person: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    branch_number: Annotated[str, msgspec.Meta(pattern=r"^\d{12}$")] | None = None


def proof_refusal(scheme: Scheme, details: ApplicantDetails, proof: LoginProof | None) -> Refused | None:
    """Why this application may not be taken for this scheme, as far as the proof goes; None
    when it may. An ``eherkenning`` scheme takes only the KvK number a login proved, at its level."""
    if scheme.proof != "eherkenning":
        return None
    if proof is None:
        return Refused("eherkenning-required", N_("This scheme takes applications only after signing in with "
                                                  "eHerkenning."))
    if proof.kvk_number != details.kvk_number:
        return Refused("kvk-not-proven", N_("The KvK number must be the one your eHerkenning login proved."))
    if not level_at_least(proof.level, scheme.eherkenning_level or "EH2+"):
        return Refused("level-too-low", N_("This scheme needs eHerkenning level %(level)s or higher."),
                       level=scheme.eherkenning_level)
    return None


class ApplicationState(msgspec.Struct, frozen=True, kw_only=True):
    """What an applicant may see of their application (and what the public API shows)."""

    application_id: str
    scheme: str
    status: str
    waiting_list_position: int | None
    reasons: list[str]


class RegisterFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the trade register said when the application was decided, beside what the applicant
    typed and the scheme's rule: a refused applicant can see what to have corrected."""

    found: bool
    employees: int | None
    postcode: str | None
    active: bool | None
    extracted_on: dt.date | None
    entered_employees: int
    entered_postcode: str
    max_employees: int


def register_facts(scheme: Scheme, application: Application) -> RegisterFacts | None:
    """The register's facts the decision used; None when the register was not asked."""
    if application.registry_checked_at is None:
        return None
    return RegisterFacts(
        found="not-in-register" not in (application.reasons or []), employees=application.registry_employees,
        postcode=application.registry_postcode, active=application.registry_active,
        extracted_on=application.registry_extracted_on, entered_employees=application.employees,
        entered_postcode=application.postcode, max_employees=scheme.max_employees)


async def register_facts_of(session: AsyncSession, public_id: str) -> RegisterFacts | None:
    application = await session.scalar(select(Application).where(Application.public_id == public_id))
    if application is None:
        raise NotFound("application-not-found", N_("There is no application with this number."))
    return register_facts(await session.get_one(Scheme, application.scheme_id), application)


class DrawResult(msgspec.Struct, frozen=True, kw_only=True):
    scheme: str
    seed: str
    seed_sha256: str
    order: list[str]
    """Pseudonymous application ids in drawn order."""


def _normalise_postcode(postcode: str) -> str:
    compact = postcode.replace(" ", "").upper()
    return f"{compact[:4]} {compact[4:]}"


def eligibility_reasons(scheme: Scheme, *, employees: int, postcode: str) -> list[str]:
    """Codes of the rules an applicant does not meet; empty when eligible."""
    reasons = []
    if employees > scheme.max_employees:
        reasons.append("too-many-employees")
    if not postcode_accepted(scheme, postcode):
        reasons.append("outside-area")
    return reasons


# ON CONFLICT DO NOTHING answers a second live application for the same KvK number (the partial
# unique index ``one_live_application_per_kvk``) without the savepoint an IntegrityError needs.
_A = Application.__table__
_SUBMIT = {
    "postgresql": postgresql.insert(_A).on_conflict_do_nothing().returning(_A.c.id),
    "sqlite": sqlite.insert(_A).on_conflict_do_nothing().returning(_A.c.id),
}


def application_values(scheme: Scheme, details: ApplicantDetails, now: dt.datetime,
                       proof: LoginProof | None = None) -> dict[str, Any]:
    """Every column of a new application but its id, as received. Refuses when the scheme is not
    taking applications, or demands an eHerkenning login this application does not carry."""
    if scheme_status(scheme, now) != "open":
        raise Refused("scheme-not-open", N_("This scheme is not taking applications now."))
    refusal = proof_refusal(scheme, details, proof)
    if refusal is not None:
        raise refusal
    proven = proof if scheme.proof == "eherkenning" else None
    return {
        "public_id": new_public_id("A"), "scheme_id": scheme.id, "status": "received",
        "kvk_number": details.kvk_number, "company_name": details.company_name.strip(),
        "employees": details.employees, "postcode": _normalise_postcode(details.postcode),
        "contact_name": details.contact_name.strip(), "email": details.email.strip(),
        "purpose": details.purpose.strip(), "locale": details.locale, "reasons": [], "waitlist_number": None,
        "lottery_rank": None, "created_at": now, "decided_at": None, "email_confirmed_at": None,
        "registry_checked_at": None, "registry_employees": None, "registry_postcode": None, "registry_attempts": 0,
        "registry_active": None, "registry_extracted_on": None,
        "assurance_level": proven.level if proven else None,
        "acting_person": proven.acting_person if proven else None,
        "branch_number": proven.branch_number if proven else None,
    }


ALREADY_APPLIED = N_("This KvK number has already applied for this scheme.")
LIVE_STATUSES_EXCLUDED = ("rejected", "withdrawn")
"""Statuses that do not count as a live application (the partial unique index's WHERE)."""


async def applied_before_purge(session: AsyncSession, scheme_id: int, pseudonym: str) -> bool:
    """Whether a live application of this scheme carries the KvK number's pseudonym: after a
    privacy purge the unique index sees only the pseudonym, so this check keeps the rule."""
    query = select(Application.id).where(Application.scheme_id == scheme_id, Application.kvk_number == pseudonym,
                                         Application.status.not_in(LIVE_STATUSES_EXCLUDED)).limit(1)
    return await session.scalar(query) is not None


async def submit(session: AsyncSession, scheme: Scheme, details: ApplicantDetails,
                 proof: LoginProof | None = None) -> Application:
    """Record an application. One live application per KvK number per scheme, also across a
    privacy purge (which replaces the numbers by pseudonyms). A scheme that demands eHerkenning
    takes it only with the ``proof`` of a login for the same KvK number."""
    values = application_values(scheme, details, utcnow(), proof)
    key = session.info.get(PSEUDONYM_KEY)
    if key is None:
        raise RuntimeError("a session without the KvK pseudonym key: make it with Runtime.sessionmaker")
    if await applied_before_purge(session, scheme.id, privacy.pseudonym_with(key, details.kvk_number)):
        raise Conflict("already-applied", ALREADY_APPLIED, field="kvk_number")
    conn = await session.connection()
    application_id = (await conn.execute(_SUBMIT[conn.dialect.name], values)).scalar()
    if application_id is None:
        raise Conflict("already-applied", ALREADY_APPLIED, field="kvk_number")
    audit.record_insert(session, "application", application_id, values)
    # Every column is set, so the session can take the row as loaded without reading it back.
    application = Application(id=application_id, **values)
    make_transient_to_detached(application)
    session.add(application)
    return application


# The scheme's row is every application's meeting point: these run as Core statements built once,
# on the session's connection, and record themselves in the audit log. The WHERE clause is the
# rule: a place and a voucher's value are taken only while both are left.
_S = Scheme.__table__
_PLACE_LEFT = (_S.c.closed_at.is_(None), _S.c.places_used < _S.c.max_places,
               _S.c.committed_cents + _S.c.value_cents <= _S.c.budget_cents)
PLACE_FOR_NEWCOMER = and_(*_PLACE_LEFT, _S.c.waiting_count == 0)
"""A newcomer may take a place: one and a voucher's value are left, and nobody waits for one."""
TAKE_FOR_NEWCOMER = (
    update(_S).where(_S.c.id == bindparam("scheme_id"), PLACE_FOR_NEWCOMER)
    .values(places_used=_S.c.places_used + 1, committed_cents=_S.c.committed_cents + _S.c.value_cents)
    .returning(_S.c.places_used, _S.c.committed_cents, _S.c.value_cents, _S.c.waiting_count)
)
_TAKE_FOR_WAITING = (
    update(_S).where(_S.c.id == bindparam("scheme_id"), *_PLACE_LEFT)
    .values(places_used=_S.c.places_used + 1, committed_cents=_S.c.committed_cents + _S.c.value_cents,
            waiting_count=_S.c.waiting_count - 1)
    .returning(_S.c.places_used, _S.c.committed_cents, _S.c.value_cents, _S.c.waiting_count)
)
JOIN_WAITING_LIST = (
    update(_S).where(_S.c.id == bindparam("scheme_id"))
    .values(waitlist_seq=_S.c.waitlist_seq + 1, waiting_count=_S.c.waiting_count + 1)
    .returning(_S.c.waitlist_seq, _S.c.waiting_count)
)


async def take_place(session: AsyncSession, scheme: Scheme, *, from_waiting_list: bool) -> bool:
    """Take one place and one voucher's value from the scheme, if both are left.

    New applicants do not jump the waiting list: while anyone waits, only a promotion from the
    list may take a freed place. ``scheme`` is kept in step with the stored row.
    """
    conn = await session.connection()
    statement = _TAKE_FOR_WAITING if from_waiting_list else TAKE_FOR_NEWCOMER
    row = (await conn.execute(statement, {"scheme_id": scheme.id})).first()
    if row is None:
        return False
    places_used, committed, value, waiting = row
    before = {"places_used": places_used - 1, "committed_cents": committed - value}
    after = {"places_used": places_used, "committed_cents": committed}
    if from_waiting_list:
        before["waiting_count"], after["waiting_count"] = waiting + 1, waiting
    audit.record_update(session, "scheme", scheme.id, before, after)
    for name, new in after.items():
        set_committed_value(scheme, name, new)
    return True


async def _join_waiting_list(session: AsyncSession, scheme: Scheme, application: Application) -> None:
    conn = await session.connection()
    number, waiting = (await conn.execute(JOIN_WAITING_LIST, {"scheme_id": scheme.id})).one()
    audit.record_update(session, "scheme", scheme.id, {"waitlist_seq": number - 1, "waiting_count": waiting - 1},
                        {"waitlist_seq": number, "waiting_count": waiting})
    set_committed_value(scheme, "waitlist_seq", number)
    set_committed_value(scheme, "waiting_count", waiting)
    application.status = "waiting"
    application.waitlist_number = number
    application.decided_at = utcnow()


async def decide(session: AsyncSession, rt: Runtime, scheme: Scheme, application: Application,
                 *, employees: int, postcode: str) -> Application:
    """Decide an application on the facts given (from the trade register where available):
    reject with reasons, enter the lottery, issue a voucher, or put it on the waiting list."""
    reasons = eligibility_reasons(scheme, employees=employees, postcode=postcode)
    if reasons:
        reject(session, scheme, application, reasons)
    elif scheme.allocation == "lottery" and await _before_the_draw(session, scheme):
        application.status = "entered"
        outbox.enqueue(session, to=application.email, template="application_entered", locale=application.locale,
                       contact_name=application.contact_name, application_id=application.public_id,
                       closes_at=scheme.applications_close_at.isoformat(),
                       scheme_name=scheme_name(scheme, application.locale))
    elif await take_place(session, scheme, from_waiting_list=False):
        await issue_voucher(session, rt, scheme, application)
    else:
        await _join_waiting_list(session, scheme, application)
        outbox.enqueue(session, to=application.email, template="application_waiting", locale=application.locale,
                       **waiting_mail(scheme, application.public_id, application.locale, application.contact_name))
    await session.flush()
    return application


async def _before_the_draw(session: AsyncSession, scheme: Scheme) -> bool:
    """True while the lottery has not been drawn. Locks the scheme's row, as the draw does first,
    so an entry is either in the draw or decided after it (first come, behind the drawn list):
    never left waiting for a draw that has passed."""
    query = select(Scheme.id).where(Scheme.id == scheme.id, Scheme.drawn_at.is_(None)).with_for_update()
    return await session.scalar(query) is not None


async def issue_voucher(session: AsyncSession, rt: Runtime, scheme: Scheme, application: Application) -> Voucher:
    """Create the voucher for an application whose place and money the caller has just taken
    from the scheme (see :func:`take_place`)."""
    now = utcnow()
    voucher = Voucher(**voucher_values(rt, scheme, application.id, application.kvk_number, now))
    session.add(voucher)
    await session.flush()
    ledger.post(
        session,
        scheme_id=scheme.id,
        kind="issue",
        source=(ledger.BUDGET, scheme.id),
        target=(ledger.VOUCHER, voucher.id),
        amount_cents=scheme.value_cents,
        places=1,
        voucher_id=voucher.id,
    )
    application.status = "granted"
    application.decided_at = now
    outbox.enqueue(session, to=application.email, template="voucher_issued", locale=application.locale,
                   **issued_mail(scheme, voucher.id, voucher.expires_at, application.locale, application.contact_name))
    return voucher


def voucher_values(rt: Runtime, scheme: Scheme, application_id: int, kvk_number: str,
                   now: dt.datetime) -> dict[str, Any]:
    """Every column of a new voucher but its id: a fresh code, the scheme's value, unspent."""
    salt = rt.keys.new_salt()
    return {
        "scheme_id": scheme.id, "application_id": application_id, "kvk_number": kvk_number,
        "code_hash": rt.keys.hash_of(rt.keys.code_for(salt)), "code_salt": salt, "status": "active",
        "value_cents": scheme.value_cents, "balance_cents": scheme.value_cents, "held_cents": 0,
        "redeemed_cents": 0, "returned_cents": 0, "holds_place": True, "issued_at": now,
        "expires_at": validity.issued_expiry(now, scheme.validity_days), "ended_at": None, "end_reason": None,
    }


def issued_mail(scheme: Scheme, voucher_id: int, expires_at: dt.datetime, locale: str,
                contact_name: str) -> dict[str, Any]:
    """The parameters of the ``voucher_issued`` mail (the code is derived when it is sent)."""
    return {"voucher_id": voucher_id, "scheme_name": scheme.name if locale == "nl" else scheme.name_en,
            "value_cents": scheme.value_cents, "expires_at": expires_at.isoformat(),
            "contact_name": contact_name}


def reject(session: AsyncSession, scheme: Scheme, application: Application, reasons: list[str]) -> None:
    """Reject with reason codes (``errors.REJECTION_REASONS``) and tell the applicant why."""
    application.status = "rejected"
    application.reasons = reasons
    application.decided_at = utcnow()
    facts = register_facts(scheme, application)
    outbox.enqueue(session, to=application.email, template="application_rejected", locale=application.locale,
                   contact_name=application.contact_name, reasons=reasons,
                   scheme_name=scheme_name(scheme, application.locale),
                   register=msgspec.to_builtins(facts) if facts is not None else None)


def waiting_mail(scheme: Scheme, public_id: str, locale: str, contact_name: str) -> dict[str, Any]:
    """The parameters of the ``application_waiting`` mail."""
    return {"contact_name": contact_name, "application_id": public_id, "scheme_name": scheme_name(scheme, locale)}


async def promote_waiting(session: AsyncSession, rt: Runtime, scheme_id: int) -> int:
    """Give freed places to the first on the waiting list, in order. Returns how many."""
    scheme = await session.get_one(Scheme, scheme_id)
    promoted = 0
    while True:
        query = (
            select(Application)
            .where(Application.scheme_id == scheme_id, Application.status == "waiting")
            .order_by(Application.waitlist_number)
            .limit(1)
        )
        if not rt.settings.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        application = await session.scalar(query)
        if application is None or not await take_place(session, scheme, from_waiting_list=True):
            return promoted
        await issue_voucher(session, rt, scheme, application)
        promoted += 1


async def application_state(session: AsyncSession, public_id: str) -> ApplicationState:
    application = await session.scalar(select(Application).where(Application.public_id == public_id))
    if application is None:
        raise NotFound("application-not-found", N_("There is no application with this number."))
    scheme = await session.get_one(Scheme, application.scheme_id)
    position = None
    if application.status == "waiting":
        position = await session.scalar(
            select(func.count()).select_from(Application).where(
                Application.scheme_id == application.scheme_id,
                Application.status == "waiting",
                Application.waitlist_number <= application.waitlist_number,
            )
        )
    return ApplicationState(
        application_id=application.public_id,
        scheme=scheme.slug,
        status=application.status,
        waiting_list_position=position,
        reasons=list(application.reasons),
    )


async def state_after_decision(session: AsyncSession, scheme: Scheme, application: Application) -> ApplicationState:
    """The state of an application this transaction has just decided, without counting the
    waiting list: the newest entry is last in line, and while this transaction holds the
    scheme's row (or SQLite's write lock) the stored length is exactly its position."""
    # ``_join_waiting_list`` kept ``scheme`` in step with the row this transaction has locked.
    position = scheme.waiting_count if application.status == "waiting" else None
    return ApplicationState(application_id=application.public_id, scheme=scheme.slug, status=application.status,
                            waiting_list_position=position, reasons=list(application.reasons))


def draw_order(seed: str, public_ids: list[str]) -> list[str]:
    """The published rule: sort by HMAC-SHA256(seed, id). Anyone can recompute it."""
    return sorted(public_ids, key=lambda pid: hmac.new(seed.encode(), pid.encode(), hashlib.sha256).hexdigest())


async def draw(session: AsyncSession, rt: Runtime, scheme: Scheme, seed: str, *, now: dt.datetime | None = None) -> DrawResult:
    """Draw a lottery scheme after its window: vouchers in drawn order while places and money
    last, the rest on the waiting list in the same order."""
    now = now or utcnow()
    if scheme.allocation != "lottery":
        raise Refused("not-a-lottery", N_("This scheme does not use a lottery."))
    if scheme.drawn_at is not None:
        raise Refused("already-drawn", N_("The draw for this scheme has already taken place."))
    if now < scheme.applications_close_at:
        raise Refused("window-open", N_("The draw can only take place after the application period."))
    if hashlib.sha256(seed.encode()).hexdigest() != scheme.lottery_seed_hash:
        raise InvalidInput("seed-mismatch", N_("This seed does not match the published hash."), field="seed")
    # Lock the scheme before reading the entries, so no entry can slip in beside the draw.
    await session.execute(select(Scheme.id).where(Scheme.id == scheme.id).with_for_update())
    entries = list(
        await session.scalars(
            select(Application).where(Application.scheme_id == scheme.id, Application.status == "entered")
        )
    )
    by_id = {a.public_id: a for a in entries}
    order = draw_order(seed, list(by_id))
    for rank, public_id in enumerate(order, start=1):
        application = by_id[public_id]
        application.lottery_rank = rank
        if await take_place(session, scheme, from_waiting_list=False):
            await issue_voucher(session, rt, scheme, application)
        else:
            await _join_waiting_list(session, scheme, application)
            outbox.enqueue(session, to=application.email, template="application_waiting", locale=application.locale,
                           **waiting_mail(scheme, application.public_id, application.locale,
                                          application.contact_name))
    scheme.drawn_at = now
    scheme.lottery_seed = seed
    await session.flush()
    return DrawResult(scheme=scheme.slug, seed=seed, seed_sha256=scheme.lottery_seed_hash or "", order=order)


async def published_draw(session: AsyncSession, scheme: Scheme) -> DrawResult:
    if scheme.drawn_at is None or scheme.lottery_seed is None:
        raise NotFound("not-drawn", N_("The draw for this scheme has not taken place yet."))
    rows = await session.scalars(
        select(Application.public_id)
        .where(Application.scheme_id == scheme.id, Application.lottery_rank.is_not(None))
        .order_by(Application.lottery_rank)
    )
    return DrawResult(scheme=scheme.slug, seed=scheme.lottery_seed, seed_sha256=scheme.lottery_seed_hash or "",
                      order=list(rows))
