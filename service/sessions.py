"""Sessions of signed-in people, kept on the server so that they can be ended.

The browser's cookie carries only a random id (32 random bytes); the ``user_session`` row holds a
keyed hash of it, the principal (kind, role, subject), when the session started and when it was
last used, whether it was revoked, and how the person signed in (``via``; for staff signed in at
the municipality's provider, that provider's access token). Every request reads its row in ONE
statement that joins the account (``lookup``), so a revoked session, a disabled account, a changed
staff role or a provider account's raised ``session_generation`` ends access at the very next
request, in every process.

Each kind of principal has an idle and an absolute timeout (``Settings.session_timeouts``),
checked here on the server. ``last_seen_at`` moves on at most once a minute (``TOUCH_SECONDS``):
reading pages must not turn every request into a write, and a minute is fine enough for an idle
timeout counted in tens of minutes. The background process deletes sessions that ended
(``purge_expired``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, insert, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from .db import writer_turn
from .fastpath import from_sqlite_moment, sqlite_moment
from .models import UserSession, utcnow
from .runtime import Runtime
from .settings import Settings

__all__ = ("KINDS", "TOUCH_SECONDS", "Principal", "clock", "create", "delete_of", "id_hash", "lookup",
           "purge_expired", "revoke", "revoke_all")

KINDS = ("staff", "provider-staff", "entrepreneur")
"""The principals that sign in with a session (tokens are for systems and carry none)."""

TOUCH_SECONDS = 60
"""``last_seen_at`` is written at most this often per session."""


def _now() -> dt.datetime:
    return utcnow()


clock: Callable[[], dt.datetime] = _now
"""The time sessions are measured by. Tests put another clock here instead of sleeping."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in party. ``role`` is what guards check."""

    kind: str
    """``token``, ``provider-staff``, ``staff`` or ``entrepreneur``."""
    role: str
    """``coach`` and ``admin`` for tokens; staff and entrepreneur roles for people."""
    subject_id: int
    name: str
    provider_id: int | None = None
    voucher_id: int | None = None
    generation: int = 0
    """A provider account's ``session_generation`` at sign-in; a reset raises it, which ends the session."""
    via: str | None = None
    """How the person signed in, when not with a password or a mailed link: ``eherkenning`` (an
    entrepreneur, through the broker) or ``sso`` (staff, through the municipality's provider)."""
    sso_token: str | None = field(default=None, repr=False)
    """With ``sso``: the provider's access token; ``service.auth`` asks the provider with it at every
    request whether the account still works."""

    @property
    def actor(self) -> str:
        """How this party is named in records: never a personal detail, only kind and id."""
        return f"{self.kind}:{self.subject_id}"


def new_id() -> str:
    """A fresh session id for the cookie: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def id_hash(settings: Settings, session_id: str) -> bytes:
    """What is stored of a session id: a keyed hash, so the table's rows sign nobody in."""
    return hmac.digest(settings.derive_key("session-id"), session_id.encode(), "sha256")


async def create(session: AsyncSession, settings: Settings, principal: Principal,
                 *, now: dt.datetime | None = None) -> str:
    """Start a session for ``principal``; returns the id for the cookie (not stored anywhere)."""
    if principal.kind not in KINDS:
        raise ValueError(f"no sessions for {principal.kind}")
    now = now or clock()
    session_id = new_id()
    await session.execute(insert(UserSession).values(
        id_hash=id_hash(settings, session_id), kind=principal.kind, role=principal.role,
        subject_id=principal.subject_id, generation=principal.generation, created_at=now, last_seen_at=now,
        revoked=False, via=principal.via, sso_token=principal.sso_token))
    return session_id


async def revoke(session: AsyncSession, settings: Settings, session_id: str) -> None:
    """End one session (logout)."""
    await session.execute(update(UserSession).where(UserSession.id_hash == id_hash(settings, session_id))
                          .values(revoked=True))


async def revoke_all(session: AsyncSession, kind: str, subject_id: int) -> int:
    """End every session of one account ("log out everywhere", a new password, a disabled
    account), in the caller's transaction; returns how many were open."""
    result = await session.execute(
        update(UserSession).where(UserSession.kind == kind, UserSession.subject_id == subject_id,
                                  UserSession.revoked.is_(False)).values(revoked=True))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def delete_of(session: AsyncSession, kind: str, subject_ids: Iterable[int]) -> None:
    """Remove the sessions of accounts or vouchers that are removed or purged."""
    ids = list(subject_ids)
    if ids:
        await session.execute(delete(UserSession).where(UserSession.kind == kind, UserSession.subject_id.in_(ids)))


async def purge_expired(session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None) -> int:
    """Delete sessions that were revoked or ran past a timeout; returns how many."""
    now = now or clock()
    ended = [UserSession.revoked.is_(True)]
    for kind in KINDS:
        idle, absolute = settings.session_timeouts(kind)
        ended.append(and_(UserSession.kind == kind,
                          or_(UserSession.last_seen_at <= now - dt.timedelta(seconds=idle),
                              UserSession.created_at <= now - dt.timedelta(seconds=absolute))))
    result = await session.execute(delete(UserSession).where(or_(*ended)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# The session with the account it belongs to, in one statement: the check on every request.
# Only the join of the session's own kind can match, so the others give NULLs.
_LOOKUP = """
SELECT s.kind, s.role, s.subject_id, s.generation, s.created_at, s.last_seen_at, s.revoked,
       st.id, st.role, st.disabled_at IS NULL, st.name,
       pu.id, pu.provider_id, pu.disabled_at IS NULL, pu.session_generation, pu.name, p.name,
       v.id, a.contact_name, s.via, s.sso_token
FROM user_session s
LEFT JOIN staff_user st ON s.kind = 'staff' AND st.id = s.subject_id
LEFT JOIN provider_user pu ON s.kind = 'provider-staff' AND pu.id = s.subject_id
LEFT JOIN provider p ON p.id = pu.provider_id
LEFT JOIN voucher v ON s.kind = 'entrepreneur' AND v.id = s.subject_id
LEFT JOIN application a ON a.id = v.application_id
WHERE s.id_hash = {hash}
"""
_SQLITE_LOOKUP = _LOOKUP.format(hash=":hash")
_POSTGRES_LOOKUP = _LOOKUP.format(hash="$1")
_TOUCH = "UPDATE user_session SET last_seen_at = {now} WHERE id_hash = {hash} AND revoked = FALSE"
_SQLITE_TOUCH = _TOUCH.format(now="?1", hash="?2")
_POSTGRES_TOUCH = _TOUCH.format(now="$1", hash="$2")


async def lookup(rt: Runtime, session_id: str) -> Principal | None:
    """The principal of a session id from a cookie, or None when the session is unknown, revoked,
    past its idle or absolute timeout, or its account may no longer be used. Moves
    ``last_seen_at`` on when it is more than ``TOUCH_SECONDS`` old."""
    hashed = id_hash(rt.settings, session_id)
    if rt.settings.is_sqlite:
        row = rt.fast.read_sqlite(_SQLITE_LOOKUP, {"hash": hashed})
        if row is not None:
            row = (*row[:4], from_sqlite_moment(row[4]), from_sqlite_moment(row[5]), *row[6:])
    else:
        row = await rt.fast.fetchrow(_POSTGRES_LOOKUP, hashed)
    if row is None:
        return None
    now = clock()
    principal = _principal(rt.settings, row, now)
    if principal is not None and (now - row[5]).total_seconds() >= TOUCH_SECONDS:
        await _touch(rt, hashed, now)
    return principal


def _principal(settings: Settings, row: Any, now: dt.datetime) -> Principal | None:
    (kind, role, subject_id, generation, created_at, last_seen_at, revoked,
     staff_id, staff_role, staff_enabled, staff_name,
     user_id, provider_id, user_enabled, user_generation, user_name, provider_name,
     voucher_id, contact_name, via, sso_token) = row
    idle, absolute = settings.session_timeouts(kind)
    if revoked or (now - last_seen_at).total_seconds() >= idle or (now - created_at).total_seconds() >= absolute:
        return None
    if kind == "staff":
        # A changed role takes effect at once too: sign in again for the new one.
        if staff_id is None or not staff_enabled or staff_role != role:
            return None
        return Principal(kind=kind, role=role, subject_id=subject_id, name=staff_name, via=via, sso_token=sso_token)
    if kind == "provider-staff":
        if user_id is None or not user_enabled or user_generation != generation:
            return None
        return Principal(kind=kind, role=role, subject_id=subject_id, name=f"{user_name} ({provider_name})",
                         provider_id=provider_id, generation=generation)
    if kind == "entrepreneur" and voucher_id is not None:
        return Principal(kind=kind, role=role, subject_id=subject_id, name=contact_name or "",
                         voucher_id=voucher_id, via=via)
    return None


async def _touch(rt: Runtime, hashed: bytes, now: dt.datetime) -> None:
    if rt.settings.is_sqlite:
        await rt.fast.write(lambda connection: connection.execute(_SQLITE_TOUCH, (sqlite_moment(now), hashed)),
                            writer_turn(rt.sessionmaker))
    else:
        await rt.fast.fetchrow(_POSTGRES_TOUCH, now, hashed)
