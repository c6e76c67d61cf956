"""Entrepreneurs online: apply, confirm, follow the application, "my voucher", and redeem
part of the voucher against a provider's offer. Pages only; the rules live in the domain
modules (``applications``, ``registry``, ``signin``, ``vouchers``, ``offers``)."""

from __future__ import annotations

from litestar import Router

from . import eherkenning, pages, redeem

__all__ = ("entrepreneur_router",)

entrepreneur_router = Router(path="/", route_handlers=[*pages.ROUTES, *eherkenning.ROUTES, *redeem.ROUTES], include_in_schema=False)
