"""Providers (aanbieders), their participation in schemes, and API tokens."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from stdnum import iban as stdnum_iban
from stdnum.exceptions import ValidationError

from . import i18n, revocations
from .codes import new_token
from .errors import N_, Conflict, InvalidInput, NotFound
from .models import ApiToken, Enrolment, Provider, Scheme, utcnow
from .runtime import Runtime
from .schemes import CATEGORIES

__all__ = ("ProviderDetails", "add_provider", "authenticate_token", "create_token", "decide_enrolment",
           "enrol", "revoke_token", "set_mail_locale", "slugify")


class ProviderDetails(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kvk_number: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{8}$")]
    email: Annotated[str, msgspec.Meta(
        pattern=r"^[^@\s\x00-\x1f\x7f-\x9f\ufeff]{1,64}@[^@\s\x00-\x1f\x7f-\x9f\ufeff]+\.[^@\s\x00-\x1f\x7f-\x9f\ufeff]+$", max_length=254)]
    iban: Annotated[str, msgspec.Meta(min_length=15, max_length=42)]
    website: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s\x00-\x1f\x7f-\x9f\ufeff]+$",
                                         max_length=300)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    locale: Annotated[str, msgspec.Meta(pattern=r"^(nl|en)$")] = "nl"
    """The language of the mails to the provider."""


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "aanbieder"


def normalise_iban(value: str) -> str:
    try:
        return stdnum_iban.validate(value)
    except ValidationError:
        raise InvalidInput("iban-invalid", N_("This is not a valid IBAN."), field="iban") from None


async def add_provider(session: AsyncSession, details: ProviderDetails, *, confirmed: bool = True) -> Provider:
    """A provider; one added by staff (``confirmed``) needs no confirmation of its address."""
    base = slugify(details.name)
    taken = set(await session.scalars(select(Provider.slug).where(Provider.slug.like(f"{base}%"))))
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    provider = Provider(
        slug=slug,
        name=details.name.strip(),
        kvk_number=details.kvk_number,
        email=details.email.strip(),
        iban=normalise_iban(details.iban),
        website=details.website,
        description=details.description.strip(),
        locale=details.locale,
        email_confirmed_at=utcnow() if confirmed else None,
    )
    try:
        async with session.begin_nested():
            session.add(provider)
            await session.flush()
    except IntegrityError:
        raise Conflict("provider-exists", N_("A provider with this KvK number already exists."), field="kvk_number") from None
    return provider


async def enrol(session: AsyncSession, scheme: Scheme, provider: Provider, categories: list[str]) -> Enrolment:
    """Ask to take part in a scheme; the municipality decides."""
    unknown = [c for c in categories if c not in CATEGORIES or c not in scheme.categories]
    if unknown or not categories:
        raise InvalidInput("category-not-allowed", N_("Choose one or more of the scheme's categories."), field="categories")
    enrolment = Enrolment(scheme_id=scheme.id, provider_id=provider.id, status="pending", categories=sorted(set(categories)),
                          scheme_closed_at=scheme.closed_at)
    try:
        async with session.begin_nested():
            session.add(enrolment)
            await session.flush()
    except IntegrityError:
        raise Conflict("already-enrolled", N_("This provider has already applied for this scheme.")) from None
    return enrolment


async def decide_enrolment(session: AsyncSession, enrolment_id: int, *, approve: bool, reason: str = "",
                           categories: list[str] | None = None) -> Enrolment:
    enrolment = await session.get(Enrolment, enrolment_id)
    if enrolment is None:
        raise NotFound("enrolment-not-found", N_("There is no such provider application."))
    values: dict[str, object] = {"status": "approved" if approve else "refused", "decided_at": utcnow(),
                                 "decision_reason": reason}
    if categories is not None:
        values["categories"] = sorted(set(categories) & set(enrolment.categories)) or enrolment.categories
    await session.execute(update(Enrolment).where(Enrolment.id == enrolment_id).values(**values))
    await session.refresh(enrolment)
    return enrolment


async def create_token(session: AsyncSession, rt: Runtime, *, role: str, name: str, provider_id: int | None) -> str:
    """Create an API token; the plain token is returned once and never stored."""
    if role == "coach" and provider_id is None:
        raise InvalidInput("provider-required", N_("A coach token belongs to a provider."), field="provider")
    token = new_token()
    session.add(ApiToken(token_hash=rt.token_hash(token), role=role, name=name, provider_id=provider_id))
    await session.flush()
    return token


async def authenticate_token(session: AsyncSession, rt: Runtime, token: str) -> ApiToken | None:
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == rt.token_hash(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


async def revoke_token(session: AsyncSession, token_id: int) -> ApiToken:
    """Stop a token from working, on every server at once when the transaction commits (see
    ``service.revocations``)."""
    result = await session.execute(
        update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow()).returning(ApiToken.id)
    )
    if result.first() is None:
        raise NotFound("token-not-found", N_("There is no such token, or it was revoked already."))
    await revocations.announce(session)
    return await session.get_one(ApiToken, token_id)


async def set_mail_locale(session: AsyncSession, provider_id: int, locale: str) -> Provider:
    """The language of the provider's mails from now on (mails already queued keep theirs)."""
    if locale not in i18n.LOCALES:
        raise InvalidInput("locale-unknown", N_("Choose Dutch or English."), field="locale")
    provider = await session.get(Provider, provider_id)
    if provider is None:
        raise NotFound("provider-not-found", N_("There is no such provider."))
    provider.locale = locale
    await session.flush()
    return provider
