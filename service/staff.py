"""The provider side of the service: applying to take part in a scheme, and staff accounts
that sign in to the coach pages.

Whoever signs up on the web confirms the address with a mailed link and becomes the provider's
first account, without a password; approval mails them a one-time link to choose one
(``service.account_links``). Accounts invite colleagues the same way, and a forgotten password
is reset through a shorter-lived link, which also ends every open session of the account
(``service.sessions``; ``ProviderUser.session_generation`` is raised too).

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
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from . import account_links, outbox, providers, ratelimit, schemes, sessions
from .errors import N_, Conflict, InvalidInput, NotFound, Refused
from .mail_links import CONFIRM_PROVIDER, provider_confirm_link as confirm_link  # noqa: F401
from .models import AccountLink, Enrolment, Provider, ProviderUser, Scheme, utcnow
from .runtime import Runtime

__all__ = (
    "LOCK_AFTER",
    "LOCK_FOR",
    "RESET_HOURS",
    "SETUP_HOURS",
    "ProviderApplication",
    "SignInRefused",
    "apply",
    "authenticate",
    "confirm_link",
    "confirm_provider",
    "create_user",
    "invite",
    "new_password",
    "password_account",
    "remove",
    "request_reset",
    "set_password",
    "setup_link",
    "team",
)

LOCK_AFTER = 5
"""Failed sign-ins in a row that lock an account."""
LOCK_FOR = dt.timedelta(minutes=15)
MIN_PASSWORD = 12
SETUP_HOURS = 72
"""How long a mailed link to choose a first password works."""
RESET_HOURS = 2
"""How long a mailed link to reset a forgotten password works."""
RESET_MAILS_PER_HOUR = 3
"""Reset mails one address gets per hour at most, so the form cannot be used to flood a mailbox."""

_hasher = PasswordHasher()
# Verified against when the e-mail address is unknown, so that a wrong address takes as long as
# a wrong password and the answer time does not tell which addresses have accounts.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s\x00-\x1f\x7f-\x9f\ufeff]{1,64}@[^@\s\x00-\x1f\x7f-\x9f\ufeff]+\.[^@\s\x00-\x1f\x7f-\x9f\ufeff]+$",
                                    max_length=254)]


class ProviderApplication(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a provider sends to take part in a scheme."""

    scheme: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    contact_name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    """Who applies; they become the provider's first account (the form requires it)."""
    kvk_number: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{8}$")]
    email: Email
    iban: Annotated[str, msgspec.Meta(min_length=15, max_length=42)]
    categories: Annotated[list[str], msgspec.Meta(min_length=1, max_length=3)]
    website: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s\x00-\x1f\x7f-\x9f\ufeff]+$",
                                         max_length=300)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    locale: Annotated[str, msgspec.Meta(pattern=r"^(nl|en)$")] = "nl"
    """The language of the mails to the provider (``nl`` or ``en``); the form sends the page's."""


class SignInRefused(Refused):
    """Wrong address or password, or a locked account. The message never says which of the
    first two it was."""


async def apply(session: AsyncSession, details: ProviderApplication) -> Enrolment:
    """Register a provider (or find it by KvK number) and ask to take part in a scheme.

    A new provider's address is confirmed first (the mail carries the link); the municipality
    then decides on ``/beheer/aanbieders``, with ``vouchers provider approve`` or the admin API.
    A provider that already exists must use the same e-mail address, so nobody can enrol someone
    else's firm.
    """
    scheme = await session.scalar(select(Scheme).where(Scheme.slug == details.scheme))
    if scheme is None or scheme.closed_at is not None:
        raise NotFound("scheme-not-found", N_("There is no open scheme with this name."), field="scheme")
    provider = await session.scalar(select(Provider).where(Provider.kvk_number == details.kvk_number))
    if provider is None:
        provider = await providers.add_provider(session, providers.ProviderDetails(
            name=details.name, kvk_number=details.kvk_number, email=details.email, iban=details.iban,
            website=details.website, description=details.description, locale=details.locale), confirmed=False)
        provider.contact_name = details.contact_name.strip() or details.name.strip()
    elif provider.email.lower() != details.email.strip().lower():
        raise Conflict("provider-exists", N_("A provider with this KvK number already exists. "
                                             "Apply with the e-mail address we know for it."), field="kvk_number")
    else:
        providers.normalise_iban(details.iban)  # a wrong IBAN is refused even for a known provider
    enrolment = await providers.enrol(session, scheme, provider, list(details.categories))
    params = {"confirm_provider_for": provider.id} if provider.email_confirmed_at is None else {}
    outbox.enqueue(session, to=provider.email, template="provider_application_received", locale=provider.locale,
                   provider_name=provider.name, scheme_name=schemes.scheme_name(scheme, provider.locale), **params)
    return enrolment


def confirm_token_valid(rt: Runtime, token: str) -> bool:
    return rt.unsign(CONFIRM_PROVIDER, token) is not None


async def confirm_provider(session: AsyncSession, rt: Runtime, token: str) -> Provider | None:
    """Confirm a sign-up's address; its contact becomes the provider's first account, without a
    password until approval mails a link. None when the link is forged or too old. Confirming
    twice changes nothing (the first did it)."""
    value = rt.unsign(CONFIRM_PROVIDER, token)
    if value is None or not value.isdigit():
        return None
    confirmed = await session.execute(
        update(Provider).where(Provider.id == int(value), Provider.email_confirmed_at.is_(None))
        .values(email_confirmed_at=utcnow()).returning(Provider.id))
    provider = await session.get(Provider, int(value), populate_existing=True)
    if confirmed.first() is not None and provider is not None:
        email = provider.email.strip().lower()
        # An address that already has an account (with another provider) keeps that one.
        if await session.scalar(select(ProviderUser.id).where(ProviderUser.email == email)) is None:
            session.add(ProviderUser(provider_id=provider.id, email=email, name=provider.contact_name or provider.name,
                                     password_hash=None, failed_attempts=0))
            await session.flush()
    return provider


async def setup_link(session: AsyncSession, rt: Runtime, user: ProviderUser) -> AccountLink:
    """A one-time link for ``user`` to choose a first password (earlier links stop working)."""
    return await account_links.issue(session, rt, purpose="setup", hours=SETUP_HOURS, provider_user_id=user.id)


async def team(session: AsyncSession, provider_id: int) -> list[ProviderUser]:
    return list(await session.scalars(select(ProviderUser).where(ProviderUser.provider_id == provider_id,
                                                                 ProviderUser.disabled_at.is_(None))
                                      .order_by(ProviderUser.name, ProviderUser.id)))


async def invite(session: AsyncSession, rt: Runtime, *, provider_id: int, email: str, name: str,
                 invited_by: str) -> ProviderUser:
    """A colleague's account without a password; they are mailed a link to choose one."""
    try:
        email = msgspec.convert(email.strip().lower(), Email)
    except msgspec.ValidationError:
        raise InvalidInput("email-invalid", N_("Fill in a valid e-mail address, for example naam@voorbeeld.nl."),
                           field="email") from None
    if not name.strip() or len(name) > 200:
        raise InvalidInput("name-missing", N_("Fill in your colleague's name."), field="name")
    provider = await session.get(Provider, provider_id)
    if provider is None:
        raise NotFound("provider-not-found", N_("There is no such provider."))
    user = ProviderUser(provider_id=provider_id, email=email, name=name.strip(), password_hash=None, failed_attempts=0)
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError:
        raise Conflict("account-exists", N_("There is already an account with this e-mail address."),
                       field="email") from None
    link = await setup_link(session, rt, user)
    outbox.enqueue(session, to=email, template="provider_invite", locale=provider.locale, name=user.name,
                   provider_name=provider.name, invited_by=invited_by, account_link_id=link.id, hours=SETUP_HOURS)
    return user


async def remove(session: AsyncSession, *, provider_id: int, user_id: int, removed_by: int) -> None:
    """Take a colleague's account away: it signs in no more, and its open sessions end at once."""
    if user_id == removed_by:
        raise Refused("remove-self", N_("You cannot remove your own account. Ask a colleague."))
    user = await session.get(ProviderUser, user_id)
    if user is None or user.provider_id != provider_id:
        raise NotFound("account-not-found", N_("There is no such account."))
    await session.execute(delete(AccountLink).where(AccountLink.provider_user_id == user_id))
    await sessions.delete_of(session, "provider-staff", [user_id])
    await session.delete(user)
    await session.flush()


async def password_account(session: AsyncSession, rt: Runtime, token: str) -> ProviderUser | None:
    """The account a set-password or reset link belongs to, while the link is valid and unused."""
    link = await account_links.find(session, rt, token, kind="provider")
    if link is None:
        return None
    user = await session.get(ProviderUser, link.provider_user_id)
    return None if user is None or user.disabled_at is not None else user


async def set_password(session: AsyncSession, rt: Runtime, token: str, *, password: str, repeat: str,
                       now: dt.datetime | None = None) -> ProviderUser:
    """Set the password from a mailed link, once. Every session the account had ends."""
    now = now or utcnow()
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("password-too-short", N_("The password must be at least 12 characters."), field="password")
    if password != repeat:
        raise InvalidInput("password-mismatch", N_("The two passwords are not the same."), field="repeat")
    link = await account_links.find(session, rt, token, kind="provider", now=now)
    if link is None or not await account_links.use(session, link, now=now):
        raise Refused("link-used", N_("This link has already been used or is too old."))
    await session.execute(
        update(ProviderUser).where(ProviderUser.id == link.provider_user_id)
        .values(password_hash=_hasher.hash(password), failed_attempts=0, locked_until=None,
                session_generation=ProviderUser.session_generation + 1))
    await sessions.revoke_all(session, "provider-staff", link.provider_user_id)
    return await session.get_one(ProviderUser, link.provider_user_id, populate_existing=True)


async def request_reset(session: AsyncSession, rt: Runtime, email: str) -> bool:
    """Mail a reset link if this address has an account. The caller answers the same either way,
    so nobody learns which addresses have accounts; returns whether a mail was queued."""
    address = email.strip().lower()[:254]
    if "@" not in address:
        return False
    # Counted for every address asked about, known or not, so both take the same work; keyed by
    # a hash, so the counters hold no addresses.
    sent = await ratelimit.count_attempt(session, f"password-reset:{rt.token_hash(address).hex()[:40]}",
                                         window_seconds=3600)
    user = await session.scalar(select(ProviderUser).where(ProviderUser.email == address,
                                                           ProviderUser.disabled_at.is_(None)))
    if user is None or sent > RESET_MAILS_PER_HOUR:
        return False
    # A sign-up's contact chooses a first password only once the municipality approved it.
    if user.password_hash is None and await session.scalar(select(Enrolment.id).where(
            Enrolment.provider_id == user.provider_id, Enrolment.status == "approved").limit(1)) is None:
        return False
    provider = await session.get_one(Provider, user.provider_id)
    link = await account_links.issue(session, rt, purpose="reset", hours=RESET_HOURS, provider_user_id=user.id)
    outbox.enqueue(session, to=user.email, template="provider_password_reset", locale=provider.locale,
                   name=user.name, account_link_id=link.id, hours=RESET_HOURS)
    return True


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
    await sessions.revoke_all(session, "provider-staff", user.id)
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
    if user is None or user.disabled_at is not None or user.password_hash is None:
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
