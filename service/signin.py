"""Links mailed to entrepreneurs: confirming the e-mail address of an application, and the
one-time sign-in link for "my voucher".

A confirmation link is a signed, time-limited token; it works once because it moves the
application out of ``unconfirmed``. A sign-in link is derived from its row and a key only the
server has; only a keyed hash of it is stored, and using it stamps ``used_at`` in one conditional
UPDATE, so it works once and only briefly. Mails carry neither link in the outbox: they are made
when the mail is rendered (``outbox.render``, by ``service.mail_links``), so a copy of the database
holds no usable link.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox
from .mail_links import (  # noqa: F401  (the links live beside the mail that carries them)
    CONFIRM_EMAIL,
    REPORT_REDEMPTION,
    confirm_link,
    report_link,
    sign_in_links,
    sign_in_token,
)
from .models import Application, Scheme, SignInToken, Voucher, utcnow
from .runtime import Runtime

__all__ = ("REPORT_REDEMPTION", "confirm_email", "confirm_link", "confirm_token_valid", "report_link", "request_sign_in",
           "sign_in_links", "sign_in_token", "use_sign_in_token")


def confirm_token_valid(rt: Runtime, token: str) -> bool:
    return rt.unsign(CONFIRM_EMAIL, token) is not None


async def confirm_email(session: AsyncSession, rt: Runtime, token: str) -> tuple[Application | None, bool]:
    """``(application, confirmed_now)``. None when the link is forged or too old; False when
    it was used before (the application is returned so its status can be shown)."""
    public_id = rt.unsign(CONFIRM_EMAIL, token)
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
        select(Voucher.id, Application.contact_name, Application.email)
        .join(Application, Application.id == Voucher.application_id)
        .join(Scheme, Scheme.id == Voucher.scheme_id)
        .where(func.lower(Application.email) == email.strip().lower(),
               # A firm that applied with eHerkenning signs in with it: no link by mail.
               Scheme.proof != "eherkenning")
        .order_by(Voucher.id)
    )).all()
    if not rows:
        return 0
    now = utcnow()
    minutes = rt.settings.sign_in_link_minutes
    expires_at = now + dt.timedelta(minutes=minutes)
    tokens = [SignInToken(token_hash=_hash(rt, sign_in_token(rt, row.id, expires_at)), voucher_id=row.id,
                          created_at=now, expires_at=expires_at) for row in rows]
    session.add_all(tokens)
    await session.flush()
    outbox.enqueue(session, to=rows[0].email, template="sign_in_link", locale=locale,
                   contact_name=rows[0].contact_name, sign_in_token_ids=[t.id for t in tokens], minutes=minutes)
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
