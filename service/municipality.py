"""Municipality staff accounts: roles, passwords (argon2id) and a TOTP second factor (pyotp).

An account is created by ``vouchers staff add``, which prints a one-time setup link
(``service.account_links``, shared with provider accounts). Following it, the staff member chooses a password and adds the TOTP secret to an authenticator app
(shown as text and as a QR code), then proves it with one code; the link then stops working.

Signing in takes two steps, password then code. Failures of either are counted on the account
row with conditional UPDATEs; the ``LOCK_AFTER``-th in a row locks it for ``LOCK_FOR`` in every
server process. A TOTP code is accepted once (the last used time step is stored).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from typing import Annotated

import msgspec
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from . import account_links, sessions
from .errors import N_, Conflict, InvalidInput, NotFound, Refused
from .models import utcnow
from .models_admin import STAFF_ROLES, StaffUser
from .runtime import Runtime

__all__ = (
    "LOCK_AFTER",
    "LOCK_FOR",
    "MIN_PASSWORD",
    "SETUP_HOURS",
    "StaffSignInRefused",
    "check_password",
    "check_code",
    "complete_setup",
    "create_staff",
    "otpauth_uri",
    "reset_setup",
    "setup_account",
    "setup_link",
    "totp_secret",
)

LOCK_AFTER = 5
LOCK_FOR = dt.timedelta(minutes=15)
MIN_PASSWORD = 12
SETUP_HOURS = 48
ISSUER = "Gemeente Arnhem vouchers"

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s\x00-\x1f\x7f-\x9f\ufeff]{1,64}@[^@\s\x00-\x1f\x7f-\x9f\ufeff]+\.[^@\s\x00-\x1f\x7f-\x9f\ufeff]+$",
                                    max_length=254)]


class StaffSignInRefused(Refused):
    """Wrong address, password or code, or a locked account; never says which of the first three."""


def _cipher(rt: Runtime) -> AESGCM:
    return AESGCM(rt.settings.derive_key("staff-totp"))


def _seal(rt: Runtime, secret: str, user_email: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + _cipher(rt).encrypt(nonce, secret.encode(), user_email.encode())


def totp_secret(rt: Runtime, user: StaffUser) -> str:
    """The account's TOTP secret (base32), decrypted."""
    blob = bytes(user.totp_secret)
    return _cipher(rt).decrypt(blob[:12], blob[12:], user.email.encode()).decode()


def otpauth_uri(rt: Runtime, user: StaffUser) -> str:
    return pyotp.TOTP(totp_secret(rt, user)).provisioning_uri(name=user.email, issuer_name=ISSUER)


async def setup_link(session: AsyncSession, rt: Runtime, user: StaffUser) -> str:
    """A new one-time setup link for the account (earlier ones stop working)."""
    link = await account_links.issue(session, rt, purpose="setup", hours=SETUP_HOURS, staff_user_id=user.id)
    return account_links.url(rt, link)


async def create_staff(session: AsyncSession, rt: Runtime, *, email: str, name: str, role: str) -> StaffUser:
    """A new account, not yet usable: it is set up through :func:`setup_link`."""
    if role not in STAFF_ROLES:
        raise InvalidInput("role-unknown", N_("Choose one of the roles."), field="role")
    try:
        email = msgspec.convert(email.strip().lower(), Email)
    except msgspec.ValidationError:
        raise InvalidInput("email-invalid", N_("Fill in a valid e-mail address, for example naam@voorbeeld.nl."),
                           field="email") from None
    user = StaffUser(email=email, name=name.strip() or email, role=role, password_hash=None,
                     totp_secret=_seal(rt, pyotp.random_base32(), email), failed_attempts=0, last_totp_step=0)
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError:
        raise Conflict("account-exists", N_("There is already an account with this e-mail address."),
                       field="email") from None
    return user


async def reset_setup(session: AsyncSession, rt: Runtime, email: str) -> StaffUser:
    """A lost phone or password: a new TOTP secret; the old password stops working. The caller
    makes a new :func:`setup_link`."""
    user = await session.scalar(select(StaffUser).where(StaffUser.email == email.strip().lower()))
    if user is None:
        raise NotFound("account-not-found", N_("There is no account with this e-mail address."))
    user.totp_secret = _seal(rt, pyotp.random_base32(), user.email)
    user.password_hash = None
    user.activated_at = None
    user.last_totp_step = 0
    user.failed_attempts = 0
    user.locked_until = None
    await session.flush()
    await sessions.revoke_all(session, "staff", user.id)
    return user


async def set_disabled(session: AsyncSession, email: str, disabled: bool) -> StaffUser:
    user = await session.scalar(select(StaffUser).where(StaffUser.email == email.strip().lower()))
    if user is None:
        raise NotFound("account-not-found", N_("There is no account with this e-mail address."))
    user.disabled_at = utcnow() if disabled else None
    await session.flush()
    if disabled:  # signed out at once, everywhere
        await sessions.revoke_all(session, "staff", user.id)
    return user


async def setup_account(session: AsyncSession, rt: Runtime, token: str) -> StaffUser | None:
    """The account a setup link belongs to, while the link is valid and unused."""
    link = await account_links.find(session, rt, token, kind="staff")
    if link is None:
        return None
    user = await session.get(StaffUser, link.staff_user_id)
    if user is None or user.disabled_at is not None:
        return None
    return user


def _step(now: dt.datetime) -> int:
    return int(now.timestamp()) // 30


def _matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step (now, or one either side for clock drift) whose code this is."""
    code = code.replace(" ", "").strip()
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    for offset in (0, -1, 1):
        step = _step(now) + offset
        if secrets.compare_digest(totp.at(step * 30), code):
            return step
    return None


async def complete_setup(session: AsyncSession, rt: Runtime, token: str, *, password: str, repeat: str,
                         code: str, now: dt.datetime | None = None) -> StaffUser:
    """Set the password and confirm the authenticator app with one code; the link is then used."""
    now = now or utcnow()
    link = await account_links.find(session, rt, token, kind="staff", now=now)
    user = None if link is None else await session.get(StaffUser, link.staff_user_id)
    if link is None or user is None or user.disabled_at is not None:
        raise Refused("setup-used", N_("This link has already been used."))
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("password-too-short", N_("The password must be at least 12 characters."), field="password")
    if password != repeat:
        raise InvalidInput("password-mismatch", N_("The two passwords are not the same."), field="repeat")
    step = _matching_step(totp_secret(rt, user), code, now)
    if step is None:
        raise InvalidInput("code-wrong", N_("This code is not correct. Type the 6 digits your app shows now."),
                           field="code")
    if not await account_links.use(session, link, now=now):
        raise Refused("setup-used", N_("This link has already been used."))
    await session.execute(
        update(StaffUser).where(StaffUser.id == user.id)
        .values(password_hash=_hasher.hash(password), activated_at=now, last_totp_step=step, failed_attempts=0,
                locked_until=None)
    )
    await sessions.revoke_all(session, "staff", user.id)
    await session.refresh(user)
    return user


def _refused() -> StaffSignInRefused:
    return StaffSignInRefused("sign-in-failed", N_("The e-mail address or password is not correct."),
                              field="password")


def _locked() -> StaffSignInRefused:
    minutes = int(LOCK_FOR.total_seconds() // 60)
    return StaffSignInRefused("account-locked", N_("This account is locked after too many failed attempts. "
                                                   "Try again in %(minutes)s minutes."), minutes=minutes,
                              field="password")


async def _count_failure(session: AsyncSession, user_id: int, now: dt.datetime) -> bool:
    """One more failure; True when it locked the account."""
    await session.execute(update(StaffUser).where(StaffUser.id == user_id)
                          .values(failed_attempts=StaffUser.failed_attempts + 1))
    locked = await session.execute(
        update(StaffUser)
        .where(StaffUser.id == user_id, StaffUser.failed_attempts >= LOCK_AFTER)
        .values(failed_attempts=0, locked_until=now + LOCK_FOR)
        .returning(StaffUser.id)
    )
    return locked.first() is not None


async def check_password(session: AsyncSession, email: str, password: str, *,
                         now: dt.datetime | None = None) -> StaffUser | StaffSignInRefused:
    """Step one. Returns the refusal rather than raising it: the caller commits the count first."""
    now = now or utcnow()
    user = await session.scalar(select(StaffUser).where(StaffUser.email == email.strip().lower()))
    if user is None or user.disabled_at is not None or user.password_hash is None:
        _verify(_DUMMY_HASH, password)
        return _refused()
    if user.locked_until is not None and user.locked_until > now:
        return _locked()
    if not _verify(user.password_hash, password):
        return _locked() if await _count_failure(session, user.id, now) else _refused()
    if _hasher.check_needs_rehash(user.password_hash):
        await session.execute(update(StaffUser).where(StaffUser.id == user.id)
                              .values(password_hash=_hasher.hash(password)))
    return user


async def check_code(session: AsyncSession, rt: Runtime, user_id: int, code: str, *,
                     now: dt.datetime | None = None) -> StaffUser | StaffSignInRefused:
    """Step two: the TOTP code, once per time step. Success resets the failure count."""
    now = now or utcnow()
    user = await session.get(StaffUser, user_id)
    if user is None or user.disabled_at is not None or user.password_hash is None:
        return _refused()
    if user.locked_until is not None and user.locked_until > now:
        return _locked()
    step = _matching_step(totp_secret(rt, user), code, now)
    if step is not None:
        used = await session.execute(
            update(StaffUser)
            .where(StaffUser.id == user.id, StaffUser.last_totp_step < step)
            .values(last_totp_step=step, failed_attempts=0, locked_until=None, last_sign_in_at=now)
            .returning(StaffUser.id)
        )
        if used.first() is not None:
            await session.refresh(user)
            return user
    if await _count_failure(session, user.id, now):
        return _locked()
    return StaffSignInRefused("code-wrong", N_("This code is not correct. Type the 6 digits your app shows now."),
                              field="code")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def role_from_groups(groups: object, mapping: list[tuple[str, str]]) -> str | None:
    """The role the first mapped group gives (``Settings.staff_roles``); None without one."""
    have = {g for g in groups if isinstance(g, str)} if isinstance(groups, list) else set()
    for group, role in mapping:
        if group in have:
            return role
    return None


async def sso_account(session: AsyncSession, rt: Runtime, *, subject: str, email: str | None, name: str,
                      role: str) -> StaffUser:
    """The account of a person the municipality's own provider signed in, with ``role`` from
    their groups: found by the provider's subject, else linked by e-mail address (an account made
    with ``vouchers staff add``), else made. An account disabled here stays refused."""
    user = await session.scalar(select(StaffUser).where(StaffUser.sso_subject == subject))
    if user is None and email:
        user = await session.scalar(select(StaffUser).where(StaffUser.email == email.strip().lower(),
                                                            StaffUser.sso_subject.is_(None)))
        if user is not None:
            user.sso_subject = subject
    if user is None:
        if not email:
            raise Refused("sso-no-email", N_("Your account at the municipality has no e-mail address."))
        user = await create_staff(session, rt, email=email, name=name, role=role)
        user.sso_subject = subject
        user.activated_at = utcnow()
    if user.disabled_at is not None:
        raise StaffSignInRefused("account-disabled", N_("This account has been disabled."))
    # The provider's groups decide the role, at every sign-in.
    user.role = role
    user.name = name.strip() or user.name
    user.last_sign_in_at = utcnow()
    await session.flush()
    return user
