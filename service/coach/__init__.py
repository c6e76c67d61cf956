"""HTML pages for providers and their coaches: sign-in, the voucher page behind the QR code,
redeeming, reservations, offers, statements and the team's accounts; plus the entrepreneur's report link.

Every page works without JavaScript, is Dutch first (English msgids, Dutch in ``coach.po``),
and every form carries Litestar's CSRF token."""

from __future__ import annotations

from litestar import Router

from .provider import ProviderPages
from .signin import SignInPages
from .team import TeamPages
from .voucher import CoachVoucherPages, PublicVoucherPages

__all__ = ("coach_router",)

coach_router = Router(path="/", route_handlers=[SignInPages, PublicVoucherPages, CoachVoucherPages, ProviderPages,
                                                    TeamPages],
                      include_in_schema=False)
