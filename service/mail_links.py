"""The links a mail carries that let someone in or confirm something. They are signed or keyed
with the server's secret and made when the mail is rendered (``outbox.render``), never stored, so a
copy of the database holds no usable link. The modules that check them (``signin``, ``staff``)
use the purposes named here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Scheme, SignInToken, Voucher
from .runtime import Runtime

__all__ = ("CONFIRM_EMAIL", "CONFIRM_PROVIDER", "REPORT_REDEMPTION", "confirm_link", "provider_confirm_link",
           "report_link", "sign_in_links", "sign_in_token")

CONFIRM_EMAIL = "confirm-email"
CONFIRM_PROVIDER = "provider-confirm"
REPORT_REDEMPTION = "report-redemption"


def confirm_link(rt: Runtime, public_id: str) -> str:
    token = rt.sign(CONFIRM_EMAIL, public_id, rt.settings.confirm_link_hours * 3600)
    return rt.link(f"/aanvraag/bevestigen/{token}")


def report_link(rt: Runtime, redemption_id: int) -> str:
    """The link in a redemption's mail that lets the entrepreneur report it as wrong (90 days)."""
    return rt.link(f"/report/{rt.sign(REPORT_REDEMPTION, str(redemption_id), 60 * 60 * 24 * 90)}")


def sign_in_token(rt: Runtime, voucher_id: int, expires_at: dt.datetime) -> str:
    """The token of one sign-in link, from its voucher and moment of expiry (microseconds)."""
    moment = int(expires_at.timestamp() * 1_000_000)
    digest = hmac.new(rt.settings.derive_key("sign-in-link-token"), f"{voucher_id}:{moment}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def sign_in_links(session: AsyncSession, rt: Runtime, token_ids: list[int]) -> list[dict[str, str]]:
    """The links of a sign-in mail, made again from their rows when the mail is rendered."""
    rows = await session.execute(
        select(SignInToken.voucher_id, SignInToken.expires_at, Scheme.name, Scheme.name_en)
        .join(Voucher, Voucher.id == SignInToken.voucher_id)
        .join(Scheme, Scheme.id == Voucher.scheme_id)
        .where(SignInToken.id.in_(token_ids))
        .order_by(SignInToken.id)
    )
    return [{"scheme_name": name, "scheme_name_en": name_en,
             "url": rt.link(f"/mijn-voucher/inloggen/{sign_in_token(rt, voucher_id, expires_at)}")}
            for voucher_id, expires_at, name, name_en in rows]


def provider_confirm_link(rt: Runtime, provider_id: int) -> str:
    """The link in the application's mail that confirms the address (made when it is sent)."""
    token = rt.sign(CONFIRM_PROVIDER, str(provider_id), rt.settings.confirm_link_hours * 3600)
    return rt.link(f"/coach/bevestigen/{token}")
