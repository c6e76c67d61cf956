"""Redeem online: from "my voucher" an entrepreneur picks a provider's offer and reserves part of
the balance for it. The money is held at once (``vouchers.create_hold``); the provider confirms
delivery (the hold becomes a redemption) or declines on the coach pages, the entrepreneur may
cancel while it is open, and the sweep releases it when it lapses. Each change is mailed.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from .. import i18n, offers, outbox, vouchers
from ..db import run_in_transaction
from ..errors import N_, NotFound
from ..models import Application, Hold, Offer, Provider, Scheme, Voucher
from ..runtime import Runtime
from .pages import NO_STORE, entrepreneur_page, signed_in_voucher

__all__ = ("ROUTES", "cancel_reservation", "reserve_offer")


async def _visible_offer(session: AsyncSession, scheme: Scheme, offer_id: int) -> Offer:
    for offer in await offers.visible_offers(session, scheme.slug):
        if offer.id == offer_id:
            return offer
    raise NotFound("offer-not-found", N_("There is no such offer."))


async def reserve_offer(session: AsyncSession, rt: Runtime, voucher_id: int, offer_id: int, *,
                        created_by: str) -> Hold:
    """Hold the voucher's share of an offer's price for its provider and tell both sides."""
    voucher = await session.get_one(Voucher, voucher_id)
    scheme = await session.get_one(Scheme, voucher.scheme_id)
    offer = await _visible_offer(session, scheme, offer_id)
    hold = await vouchers.create_hold(session, rt, voucher, provider_id=offer.provider_id, category=offer.category,
                                      invoice_cents=offer.price_cents, reference=offer.title[:100],
                                      created_by=created_by, offer_id=offer.id)
    application = await session.get_one(Application, voucher.application_id)
    provider = await session.get_one(Provider, offer.provider_id)
    common = {"offer_title": offer.title, "amount_cents": hold.amount_cents, "invoice_cents": hold.invoice_cents,
              "own_contribution_cents": hold.own_contribution_cents, "expires_at": hold.expires_at.isoformat()}
    outbox.enqueue(session, to=application.email, template="reservation_made", locale=application.locale,
                   contact_name=application.contact_name, provider_name=provider.name, **common)
    outbox.enqueue(session, to=provider.email, template="reservation_requested", locale=provider.locale,
                   provider_name=provider.name, company_name=application.company_name,
                   contact_name=application.contact_name, contact_email=application.email, hold_id=hold.id, **common)
    return hold


async def cancel_reservation(session: AsyncSession, voucher_id: int, hold_id: int) -> Hold:
    """The entrepreneur cancels an open reservation on their own voucher."""
    hold = await vouchers.release_hold(session, hold_id, reason="cancelled", voucher_id=voucher_id)
    voucher = await session.get_one(Voucher, voucher_id)
    application = await session.get_one(Application, voucher.application_id)
    provider = await session.get_one(Provider, hold.provider_id)
    outbox.enqueue(session, to=application.email, template="hold_released", locale=application.locale,
                   contact_name=application.contact_name, reason="cancelled", amount_cents=hold.amount_cents)
    outbox.enqueue(session, to=provider.email, template="reservation_cancelled", locale=provider.locale,
                   provider_name=provider.name, company_name=application.company_name,
                   amount_cents=hold.amount_cents, reference=hold.reference)
    return hold


async def _context(session: AsyncSession, voucher_id: int) -> dict[str, Any]:
    voucher = await session.get_one(Voucher, voucher_id)
    scheme = await session.get_one(Scheme, voucher.scheme_id)
    return {"voucher": voucher, "scheme": scheme, "status": vouchers.effective_status(voucher),
            "scheme_name": scheme.name if i18n.current_locale() == "nl" else scheme.name_en}


def _shares(offer: Offer, scheme: Scheme) -> dict[str, int]:
    own = vouchers.own_contribution(offer.price_cents, scheme.own_contribution_percent)
    return {"own": own, "pays": offer.price_cents - own}


@get("/mijn-voucher/aanbod", response_headers=NO_STORE)
async def offer_list(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Template:
    voucher_id = signed_in_voucher(request)
    async with rt.sessionmaker() as session:
        context = await _context(session, voucher_id)
        items = []
        for offer in await offers.visible_offers(session, context["scheme"].slug):
            provider = await session.get_one(Provider, offer.provider_id)
            items.append({"offer": offer, "provider": provider, **_shares(offer, context["scheme"])})
    return entrepreneur_page("offers", items=items, **context)


@get("/mijn-voucher/aanbod/{offer_id:int}", response_headers=NO_STORE)
async def offer_detail(request: Request[Any, Any, Any], offer_id: FromPath[int], rt: NamedDependency[Runtime]) -> Template:
    voucher_id = signed_in_voucher(request)
    async with rt.sessionmaker() as session:
        context = await _context(session, voucher_id)
        offer = await _visible_offer(session, context["scheme"], offer_id)
        provider = await session.get_one(Provider, offer.provider_id)
    shares = _shares(offer, context["scheme"])
    return entrepreneur_page("offer", offer=offer, provider=provider, **shares,
                             enough=context["status"] == "active" and context["voucher"].balance_cents >= shares["pays"],
                             **context)


@post("/mijn-voucher/aanbod/{offer_id:int}")
async def reserve(request: Request[Any, Any, Any], offer_id: FromPath[int], rt: NamedDependency[Runtime]) -> Response[Any]:
    voucher_id = signed_in_voucher(request)
    actor = request.scope["user"].actor
    hold = await run_in_transaction(
        rt.sessionmaker, lambda s: reserve_offer(s, rt, voucher_id, offer_id, created_by=actor))
    return Redirect(f"/mijn-voucher/reserveringen/{hold.id}", status_code=303)


async def _own_hold(session: AsyncSession, voucher_id: int, hold_id: int) -> tuple[Hold, Provider, Offer | None]:
    hold = await session.get(Hold, hold_id)
    if hold is None or hold.voucher_id != voucher_id:  # another voucher's reservation does not exist for you
        raise NotFound("hold-not-found", N_("There is no such reservation."))
    provider = await session.get_one(Provider, hold.provider_id)
    offer = await session.get(Offer, hold.offer_id) if hold.offer_id else None
    return hold, provider, offer


@get("/mijn-voucher/reserveringen/{hold_id:int}", response_headers=NO_STORE)
async def reservation(request: Request[Any, Any, Any], hold_id: FromPath[int], rt: NamedDependency[Runtime]) -> Template:
    voucher_id = signed_in_voucher(request)
    async with rt.sessionmaker() as session:
        hold, provider, offer = await _own_hold(session, voucher_id, hold_id)
        context = await _context(session, voucher_id)
    return entrepreneur_page("reservation", hold=hold, provider=provider, offer=offer, **context)


@post("/mijn-voucher/reserveringen/{hold_id:int}/annuleren")
async def cancel(request: Request[Any, Any, Any], hold_id: FromPath[int], rt: NamedDependency[Runtime]) -> Response[Any]:
    voucher_id = signed_in_voucher(request)
    await run_in_transaction(rt.sessionmaker, lambda s: cancel_reservation(s, voucher_id, hold_id))
    return Redirect(f"/mijn-voucher/reserveringen/{hold_id}", status_code=303)


ROUTES = [offer_list, offer_detail, reserve, reservation, cancel]
