"""The public snapshot: the only data the information site is built from.

The types hold public facts only (no names, e-mail addresses or voucher codes of
entrepreneurs), so the site cannot leak personal data by construction. Money is
always in integer cents to avoid rounding surprises.
"""

import datetime

import msgspec


class OfferFacts(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    category: str  # "coaching" | "retraining" | "financial_advice"
    price_cents: int
    duration: str  # free text, e.g. "4 sessies van 1 uur"
    description: str
    scheme_slug: str


class ProviderFacts(msgspec.Struct, frozen=True, kw_only=True):
    slug: str  # url-safe, unique
    name: str
    website: str | None
    description: str
    categories: tuple[str, ...]
    scheme_slugs: tuple[str, ...]
    offers: tuple[OfferFacts, ...]


class FiguresPoint(msgspec.Struct, frozen=True, kw_only=True):
    day: datetime.date
    places_used: int
    committed_cents: int
    redeemed_cents: int
    waiting_list: int | None = None  # None for days before the service kept the waiting list


class SchemeFacts(msgspec.Struct, frozen=True, kw_only=True):
    slug: str
    name: str  # Dutch name
    name_en: str
    summary: str  # short Dutch text
    summary_en: str
    allocation: str  # "first_come" | "lottery"
    categories: tuple[str, ...]
    value_cents: int  # voucher value per entrepreneur
    own_contribution_percent: int  # 0..100
    max_employees: int
    postcodes: tuple[str, ...]  # 4-digit postcode areas accepted
    applications_open_at: datetime.datetime
    applications_close_at: datetime.datetime
    validity_days: int
    max_places: int
    places_used: int
    waiting_list_length: int
    budget_cents: int
    committed_cents: int
    redeemed_cents: int
    status: str  # "upcoming" | "open" | "closed"
    apply_url: str  # the service's start page for this scheme
    lottery_seed_hash: str | None  # published before the window opens
    history: tuple[FiguresPoint, ...]
    proof: str = "email"  # "email" | "eherkenning": how an applicant shows who they are
    eherkenning_level: str | None = None  # the lowest eHerkenning level an "eherkenning" scheme accepts


class ContactFacts(msgspec.Struct, frozen=True, kw_only=True):
    """How the public reaches the municipality, online and offline."""

    organisation: str
    phone: str
    postal_address: str  # may span lines
    visiting_address: str  # may span lines
    email: str
    objection_address: str  # where a letter of objection (bezwaar) goes
    privacy_officer_email: str  # the data protection officer


class PublicSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    taken_at: datetime.datetime  # printed with every figure
    service_url: str
    contact: ContactFacts
    schemes: tuple[SchemeFacts, ...]
    providers: tuple[ProviderFacts, ...]


def snapshot_to_json(snapshot: PublicSnapshot) -> bytes:
    """Serialise a snapshot, e.g. to hand it from the service to a build job."""
    return msgspec.json.encode(snapshot)


def snapshot_from_json(data: bytes | str) -> PublicSnapshot:
    """Read a snapshot back; msgspec checks every field's type on the way in."""
    return msgspec.json.decode(data, type=PublicSnapshot)
