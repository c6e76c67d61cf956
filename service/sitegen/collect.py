"""Take the public snapshot from the database: figures, approved providers and their visible
offers. Only public fields are read; nothing about an entrepreneur can reach the site. The daily
history is what ``daily.record_day`` kept."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import links
from ..models import Enrolment, Offer, Provider, Scheme, utcnow
from ..schemes import redeemed, scheme_status
from . import daily
from .snapshot import ContactFacts, OfferFacts, ProviderFacts, PublicSnapshot, SchemeFacts

__all__ = ("ARNHEM_CONTACT", "collect_snapshot")

ARNHEM_CONTACT = ContactFacts(
    organisation="Gemeente Arnhem",
    phone="14 026",
    postal_address="Postbus 9029\n6800 EL Arnhem",
    visiting_address="Koningstraat 38\n6811 DG Arnhem",
    email="ondernemersvoucher@arnhem.nl",
    objection_address="Gemeente Arnhem\nt.a.v. Bezwaarschriftencommissie\nPostbus 9029\n6800 EL Arnhem",
    privacy_officer_email="fg@arnhem.nl",
)


async def collect_snapshot(session: AsyncSession, *, service_url: str,
                           contact: ContactFacts = ARNHEM_CONTACT) -> PublicSnapshot:
    now = utcnow()
    schemes = list(await session.scalars(select(Scheme).order_by(Scheme.applications_open_at, Scheme.id)))
    scheme_facts = []
    for scheme in schemes:
        status = scheme_status(scheme, now)
        scheme_facts.append(SchemeFacts(
            slug=scheme.slug, name=scheme.name, name_en=scheme.name_en, summary=scheme.summary,
            summary_en=scheme.summary_en, allocation=scheme.allocation, categories=tuple(scheme.categories),
            value_cents=scheme.value_cents, own_contribution_percent=scheme.own_contribution_percent,
            max_employees=scheme.max_employees, postcodes=tuple(scheme.postcodes),
            applications_open_at=scheme.applications_open_at, applications_close_at=scheme.applications_close_at,
            validity_days=scheme.validity_days, max_places=scheme.max_places, places_used=scheme.places_used,
            waiting_list_length=scheme.waiting_count, budget_cents=scheme.budget_cents,
            committed_cents=scheme.committed_cents, redeemed_cents=await redeemed(session, scheme.id),
            # The site knows upcoming, open and closed; vouchers in use after the window count as closed.
            status="open" if status == "open" else "upcoming" if status == "upcoming" else "closed",
            apply_url=links.url(service_url, links.SCHEME_START, slug=scheme.slug),
            lottery_seed_hash=scheme.lottery_seed_hash, history=await daily.history(session, scheme.id),
            proof=scheme.proof, eherkenning_level=scheme.eherkenning_level,
        ))
    slugs = {scheme.id: scheme.slug for scheme in schemes}

    approved = await session.execute(
        select(Provider, Enrolment).join(Enrolment, Enrolment.provider_id == Provider.id)
        .where(Enrolment.status == "approved").order_by(Provider.name)
    )
    enrolled: dict[int, tuple[Provider, set[str], set[int]]] = {}
    for provider, enrolment in approved:
        entry = enrolled.setdefault(provider.id, (provider, set(), set()))
        entry[1].update(enrolment.categories)
        entry[2].add(enrolment.scheme_id)
    offers: dict[int, list[OfferFacts]] = defaultdict(list)
    for offer in await session.scalars(select(Offer).where(Offer.hidden_at.is_(None)).order_by(Offer.title)):
        provider_entry = enrolled.get(offer.provider_id)
        if provider_entry is not None and offer.scheme_id in provider_entry[2]:
            offers[offer.provider_id].append(OfferFacts(
                title=offer.title, category=offer.category, price_cents=offer.price_cents, duration=offer.duration,
                description=offer.description, scheme_slug=slugs[offer.scheme_id]))
    providers = tuple(
        ProviderFacts(slug=provider.slug, name=provider.name, website=provider.website,
                      description=provider.description, categories=tuple(sorted(categories)),
                      scheme_slugs=tuple(sorted(slugs[s] for s in scheme_ids)),
                      offers=tuple(offers[provider.id]))
        for provider, categories, scheme_ids in enrolled.values()
    )
    return PublicSnapshot(taken_at=now, service_url=service_url, contact=contact, schemes=tuple(scheme_facts),
                          providers=providers)

