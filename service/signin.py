"""Links mailed to entrepreneurs: confirming the e-mail address of an application, and the
one-time sign-in link for "my voucher".

A confirmation link is a signed, time-limited token; it works once because it moves the
application out of ``unconfirmed``. A sign-in link is random: only a keyed hash is stored, and
using it stamps ``used_at`` in one conditional UPDATE, so it works once and only briefly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox
from .models import Application, Scheme, SignInToken, Voucher, utcnow
from .runtime import Runtime

__all__ = ("confirm_email", "confirm_link", "confirm_token_valid", "request_sign_in", "use_sign_in_token")

_CONFIRM = "confirm-email"


def confirm_link(rt: Runtime, public_id: str) -> str:
    token = rt.sign(_CONFIRM, public_id, rt.settings.confirm_link_hours * 3600)
    return rt.link(f"/aanvraag/bevestigen/{token}")


def confirm_token_valid(rt: Runtime, token: str) -> bool:
    return rt.unsign(_CONFIRM, token) is not None


async def confirm_email(session: AsyncSession, rt: Runtime, token: str) -> tuple[Application | None, bool]:
    """``(application, confirmed_now)``. None when the link is forged or too old; False when
    it was used before (the application is returned so its status can be shown)."""
    public_id = rt.unsign(_CONFIRM, token)
    if public_id is None:
        return None, False
    result = await session.execute(
        update(Application)
        .where(Application.public_id == public_id, Application.status == "unconfirmed")
        .values(status="registry_pending", email_confirmed_at=utcnow())
        .returning(Application.id)
    )
    confirmed = result.first() is not None
    application = await session.scalar(
        select(Application).where(Application.public_id == public_id).execution_options(populate_existing=True))
    return application, confirmed


def _hash(rt: Runtime, token: str) -> bytes:
    return hmac.new(rt.settings.derive_key("sign-in-link"), token.encode(), hashlib.sha256).digest()


async def request_sign_in(session: AsyncSession, rt: Runtime, email: str, *, locale: str) -> int:
    """Mail a sign-in link for every voucher of this address; returns how many (the caller must
    answer the same either way, so that nobody learns which addresses are known)."""
    rows = (await session.execute(
        select(Voucher.id, Scheme.name, Scheme.name_en, Application.contact_name, Application.email)
        .join(Application, Application.id == Voucher.application_id)
        .join(Scheme, Scheme.id == Voucher.scheme_id)
        .where(func.lower(Application.email) == email.strip().lower())
        .order_by(Voucher.id)
    )).all()
    if not rows:
        return 0
    now = utcnow()
    minutes = rt.settings.sign_in_link_minutes
    links = []
    for voucher_id, name, name_en, _contact, _address in rows:
        token = secrets.token_urlsafe(32)
        session.add(SignInToken(token_hash=_hash(rt, token), voucher_id=voucher_id, created_at=now,
                                expires_at=now + dt.timedelta(minutes=minutes)))
        links.append({"scheme_name": name if locale == "nl" else name_en,
                      "url": rt.link(f"/mijn-voucher/inloggen/{token}")})
    outbox.enqueue(session, to=rows[0].email, template="sign_in_link", locale=locale,
                   contact_name=rows[0].contact_name, links=links, minutes=minutes)
    await session.flush()
    return len(rows)


async def use_sign_in_token(session: AsyncSession, rt: Runtime, token: str) -> int | None:
    """The voucher a sign-in link belongs to, marking the link used; None if unknown, used or old."""
    now = utcnow()
    result = await session.execute(
        update(SignInToken)
        .where(SignInToken.token_hash == _hash(rt, token), SignInToken.used_at.is_(None),
               SignInToken.expires_at > now)
        .values(used_at=now)
        .returning(SignInToken.voucher_id)
    )
    row = result.first()
    return None if row is None else int(row[0])
