"""Mailed one-time links that let a person set a password: a municipality staff member's setup,
a provider staff member's first password, and a forgotten password.

The token is derived from a random salt on the row with a key only the server has, so a mail
carries only the row's id in the outbox and its link is made when the mail is rendered; only a
keyed hash of the token is stored to find the row again. Using a link stamps ``used_at`` in one
conditional UPDATE, so it works once and only until ``expires_at``. A new link for an account
ends the ones it had, so only the last mailed link works.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AccountLink, utcnow
from .runtime import Runtime

__all__ = ("issue", "find", "token_of", "url", "url_for_id", "use")

#: Where each kind of account follows its link.
_PATHS = {"staff": "/beheer/instellen/", "provider": "/coach/wachtwoord/"}


def token_of(rt: Runtime, link: AccountLink) -> str:
    digest = hmac.new(rt.settings.derive_key("account-link-token"), bytes(link.salt), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _hash(rt: Runtime, token: str) -> bytes:
    return hmac.new(rt.settings.derive_key("account-link"), token.encode(), hashlib.sha256).digest()


def url(rt: Runtime, link: AccountLink) -> str:
    kind = "staff" if link.staff_user_id is not None else "provider"
    return rt.link(_PATHS[kind] + token_of(rt, link))


async def url_for_id(session: AsyncSession, rt: Runtime, link_id: int) -> str:
    """The link of a mail, made again from its row when the mail is rendered."""
    return url(rt, await session.get_one(AccountLink, link_id))


async def issue(session: AsyncSession, rt: Runtime, *, purpose: str, hours: float,
                staff_user_id: int | None = None, provider_user_id: int | None = None,
                now: dt.datetime | None = None) -> AccountLink:
    """A new link for one account (``purpose`` is ``setup`` or ``reset``); earlier ones stop working."""
    now = now or utcnow()
    owner = (AccountLink.staff_user_id == staff_user_id if staff_user_id is not None
             else AccountLink.provider_user_id == provider_user_id)
    await session.execute(update(AccountLink).where(owner, AccountLink.used_at.is_(None)).values(used_at=now))
    link = AccountLink(salt=os.urandom(16), purpose=purpose, staff_user_id=staff_user_id,
                       provider_user_id=provider_user_id, created_at=now, expires_at=now + dt.timedelta(hours=hours))
    link.token_hash = _hash(rt, token_of(rt, link))
    session.add(link)
    await session.flush()
    return link


async def find(session: AsyncSession, rt: Runtime, token: str, *, kind: str,
               now: dt.datetime | None = None) -> AccountLink | None:
    """The unused, unexpired link of this ``kind`` (``staff`` or ``provider``) with this token."""
    now = now or utcnow()
    link = await session.scalar(select(AccountLink).where(AccountLink.token_hash == _hash(rt, token)))
    if link is None or link.used_at is not None or link.expires_at <= now:
        return None
    if (link.staff_user_id is not None) != (kind == "staff"):
        return None
    return link


async def use(session: AsyncSession, link: AccountLink, *, now: dt.datetime | None = None) -> bool:
    """Mark the link used; False when another request used it first or it has expired."""
    now = now or utcnow()
    result = await session.execute(
        update(AccountLink)
        .where(AccountLink.id == link.id, AccountLink.used_at.is_(None), AccountLink.expires_at > now)
        .values(used_at=now)
        .returning(AccountLink.id)
    )
    return result.first() is not None
