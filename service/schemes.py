"""Schemes (regelingen): defined in TOML files, loaded into the database, summarised publicly."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import ledger
from .errors import N_, InvalidInput, NotFound, Refused
from .models import Enrolment, Scheme, utcnow
from .refusals import movable

__all__ = (
    "CATEGORIES",
    "SchemeFile",
    "SchemeSummary",
    "get_scheme",
    "load_scheme",
    "move_to_reserve",
    "postcode_accepted",
    "read_scheme_file",
    "redeemed",
    "scheme_name",
    "scheme_status",
    "summary",
)

CATEGORIES = ("coaching", "retraining", "financial_advice")
Category = Literal["coaching", "retraining", "financial_advice"]
Cents = Annotated[int, msgspec.Meta(ge=0)]
_POSTCODE_RANGE = re.compile(r"^(\d{4})(?:-(\d{4}))?$")


class Eligibility(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_employees: Annotated[int, msgspec.Meta(ge=0)]
    """Entrepreneurs with more people working than this are not eligible."""
    postcodes: Annotated[list[str], msgspec.Meta(min_length=1)]
    """Accepted 4-digit postcode areas of the establishment, single (``6811``) or ranges (``6811-6846``)."""


class SchemeFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One scheme as written in ``schemes/*.toml``. Every figure is here, none in code."""

    slug: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
    name: str
    name_en: str
    allocation: Literal["first_come", "lottery"]
    budget_cents: Annotated[int, msgspec.Meta(gt=0)]
    max_places: Annotated[int, msgspec.Meta(gt=0)]
    value_cents: Annotated[int, msgspec.Meta(gt=0)]
    categories: Annotated[list[Category], msgspec.Meta(min_length=1)]
    applications_open_at: dt.datetime
    applications_close_at: dt.datetime
    validity_days: Annotated[int, msgspec.Meta(gt=0)]
    eligibility: Eligibility
    summary: str = ""
    summary_en: str = ""
    own_contribution_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    provider_cap_cents: Annotated[int, msgspec.Meta(gt=0)] | None = None
    hold_days: Annotated[int, msgspec.Meta(gt=0)] = 14
    """An online reservation the provider has not confirmed in this many days is released."""
    reversal_days: Annotated[int, msgspec.Meta(ge=0)] = 30
    """How long a coach may reverse their own redemption."""
    lottery_seed_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    """SHA-256 of the draw's seed, published before the window opens (lottery schemes)."""
    proof: Literal["email", "eherkenning"] = "email"
    """What an applicant proves: ``email`` (they type the KvK number and confirm their e-mail
    address) or ``eherkenning`` (they sign in with eHerkenning, and the KvK number comes from the
    login: it cannot be typed or changed)."""
    eherkenning_level: Literal["EH1", "EH2", "EH2+", "EH3", "EH4"] = "EH2+"
    """The lowest eHerkenning level of assurance an ``eherkenning`` scheme accepts."""

    def __post_init__(self) -> None:
        if self.applications_open_at.tzinfo is None or self.applications_close_at.tzinfo is None:
            raise ValueError("applications_open_at and applications_close_at need a time zone offset")
        if self.applications_close_at <= self.applications_open_at:
            raise ValueError("applications_close_at must be after applications_open_at")
        if self.allocation == "lottery" and self.lottery_seed_hash is None:
            raise ValueError("a lottery scheme needs lottery_seed_hash")
        if self.value_cents > self.budget_cents:
            raise ValueError("value_cents is larger than the whole budget")
        for item in self.eligibility.postcodes:
            if not _POSTCODE_RANGE.match(item):
                raise ValueError(f"postcode area {item!r} is not NNNN or NNNN-NNNN")


class SchemeSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The public figures of a scheme: no personal data."""

    slug: str
    name: str
    name_en: str
    status: str
    allocation: str
    categories: list[str]
    value_cents: int
    own_contribution_percent: int
    applications_open_at: dt.datetime
    applications_close_at: dt.datetime
    budget_cents: int
    committed_cents: int
    redeemed_cents: int
    left_cents: int
    max_places: int
    places_used: int
    places_left: int
    waiting_list_length: int
    lottery_seed_hash: str | None
    taken_at: dt.datetime


def read_scheme_file(path: Path) -> SchemeFile:
    try:
        return msgspec.toml.decode(path.read_bytes(), type=SchemeFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput("invalid-scheme-file", N_("Scheme file %(path)s: %(error)s"), path=str(path), error=str(exc)) from None


async def load_scheme(session: AsyncSession, spec: SchemeFile) -> tuple[Scheme, bool]:
    """Create the scheme, or update its rules if it exists. Returns ``(scheme, created)``.

    Money and places of an existing scheme are not changed by a file: those move only through
    ledger entries (``move_to_reserve``), so the figures stay reconcilable.
    """
    scheme = await session.scalar(select(Scheme).where(Scheme.slug == spec.slug).with_for_update())
    rules = {
        "name": spec.name,
        "name_en": spec.name_en,
        "summary": spec.summary,
        "summary_en": spec.summary_en,
        "allocation": spec.allocation,
        "categories": list(spec.categories),
        "value_cents": spec.value_cents,
        "own_contribution_percent": spec.own_contribution_percent,
        "provider_cap_cents": spec.provider_cap_cents,
        "max_employees": spec.eligibility.max_employees,
        "postcodes": list(spec.eligibility.postcodes),
        "applications_open_at": spec.applications_open_at,
        "applications_close_at": spec.applications_close_at,
        "validity_days": spec.validity_days,
        "hold_days": spec.hold_days,
        "reversal_days": spec.reversal_days,
        "lottery_seed_hash": spec.lottery_seed_hash,
        "proof": spec.proof,
        "eherkenning_level": spec.eherkenning_level if spec.proof == "eherkenning" else None,
    }
    if scheme is None:
        scheme = Scheme(slug=spec.slug, budget_cents=spec.budget_cents, max_places=spec.max_places, **rules)
        session.add(scheme)
        await session.flush()
        ledger.post(
            session,
            scheme_id=scheme.id,
            kind="fund",
            source=(ledger.FUNDING, scheme.id),
            target=(ledger.BUDGET, scheme.id),
            amount_cents=spec.budget_cents,
            memo=f"budget from {spec.slug}",
        )
        return scheme, True
    if scheme.drawn_at is not None and spec.lottery_seed_hash != scheme.lottery_seed_hash:
        raise Refused("seed-fixed", N_("The draw has taken place; its seed cannot change."))
    if spec.max_places < scheme.places_used:
        raise Refused("cap-below-use", N_("The cap cannot be lower than the places already used."))
    for key, value in rules.items():
        setattr(scheme, key, value)
    scheme.max_places = spec.max_places
    return scheme, False


_BY_SLUG = select(Scheme).where(Scheme.slug == bindparam("slug"))  # built once: every application reads it


async def get_scheme(session: AsyncSession, slug: str) -> Scheme:
    scheme = await session.scalar(_BY_SLUG, {"slug": slug})
    if scheme is None:
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    return scheme


def scheme_status(scheme: Scheme, now: dt.datetime | None = None) -> str:
    """``upcoming``, ``open`` (taking applications), ``running`` (window over, vouchers still
    usable) or ``closed`` (ended by the municipality)."""
    now = now or utcnow()
    if scheme.closed_at is not None:
        return "closed"
    if now < scheme.applications_open_at:
        return "upcoming"
    if now < scheme.applications_close_at:
        return "open"
    return "running"


def scheme_name(scheme: Scheme, locale: str) -> str:
    """The scheme's name in a reader's language (``nl`` or ``en``), for mails and pages."""
    return scheme.name if locale == "nl" else scheme.name_en


def postcode_accepted(scheme: Scheme, postcode: str) -> bool:
    area = int(postcode[:4])
    for item in scheme.postcodes:
        low, _, high = item.partition("-")
        if int(low) <= area <= int(high or low):
            return True
    return False


_REDEEMED = (select(func.coalesce(func.sum(Enrolment.received_cents), 0))
             .where(Enrolment.scheme_id == bindparam("scheme_id")))


async def redeemed(session: AsyncSession, scheme_id: int) -> int:
    """What the scheme's vouchers have paid providers, less reversals: the sum of what each
    provider received, one row per provider, so it does not grow with the vouchers."""
    return int(await session.scalar(_REDEEMED, {"scheme_id": scheme_id}) or 0)


async def summary(session: AsyncSession, scheme: Scheme) -> SchemeSummary:
    """Public figures. Reads stored counters (one per scheme or per provider), so its cost does
    not grow with the vouchers."""
    return SchemeSummary(
        slug=scheme.slug,
        name=scheme.name,
        name_en=scheme.name_en,
        status=scheme_status(scheme),
        allocation=scheme.allocation,
        categories=list(scheme.categories),
        value_cents=scheme.value_cents,
        own_contribution_percent=scheme.own_contribution_percent,
        applications_open_at=scheme.applications_open_at,
        applications_close_at=scheme.applications_close_at,
        budget_cents=scheme.budget_cents,
        committed_cents=scheme.committed_cents,
        redeemed_cents=await redeemed(session, scheme.id),
        left_cents=scheme.budget_cents - scheme.committed_cents,
        max_places=scheme.max_places,
        places_used=scheme.places_used,
        places_left=scheme.max_places - scheme.places_used,
        waiting_list_length=scheme.waiting_count,
        lottery_seed_hash=scheme.lottery_seed_hash,
        taken_at=utcnow(),
    )


async def move_to_reserve(session: AsyncSession, scheme: Scheme, amount_cents: int, *, memo: str) -> None:
    """Move money between the budget and the reserve; negative moves it back to the budget.

    The conditional UPDATE refuses to take money that is already committed to vouchers.
    """
    if amount_cents == 0:
        raise InvalidInput("amount-zero", N_("The amount must not be zero."), field="amount_cents")
    result = await session.execute(
        update(Scheme)
        .where(
            Scheme.id == scheme.id,
            movable(Scheme.budget_cents, Scheme.reserve_cents, Scheme.committed_cents, amount_cents),
        )
        .values(budget_cents=Scheme.budget_cents - amount_cents, reserve_cents=Scheme.reserve_cents + amount_cents)
        .returning(Scheme.budget_cents)
    )
    if result.first() is None:
        raise Refused("not-enough-money", N_("There is not enough uncommitted money for this move."))
    budget, reserve = (ledger.BUDGET, scheme.id), (ledger.RESERVE, scheme.id)
    source, target = (budget, reserve) if amount_cents > 0 else (reserve, budget)
    ledger.post(session, scheme_id=scheme.id, kind="reserve", source=source, target=target,
                amount_cents=abs(amount_cents), memo=memo)
