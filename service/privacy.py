"""Privacy (AVG): erasing applicants' personal data after a retention period, and a data-subject
export of everything held about one KvK number.

What the purge does, per scheme that ended at least ``after_days`` ago (a scheme ends when the
municipality closes it, or else when the last voucher it could have issued expires:
``applications_close_at + validity_days``):

* company name, contact name, e-mail address and purpose are erased;
* postcodes keep only their 4-digit area (the figures per area stay possible);
* the KvK number is replaced by a keyed pseudonym ``P`` + 7 base32 characters (HMAC-SHA256 with a
  key derived from the server's secret). A KvK number of a ZZP'er identifies a person, so it
  cannot stay; a keyed hash keeps "one voucher per KvK number" checkable (the same number
  always gives the same pseudonym) without the number itself, and without the key nobody can
  go back from the pseudonym by trying all 10^8 numbers;
* what the entrepreneur wrote when reporting a redemption is erased; mail already sent to them
  loses its address and parameters;
* sessions of "my voucher" of those vouchers are deleted;
* rate-limit counters whose window has passed are deleted (their keys never hold an e-mail
  address, see ``ratelimit.personal_key``; older keys did).

"One voucher per KvK number" holds across the purge: a new application to a purged scheme (one
reopened later) is compared with the pseudonyms too (``applications.submit``, ``fastwrite.apply``).

Amounts, dates, statuses and the ledger are not touched, so every figure and
``service.check.reconcile`` stay the same. The audit log never held these values
(``service.audit.REDACTED_COLUMNS``). A purged application is recognised by its pseudonym, so
running the purge again changes nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import audit, sessions, validity
from .models import (
    Application,
    Enrolment,
    Hold,
    LedgerEntry,
    Offer,
    OutboxMessage,
    Provider,
    ProviderUser,
    RateLimitCounter,
    Redemption,
    Scheme,
    SignInToken,
    Voucher,
    utcnow,
)
from .models_admin import AuditEntry
from .runtime import Runtime

__all__ = ("DEFAULT_RETENTION_DAYS", "PurgeReport", "export_subject", "pseudonym", "pseudonym_with", "purge",
           "scheme_end")

DEFAULT_RETENTION_DAYS = 730
"""Two years after a scheme ends: time for objections, appeals and the accountant's audit."""


class PurgeReport(msgspec.Struct, kw_only=True):
    schemes: list[str] = msgspec.field(default_factory=list)
    applications: int = 0
    vouchers: int = 0
    messages: int = 0


def pseudonym(rt: Runtime, kvk_number: str) -> str:
    return pseudonym_with(rt.settings.derive_key("kvk-pseudonym"), kvk_number)


def pseudonym_with(key: bytes, kvk_number: str) -> str:
    digest = hmac.new(key, kvk_number.encode(), hashlib.sha256).digest()
    return "P" + base64.b32encode(digest).decode()[:7]


def is_pseudonym(value: str) -> bool:
    return value.startswith("P")


def scheme_end(scheme: Scheme) -> dt.datetime:
    if scheme.closed_at is not None:
        return scheme.closed_at
    return scheme.applications_close_at + dt.timedelta(days=scheme.validity_days)


def _area(postcode: str | None) -> str | None:
    return postcode[:4] if postcode else postcode


async def purge(session: AsyncSession, rt: Runtime, *, after_days: int = DEFAULT_RETENTION_DAYS,
                now: dt.datetime | None = None, progress: Callable[[int, int], None] | None = None) -> PurgeReport:
    """Erase or pseudonymise applicants' personal data of schemes that ended ``after_days`` ago.
    ``progress`` is told (applications done, applications in all)."""
    now = now or utcnow()
    report = PurgeReport()
    ended = [scheme for scheme in await session.scalars(select(Scheme).order_by(Scheme.id))
             if scheme_end(scheme) + dt.timedelta(days=after_days) <= now]
    total = int(await session.scalar(select(func.count()).select_from(Application).where(
        Application.scheme_id.in_([s.id for s in ended]), Application.kvk_number.not_like("P%"))) or 0)
    if progress:
        progress(0, total)
    for scheme in ended:
        targets = list(await session.scalars(
            select(Application).where(Application.scheme_id == scheme.id, Application.kvk_number.not_like("P%"))
            .order_by(Application.id)))
        if not targets:
            continue
        report.schemes.append(scheme.slug)
        emails = sorted({a.email for a in targets if a.email})
        ids = [a.id for a in targets]
        for application in targets:
            application.kvk_number = pseudonym(rt, application.kvk_number)
            application.company_name = ""
            application.contact_name = ""
            application.email = ""
            application.purpose = ""
            application.postcode = _area(application.postcode) or ""
            application.registry_postcode = _area(application.registry_postcode)
            application.acting_person = None  # the broker's pseudonym of a person
        await session.flush()
        vouchers = list(await session.scalars(select(Voucher).where(Voucher.application_id.in_(ids))))
        for voucher in vouchers:
            voucher.kvk_number = pseudonym(rt, voucher.kvk_number) if not is_pseudonym(voucher.kvk_number) \
                else voucher.kvk_number
        await session.flush()
        voucher_ids = [v.id for v in vouchers]
        # Whoever is still signed in to "my voucher" of a purged application is signed out.
        await sessions.delete_of(session, "entrepreneur", voucher_ids)
        if voucher_ids:
            await session.execute(update(Redemption).where(Redemption.voucher_id.in_(voucher_ids),
                                                           Redemption.flag_note.is_not(None)).values(flag_note=None))
        if emails:
            result = await session.execute(
                update(OutboxMessage).where(OutboxMessage.to_address.in_(emails), OutboxMessage.status != "pending")
                .values(to_address="", params={}))
            report.messages += int(result.rowcount or 0)  # type: ignore[attr-defined]
        report.applications += len(targets)
        report.vouchers += len(vouchers)
        if progress:
            progress(report.applications, total)
    longest_window = max(rt.settings.limit_window_seconds, rt.settings.failed_lookup_window_seconds, 24 * 3600)
    await session.execute(delete(RateLimitCounter).where(
        RateLimitCounter.window_start < now - dt.timedelta(seconds=longest_window)))
    if report.applications:
        audit.record(session, "privacy-purge", "application", "",
                     {"schemes": report.schemes, "applications": report.applications, "after_days": after_days})
    await session.flush()
    return report


def _row(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for column in obj.__table__.columns:
        if column.key in skip:
            continue
        value = getattr(obj, column.key)
        if isinstance(value, (bytes, bytearray, memoryview)):
            continue
        out[column.key] = value
    return out


async def export_subject(session: AsyncSession, rt: Runtime, kvk_number: str) -> dict[str, Any]:
    """Everything held about one KvK number, as JSON-ready data (AVG art. 15).

    Covers the firm as an applicant (applications, vouchers, redemptions, reservations, ledger
    entries, mail, sign-in links, and the audit entries about those rows) and as a provider
    (the provider, its enrolments, offers and staff accounts). Voucher codes and secrets are
    never included: only their holder can be shown a code, through the "my voucher" pages.
    """
    kvk_number = kvk_number.strip()
    keys = [kvk_number, pseudonym(rt, kvk_number)]
    applications = list(await session.scalars(
        select(Application).where(Application.kvk_number.in_(keys)).order_by(Application.id)))
    app_ids = [a.id for a in applications]
    vouchers = list(await session.scalars(
        select(Voucher).where(or_(Voucher.kvk_number.in_(keys), Voucher.application_id.in_(app_ids)))
        .order_by(Voucher.id)))
    voucher_ids = [v.id for v in vouchers]
    redemptions = list(await session.scalars(
        select(Redemption).where(Redemption.voucher_id.in_(voucher_ids)).order_by(Redemption.id)))
    holds = list(await session.scalars(select(Hold).where(Hold.voucher_id.in_(voucher_ids)).order_by(Hold.id)))
    entries = list(await session.scalars(
        select(LedgerEntry).where(LedgerEntry.voucher_id.in_(voucher_ids)).order_by(LedgerEntry.id)))
    emails = sorted({a.email for a in applications if a.email})
    messages = list(await session.scalars(
        select(OutboxMessage).where(OutboxMessage.to_address.in_(emails)).order_by(OutboxMessage.id))) if emails else []
    tokens = list(await session.scalars(
        select(SignInToken).where(SignInToken.voucher_id.in_(voucher_ids)).order_by(SignInToken.id)))
    provider_names = dict((await session.execute(select(Provider.id, Provider.name))).all())
    scheme_slugs = dict((await session.execute(select(Scheme.id, Scheme.slug))).all())
    providers = list(await session.scalars(select(Provider).where(Provider.kvk_number == kvk_number)))
    provider_ids = [p.id for p in providers]
    enrolments = list(await session.scalars(select(Enrolment).where(Enrolment.provider_id.in_(provider_ids))))
    offers = list(await session.scalars(select(Offer).where(Offer.provider_id.in_(provider_ids))))
    users = list(await session.scalars(select(ProviderUser).where(ProviderUser.provider_id.in_(provider_ids))))
    row_keys = [("application", str(i)) for i in app_ids] + [("voucher", str(i)) for i in voucher_ids]
    trail: list[AuditEntry] = []
    if row_keys:
        trail = list(await session.scalars(
            select(AuditEntry).where(or_(*((AuditEntry.table_name == t) & (AuditEntry.row_id == r)
                                           for t, r in row_keys))).order_by(AuditEntry.seq)))
    audit.record(session, "privacy-export", "application", "",
                 {"applications": len(applications), "providers": len(providers)})
    return {
        "kvk_number": kvk_number,
        "exported_at": utcnow(),
        "controller": "Gemeente Arnhem, Postbus 9029, 6800 EL Arnhem",
        "as_applicant": {
            "applications": [{**_row(a), "scheme": scheme_slugs.get(a.scheme_id)} for a in applications],
            "vouchers": [{**_row(v, skip=("code_hash", "code_salt")), "valid_until": validity.last_day(v.expires_at)}
                         for v in vouchers],
            "redemptions": [{**_row(r), "provider": provider_names.get(r.provider_id)} for r in redemptions],
            "reservations": [{**_row(h), "provider": provider_names.get(h.provider_id)} for h in holds],
            "ledger_entries": [_row(e) for e in entries],
            "mail": [_row(m, skip=("message_id", "claimed_until", "last_error")) for m in messages],
            "sign_in_links": [_row(t) for t in tokens],
            "audit_log": [_row(e, skip=("chain_seq", "prev_hash", "hash")) for e in trail],
        },
        "as_provider": {
            "providers": [_row(p) for p in providers],
            "enrolments": [_row(e) for e in enrolments],
            "offers": [_row(o) for o in offers],
            "staff_accounts": [_row(u, skip=("password_hash",)) for u in users],
        },
    }
