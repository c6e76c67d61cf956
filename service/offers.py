"""Offers a provider publishes per scheme, and the provider's answer to reservations (holds)
that entrepreneurs make online. Money moves only through ``service.vouchers``; this module adds
the rules about offers and the mail to both sides."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox, vouchers
from .errors import N_, Forbidden, NotFound
from .models import Application, Enrolment, Hold, Offer, Provider, Redemption, Scheme, Voucher, utcnow
from .runtime import Runtime

__all__ = (
    "OfferIn",
    "OfferOut",
    "confirm_reservation",
    "decline_reservation",
    "hide_offer",
    "offer_out",
    "provider_offers",
    "publish_offer",
    "visible_offers",
)


class OfferIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scheme: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    title: Annotated[str, msgspec.Meta(min_length=3, max_length=120)]
    category: Literal["coaching", "retraining", "financial_advice"]
    price_cents: Annotated[int, msgspec.Meta(gt=0, le=100_000_000)]
    duration: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    """Free text: "3 sessions of 1 hour", "6 weeks"."""
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class OfferOut(msgspec.Struct, frozen=True, kw_only=True):
    offer_id: int
    provider: str
    scheme: str
    title: str
    category: str
    price_cents: int
    duration: str
    description: str
    hidden: bool


async def publish_offer(session: AsyncSession, provider_id: int, data: OfferIn) -> Offer:
    """Publish an offer, only in a scheme and category the provider is approved for."""
    scheme = await session.scalar(select(Scheme).where(Scheme.slug == data.scheme))
    if scheme is None:
        raise NotFound("scheme-not-found", N_("There is no open scheme with this name."), field="scheme")
    enrolment = await session.scalar(
        select(Enrolment).where(Enrolment.scheme_id == scheme.id, Enrolment.provider_id == provider_id))
    if enrolment is None or enrolment.status != "approved":
        raise vouchers.provider_not_approved(field="scheme")
    if data.category not in enrolment.categories or data.category not in scheme.categories:
        raise Forbidden("category-not-allowed", N_("This voucher cannot be used for this kind of service."),
                        field="category")
    offer = Offer(provider_id=provider_id, scheme_id=scheme.id, title=data.title.strip(), category=data.category,
                  price_cents=data.price_cents, duration=data.duration.strip(), description=data.description.strip())
    session.add(offer)
    await session.flush()
    return offer


async def hide_offer(session: AsyncSession, offer_id: int, *, by: Literal["provider", "municipality"], reason: str,
                     provider_id: int | None = None) -> Offer:
    """Take an offer off the lists. A provider may hide only its own; an offer the municipality
    hid stays hidden (hiding again changes nothing)."""
    offer = await session.get(Offer, offer_id)
    if offer is None or (provider_id is not None and offer.provider_id != provider_id):
        raise NotFound("offer-not-found", N_("There is no such offer."))
    await session.execute(
        update(Offer).where(Offer.id == offer_id, Offer.hidden_at.is_(None))
        .values(hidden_at=utcnow(), hidden_by=by, hidden_reason=reason)
    )
    await session.refresh(offer)
    return offer


async def offer_out(session: AsyncSession, offer: Offer) -> OfferOut:
    provider = await session.get_one(Provider, offer.provider_id)
    scheme = await session.get_one(Scheme, offer.scheme_id)
    return OfferOut(offer_id=offer.id, provider=provider.name, scheme=scheme.slug, title=offer.title,
                    category=offer.category, price_cents=offer.price_cents, duration=offer.duration,
                    description=offer.description, hidden=offer.hidden_at is not None)


async def provider_offers(session: AsyncSession, provider_id: int) -> list[Offer]:
    return list(await session.scalars(select(Offer).where(Offer.provider_id == provider_id).order_by(Offer.id.desc())))


async def visible_offers(session: AsyncSession, scheme_slug: str | None = None) -> list[Offer]:
    """Offers entrepreneurs and the public site may show: not hidden, and the provider still
    approved for that scheme and category."""
    query = (
        select(Offer)
        .join(Enrolment, (Enrolment.scheme_id == Offer.scheme_id) & (Enrolment.provider_id == Offer.provider_id))
        .join(Scheme, Scheme.id == Offer.scheme_id)
        .where(Offer.hidden_at.is_(None), Enrolment.status == "approved", Scheme.closed_at.is_(None))
        .order_by(Offer.scheme_id, Offer.category, Offer.id)
    )
    if scheme_slug is not None:
        query = query.where(Scheme.slug == scheme_slug)
    offers = []
    for offer in await session.scalars(query):
        enrolment = await session.scalar(select(Enrolment.categories).where(
            Enrolment.scheme_id == offer.scheme_id, Enrolment.provider_id == offer.provider_id))
        if enrolment and offer.category in enrolment:
            offers.append(offer)
    return offers


async def _parties(session: AsyncSession, hold: Hold) -> tuple[Application, Provider]:
    voucher = await session.get_one(Voucher, hold.voucher_id)
    return await session.get_one(Application, voucher.application_id), await session.get_one(Provider, hold.provider_id)


async def confirm_reservation(session: AsyncSession, rt: Runtime, hold_id: int, *, provider_id: int,
                              recorded_by: str) -> Redemption:
    """The provider delivered: the hold becomes a redemption (the entrepreneur is mailed by
    ``vouchers.confirm_hold``); the provider gets a receipt."""
    provider = await session.get_one(Provider, provider_id)
    redemption = await vouchers.confirm_hold(session, rt, hold_id, provider_id=provider_id, recorded_by=recorded_by,
                                             provider_name=provider.name)
    hold = await session.get_one(Hold, hold_id)
    application, _ = await _parties(session, hold)
    outbox.enqueue(session, to=provider.email, template="reservation_confirmed", locale=provider.locale,
                   provider_name=provider.name, company_name=application.company_name,
                   amount_cents=redemption.amount_cents, reference=hold.reference)
    return redemption


async def decline_reservation(session: AsyncSession, hold_id: int, *, provider_id: int) -> Hold:
    """The provider will not deliver: the money goes back to the voucher and both are told."""
    hold = await vouchers.release_hold(session, hold_id, reason="declined", provider_id=provider_id)
    application, provider = await _parties(session, hold)
    outbox.enqueue(session, to=application.email, template="hold_released", locale=application.locale,
                   contact_name=application.contact_name, reason="declined", amount_cents=hold.amount_cents)
    outbox.enqueue(session, to=provider.email, template="reservation_declined", locale=provider.locale,
                   provider_name=provider.name, company_name=application.company_name,
                   amount_cents=hold.amount_cents, reference=hold.reference)
    return hold


async def provider_holds(session: AsyncSession, provider_id: int, *, limit: int = 100) -> list[tuple[Hold, str]]:
    """The provider's reservations, open ones first, each with the company's name."""
    rows = await session.execute(
        select(Hold, Application.company_name)
        .join(Voucher, Voucher.id == Hold.voucher_id)
        .join(Application, Application.id == Voucher.application_id)
        .where(Hold.provider_id == provider_id)
        .order_by((Hold.status == "open").desc(), Hold.created_at.desc())
        .limit(limit)
    )
    return [(hold, name) for hold, name in rows.all()]
