"""The provider side of the service: applying to take part in a scheme, and staff accounts
that sign in to the coach pages.

Passwords are hashed with argon2id (argon2-cffi). Failed sign-ins are counted on the account
row with conditional UPDATEs, so the lock-out holds across every server process; the web layer
adds a per-address rate limit on top (``service.ratelimit``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox, providers, schemes
from .errors import N_, Conflict, InvalidInput, NotFound, Refused
from .models import Enrolment, Provider, ProviderUser, Scheme, utcnow

__all__ = (
    "LOCK_AFTER",
    "LOCK_FOR",
    "ProviderApplication",
    "SignInRefused",
    "apply",
    "authenticate",
    "create_user",
    "new_password",
)

LOCK_AFTER = 5
"""Failed sign-ins in a row that lock an account."""
LOCK_FOR = dt.timedelta(minutes=15)
MIN_PASSWORD = 12

_hasher = PasswordHasher()
# Verified against when the e-mail address is unknown, so that a wrong address takes as long as
# a wrong password and the answer time does not tell which addresses have accounts.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$", max_length=254)]


class ProviderApplication(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a provider sends to take part in a scheme."""

    scheme: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kvk_number: Annotated[str, msgspec.Meta(pattern=r"^\d{8}$")]
    email: Email
    iban: Annotated[str, msgspec.Meta(min_length=15, max_length=42)]
    categories: Annotated[list[str], msgspec.Meta(min_length=1, max_length=3)]
    website: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=300)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    locale: Annotated[str, msgspec.Meta(pattern=r"^(nl|en)$")] = "nl"
    """The language of the mails to the provider (``nl`` or ``en``); the form sends the page's."""


class SignInRefused(Refused):
    """Wrong address or password, or a locked account. The message never says which of the
    first two it was."""


async def apply(session: AsyncSession, details: ProviderApplication) -> Enrolment:
    """Register a provider (or find it by KvK number) and ask to take part in a scheme.

    The municipality decides with ``vouchers provider approve`` or the admin API. A provider that
    already exists must use the same e-mail address, so nobody can enrol someone else's firm.
    """
    scheme = await session.scalar(select(Scheme).where(Scheme.slug == details.scheme))
    if scheme is None or scheme.closed_at is not None:
        raise NotFound("scheme-not-found", N_("There is no open scheme with this name."), field="scheme")
    provider = await session.scalar(select(Provider).where(Provider.kvk_number == details.kvk_number))
    if provider is None:
        provider = await providers.add_provider(session, providers.ProviderDetails(
            name=details.name, kvk_number=details.kvk_number, email=details.email, iban=details.iban,
            website=details.website, description=details.description, locale=details.locale))
    elif provider.email.lower() != details.email.strip().lower():
        raise Conflict("provider-exists", N_("A provider with this KvK number already exists. "
                                             "Apply with the e-mail address we know for it."), field="kvk_number")
    else:
        providers.normalise_iban(details.iban)  # a wrong IBAN is refused even for a known provider
    enrolment = await providers.enrol(session, scheme, provider, list(details.categories))
    outbox.enqueue(session, to=provider.email, template="provider_application_received", locale=provider.locale,
                   provider_name=provider.name, scheme_name=schemes.scheme_name(scheme, provider.locale))
    return enrolment


def new_password() -> str:
    """A random password for a new account, handed over once."""
    return secrets.token_urlsafe(15)


async def create_user(session: AsyncSession, *, provider_id: int, email: str, name: str, password: str) -> ProviderUser:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("password-too-short", N_("The password must be at least 12 characters."), field="password")
    if await session.get(Provider, provider_id) is None:
        raise NotFound("provider-not-found", N_("There is no such provider."))
    user = ProviderUser(provider_id=provider_id, email=email.strip().lower(), name=name.strip(),
                        password_hash=_hasher.hash(password), failed_attempts=0)
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError:
        raise Conflict("account-exists", N_("There is already an account with this e-mail address."),
                       field="email") from None
    return user


async def reset_password(session: AsyncSession, email: str) -> str:
    """A new random password for an account, returned once; a lock-out ends with it."""
    user = await session.scalar(select(ProviderUser).where(ProviderUser.email == email.strip().lower()))
    if user is None:
        raise NotFound("account-not-found", N_("There is no account with this e-mail address."))
    password = new_password()
    user.password_hash = _hasher.hash(password)
    user.failed_attempts = 0
    user.locked_until = None
    await session.flush()
    return password


async def authenticate(session: AsyncSession, email: str, password: str, *,
                       now: dt.datetime | None = None) -> ProviderUser | SignInRefused:
    """The account for this address and password, or the refusal to show.

    The refusal is returned, not raised: the caller must commit the failure count before it
    answers (a raised error would roll it back). Each failure adds one to the account's count;
    the ``LOCK_AFTER``-th locks it for ``LOCK_FOR``. While locked even the right password is
    refused, so guessing gains nothing.
    """
    now = now or utcnow()
    user = await session.scalar(select(ProviderUser).where(ProviderUser.email == email.strip().lower()))
    if user is None or user.disabled_at is not None:
        _verify(_DUMMY_HASH, password)
        return SignInRefused("sign-in-failed", N_("The e-mail address or password is not correct."), field="password")
    if user.locked_until is not None and user.locked_until > now:
        return _locked()
    if not _verify(user.password_hash, password):
        await session.execute(
            update(ProviderUser)
            .where(ProviderUser.id == user.id)
            .values(failed_attempts=ProviderUser.failed_attempts + 1)
        )
        # A separate conditional UPDATE, so that concurrent failures still lock exactly once.
        locked = await session.execute(
            update(ProviderUser)
            .where(ProviderUser.id == user.id, ProviderUser.failed_attempts >= LOCK_AFTER)
            .values(failed_attempts=0, locked_until=now + LOCK_FOR)
            .returning(ProviderUser.id)
        )
        if locked.first() is not None:
            return _locked()
        return SignInRefused("sign-in-failed", N_("The e-mail address or password is not correct."), field="password")
    values: dict[str, object] = {"failed_attempts": 0, "locked_until": None, "last_sign_in_at": now}
    if _hasher.check_needs_rehash(user.password_hash):
        values["password_hash"] = _hasher.hash(password)
    await session.execute(update(ProviderUser).where(ProviderUser.id == user.id).values(**values))
    return user


def _locked() -> SignInRefused:
    minutes = int(LOCK_FOR.total_seconds() // 60)
    return SignInRefused("account-locked", N_("This account is locked after too many failed attempts. "
                                              "Try again in %(minutes)s minutes."), minutes=minutes, field="password")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
