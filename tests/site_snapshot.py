"""A realistic public snapshot for tests of the information site.

Deterministic (no randomness), so a failing test shows the same page every time.
The numbers follow the Arnhem scheme: EUR 405,000 for at most 300 entrepreneurs.
"""

import datetime
import hashlib

from service.sitegen import (
    ContactFacts,
    FiguresPoint,
    OfferFacts,
    ProviderFacts,
    PublicSnapshot,
    SchemeFacts,
)
from service.sitegen.collect import ARNHEM_CONTACT

UTC = datetime.timezone.utc
TAKEN_AT = datetime.datetime(2025, 3, 14, 13, 5, tzinfo=UTC)  # 14:05 in Arnhem
ARNHEM_POSTCODES = tuple(str(n) for n in range(6811, 6847))
HOSTILE_DESCRIPTION = (
    '<script>alert("xss")</script> Klik [hier](javascript:alert(1)) voor **korting**.\n\n'
    "<img src=x onerror=alert(2)> & meer"
)

_FIRST = ("Rijn", "Veluwe", "Sonsbeek", "Eusebius", "Presikhaaf", "Malburgen", "Klarendal",
          "Schuytgraaf", "Elden", "Geitenkamp")
_SECOND = ("Coaching", "Advies", "Opleidingen", "Loopbaan", "Financiën")
_CATEGORIES = ("coaching", "retraining", "financial_advice")


def contact() -> ContactFacts:
    return ARNHEM_CONTACT


def history(days: int, used: int, value_cents: int, redeemed_cents: int) -> tuple[FiguresPoint, ...]:
    """Places fill quickly in the first days and then level off, like a real opening;
    redemptions follow later. The last day ends on the given totals."""
    start = TAKEN_AT.date() - datetime.timedelta(days=days - 1)
    points = []
    for i in range(days):
        share = (i + 1) / days
        places = round(used * (1 - (1 - share) ** 3))
        points.append(FiguresPoint(
            day=start + datetime.timedelta(days=i),
            places_used=places,
            committed_cents=places * value_cents,
            redeemed_cents=round(redeemed_cents * share ** 2),
            # The first days come from the ledger, which does not know the waiting list.
            waiting_list=None if i < 3 else max(0, 12 - i),
        ))
    return tuple(points)


def first_come_scheme() -> SchemeFacts:
    """The open scheme with known figures: 120 of 300 places, € 162.000,00 of € 405.000,00."""
    return SchemeFacts(
        slug="ondernemersvoucher-2025",
        name="Ondernemersvoucher 2025",
        name_en="Entrepreneur voucher 2025",
        summary="Coaching, bij- en omscholing of financieel advies voor ZZP'ers en kleine bedrijven.",
        summary_en="Coaching, retraining or financial advice for the self-employed and small firms.",
        allocation="first_come",
        categories=_CATEGORIES,
        value_cents=135_000,
        own_contribution_percent=10,
        max_employees=10,
        postcodes=ARNHEM_POSTCODES,
        applications_open_at=datetime.datetime(2025, 3, 1, 8, 0, tzinfo=UTC),
        applications_close_at=datetime.datetime(2025, 6, 30, 21, 59, tzinfo=UTC),
        validity_days=90,
        max_places=300,
        places_used=120,
        waiting_list_length=0,
        budget_cents=40_500_000,
        committed_cents=16_200_000,
        redeemed_cents=4_321_050,
        status="open",
        apply_url="https://vouchers.example.nl/regelingen/ondernemersvoucher-2025",
        lottery_seed_hash=None,
        history=history(14, 120, 135_000, 4_321_050),
    )


def lottery_scheme() -> SchemeFacts:
    """An upcoming scheme drawn by lottery, with no figures over time yet."""
    return SchemeFacts(
        slug="innovatievoucher-2026",
        name="Innovatievoucher 2026",
        name_en="Innovation voucher 2026",
        summary="Een tweede ronde, met loting na de aanvraagperiode.",
        summary_en="A second round, with a lottery after the application period.",
        allocation="lottery",
        categories=("coaching", "financial_advice"),
        value_cents=50_000,
        own_contribution_percent=0,
        max_employees=10,
        postcodes=("6811", "6812", "6813", "6826", "6827", "6841"),
        applications_open_at=datetime.datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
        applications_close_at=datetime.datetime(2026, 1, 31, 22, 59, tzinfo=UTC),
        validity_days=60,
        max_places=100,
        places_used=0,
        waiting_list_length=0,
        budget_cents=5_000_000,
        committed_cents=0,
        redeemed_cents=0,
        status="upcoming",
        apply_url="https://vouchers.example.nl/regelingen/innovatievoucher-2026",
        lottery_seed_hash=hashlib.sha256(b"seed for tests").hexdigest(),
        history=(),
    )


def provider(index: int, scheme_slugs: tuple[str, ...]) -> ProviderFacts:
    name = f"{_FIRST[index % len(_FIRST)]} {_SECOND[index % len(_SECOND)]} {index + 1}"
    category = _CATEGORIES[index % len(_CATEGORIES)]
    return ProviderFacts(
        slug=f"aanbieder-{index + 1:03d}",
        name=name,
        website=f"https://aanbieder{index + 1}.example.nl/",
        description=(f"{name} helpt ondernemers in Arnhem verder.\n\n"
                     "Wij werken met korte trajecten en komen ook bij u langs."),
        categories=(category,),
        scheme_slugs=scheme_slugs,
        offers=tuple(
            OfferFacts(
                title=f"Traject {n + 1}",
                category=category,
                price_cents=45_000 + 15_000 * n,
                duration=f"{n + 3} sessies van 1 uur",
                description="Persoonlijk traject met een plan dat u zelf houdt.",
                scheme_slug=scheme_slugs[0],
            )
            for n in range(1 + index % 3)
        ),
    )


def hostile_provider() -> ProviderFacts:
    """A provider whose own texts try to inject markup and a javascript: link."""
    return ProviderFacts(
        slug="zzz-hostile",
        name="Zzz <b>Vet</b> & *Schuin* [Link](javascript:alert(3))",
        website="javascript:alert(4)",
        description=HOSTILE_DESCRIPTION,
        categories=("coaching",),
        scheme_slugs=("ondernemersvoucher-2025",),
        offers=(OfferFacts(title="<i>Aanbod</i>", category="coaching", price_cents=10_000,
                           duration="| 1 | uur |", description="# Geen kop", scheme_slug="ondernemersvoucher-2025"),),
    )


def make_snapshot(*, providers: int = 100, hostile: bool = False) -> PublicSnapshot:
    """A snapshot with an open first-come scheme, an upcoming lottery and `providers` providers."""
    schemes = (first_come_scheme(), lottery_scheme())
    everyone = [provider(i, ("ondernemersvoucher-2025",) if i % 4 else
                         ("ondernemersvoucher-2025", "innovatievoucher-2026")) for i in range(providers)]
    if hostile:
        everyone.append(hostile_provider())
    return PublicSnapshot(
        taken_at=TAKEN_AT,
        service_url="https://vouchers.example.nl/",
        contact=contact(),
        schemes=schemes,
        providers=tuple(everyone),
    )
