"""The trade register (KvK Handelsregister): what it says about a firm, and deciding an
application on those figures rather than on the applicant's word.

Two registers behind one interface: :class:`KvkApiRegistry` asks the KvK "basisprofiel" API,
:class:`FileRegistry` reads a CSV extract (the default for development, with a demo extract).
When the register cannot be reached the application stays ``registry_pending`` and is decided
when it answers again (:func:`retry_pending`, run by the sweep and ``vouchers registry retry``):
never lost, never approved without the check.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from stdnum.exceptions import ValidationError
from stdnum.nl import postcode as nl_postcode

from . import applications, logs, outbox, schemes, validity
from .db import run_in_transaction
from .models import Application, Scheme, Voucher, utcnow
from .runtime import Runtime
from .settings import Settings

__all__ = (
    "FileRegistry",
    "KvkApiRegistry",
    "Registry",
    "RegistryRecord",
    "RegistryUnavailable",
    "RetryReport",
    "check_application",
    "normalise_postcode",
    "registry_for",
    "retry_pending",
    "withdraw_unconfirmed",
)

log = logging.getLogger(__name__)

PENDING = "registry_pending"
UNCONFIRMED = "unconfirmed"


class RegistryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the register says about one firm."""

    kvk_number: str
    name: str
    employees: int | None
    """People working at the firm (``totaalWerkzamePersonen``); None when the register has no figure."""
    postcode: str | None
    """Postcode of the main establishment (hoofdvestiging), formatted ``1234 AB``."""
    active: bool
    extracted_on: dt.date | None = None
    """The date of the extract these facts come from (the day the register was asked, for the API)."""


class RegistryUnavailable(Exception):
    """The register did not answer (timeout, connection refused, server error)."""


class Registry(Protocol):
    async def lookup(self, kvk_number: str) -> RegistryRecord | None:
        """The firm's record, None when the number is not registered.

        Raises :class:`RegistryUnavailable` when the register cannot tell.
        """
        ...


def normalise_postcode(value: Any) -> str | None:
    """``1234 AB`` for a valid Dutch postcode (python-stdnum), else None."""
    try:
        return nl_postcode.validate(str(value)) if value else None
    except ValidationError:
        return None


class FileRegistry:
    """A CSV extract with columns ``kvk_number,name,employees,postcode,active``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._records: dict[str, RegistryRecord] | None = None
        self._mtime: int | None = None
        self.extracted_on: dt.date | None = None
        """The date of the extract last read, which also answers for numbers it does not hold."""

    def _load(self) -> dict[str, RegistryRecord]:
        try:
            mtime = self.path.stat().st_mtime_ns
            if self._records is not None and mtime == self._mtime:
                return self._records
            with self.path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise RegistryUnavailable(f"cannot read {self.path}: {exc}") from None
        records = {}
        # The file is the extract: its date is the day it was written, in Dutch time.
        extracted_on = validity.local_day(dt.datetime.fromtimestamp(mtime / 1e9, dt.UTC))
        for row in rows:
            number = (row.get("kvk_number") or "").strip()
            employees = (row.get("employees") or "").strip()
            records[number] = RegistryRecord(
                kvk_number=number,
                name=(row.get("name") or "").strip(),
                employees=int(employees) if employees.isdigit() else None,
                postcode=normalise_postcode(row.get("postcode")),
                active=(row.get("active") or "yes").strip().lower() in ("yes", "true", "1", "ja"),
                extracted_on=extracted_on,
            )
        self._records, self._mtime, self.extracted_on = records, mtime, extracted_on
        return records

    async def lookup(self, kvk_number: str) -> RegistryRecord | None:
        return self._load().get(kvk_number)


class KvkApiRegistry:
    """The KvK API ``GET {base}/basisprofielen/{kvkNummer}`` with the ``apikey`` header."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.transport = transport

    async def _get(self, client: httpx.AsyncClient, path: str) -> dict[str, Any] | None:
        try:
            response = await client.get(path)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"KvK API: {exc.__class__.__name__}: {exc}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            # 5xx, but also 401/403/429: a problem on the way, not an answer about the firm.
            raise RegistryUnavailable(f"KvK API answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise RegistryUnavailable("KvK API sent something that is not JSON") from None
        return body if isinstance(body, dict) else None

    async def lookup(self, kvk_number: str) -> RegistryRecord | None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=self.transport,
                                     headers={"apikey": self.api_key, "Accept": "application/json"}) as client:
            profile = await self._get(client, f"/basisprofielen/{kvk_number}")
            if profile is None:
                return None
            main = (profile.get("_embedded") or {}).get("hoofdvestiging")
            if main is None:
                main = await self._get(client, f"/basisprofielen/{kvk_number}/hoofdvestiging") or {}
        return parse_basisprofiel(profile, main)


def parse_basisprofiel(profile: dict[str, Any], main: dict[str, Any]) -> RegistryRecord:
    """The fields we use from a basisprofiel and its main establishment."""
    employees = profile.get("totaalWerkzamePersonen", main.get("totaalWerkzamePersonen"))
    addresses = main.get("adressen") or []
    # The visiting address is where the firm is established; the postal address is a fallback.
    ordered = sorted(addresses, key=lambda a: 0 if a.get("type") == "bezoekadres" else 1)
    postcode = next((p for p in (normalise_postcode(a.get("postcode")) for a in ordered) if p), None)
    ended = (profile.get("materieleRegistratie") or {}).get("datumEinde")
    return RegistryRecord(
        kvk_number=str(profile.get("kvkNummer", "")),
        name=str(profile.get("naam") or profile.get("statutaireNaam") or ""),
        employees=int(employees) if isinstance(employees, int | str) and str(employees).isdigit() else None,
        postcode=postcode,
        active=not ended,
        extracted_on=validity.local_day(utcnow()),
    )


_file_registries: dict[str, FileRegistry] = {}


def registry_for(settings: Settings) -> Registry:
    """The register the settings name."""
    if settings.registry == "kvk":
        return KvkApiRegistry(settings.kvk_api_url, settings.kvk_api_key or "",
                              timeout=settings.registry_timeout_seconds)
    return _file_registries.setdefault(settings.registry_file, FileRegistry(settings.registry_file))


async def _lock_application(session: AsyncSession, rt: Runtime, application_id: int) -> Application:
    query = select(Application).where(Application.id == application_id).execution_options(populate_existing=True)
    if not rt.settings.is_sqlite:
        query = query.with_for_update()
    return (await session.scalars(query)).one()


async def check_application(rt: Runtime, application_id: int, registry: Registry | None = None) -> str:
    """Check a confirmed application against the register and decide it; returns its status.

    The register is asked outside any transaction. The decision then happens once: a second
    process finding the application already decided leaves it alone.
    """
    registry = registry or registry_for(rt.settings)
    async with rt.reader() as session:
        application = await session.get(Application, application_id)
        if application is None or application.status != PENDING:
            return application.status if application else "missing"
        kvk_number = application.kvk_number
    try:
        record = await registry.lookup(kvk_number)
    except RegistryUnavailable as exc:
        # Its message can hold the register's URL with the KvK number: the type only.
        logs.event(log, logging.WARNING, "register_unavailable", application_id=application_id,
                   **logs.failure_fields(exc))
        return await run_in_transaction(rt.sessionmaker, lambda s: _still_waiting(s, rt, application_id))

    async def decide(session: AsyncSession) -> str:
        application = await _lock_application(session, rt, application_id)
        if application.status != PENDING:
            return application.status
        scheme = await session.get_one(Scheme, application.scheme_id)
        application.registry_checked_at = utcnow()
        application.registry_attempts += 1
        # What the register said is kept with the decision, so the applicant can be shown it.
        # A number the register does not hold has no record to date it: the extract's own date, or today.
        application.registry_extracted_on = (
            (record.extracted_on if record is not None else getattr(registry, "extracted_on", None))
            or validity.local_day(application.registry_checked_at))
        reasons = []
        if record is None:
            reasons.append("not-in-register")
        else:
            application.registry_employees = record.employees
            application.registry_postcode = record.postcode
            application.registry_active = record.active
            if not record.active:
                reasons.append("not-active")
            has_voucher = await session.scalar(select(Voucher.id).where(
                Voucher.scheme_id == scheme.id, Voucher.kvk_number == application.kvk_number))
            if has_voucher is not None:
                reasons.append("already-has-voucher")
        if reasons:
            applications.reject(session, scheme, application, reasons)
            await session.flush()
        else:
            assert record is not None
            # The register's figures decide; the applicant's own figures only fill a gap in it.
            await applications.decide(
                session, rt, scheme, application,
                employees=record.employees if record.employees is not None else application.employees,
                postcode=record.postcode or application.postcode,
            )
        return application.status

    return await run_in_transaction(rt.sessionmaker, decide)


async def _still_waiting(session: AsyncSession, rt: Runtime, application_id: int) -> str:
    application = await _lock_application(session, rt, application_id)
    if application.status != PENDING:
        return application.status
    application.registry_attempts += 1
    if application.registry_attempts == 1:  # tell the applicant once, not at every retry
        scheme = await session.get_one(Scheme, application.scheme_id)
        outbox.enqueue(session, to=application.email, template="application_registry_pending",
                       locale=application.locale, contact_name=application.contact_name,
                       application_id=application.public_id,
                       scheme_name=schemes.scheme_name(scheme, application.locale))
    return PENDING


class RetryReport(msgspec.Struct, kw_only=True):
    decided: int = 0
    still_pending: int = 0


async def retry_pending(rt: Runtime, registry: Registry | None = None, *, batch: int = 200) -> RetryReport:
    """Decide applications that wait for the register, oldest first. Stops at the first one the
    register still cannot answer: the rest would fail the same way."""
    report = RetryReport()
    async with rt.sessionmaker() as session:
        ids = list(await session.scalars(
            select(Application.id).where(Application.status == PENDING).order_by(Application.id).limit(batch)))
    for position, application_id in enumerate(ids):
        if await check_application(rt, application_id, registry) == PENDING:
            report.still_pending = len(ids) - position
            break
        report.decided += 1
    return report


async def withdraw_unconfirmed(rt: Runtime, *, now: dt.datetime | None = None) -> int:
    """Applications whose e-mail address was not confirmed in time are withdrawn, which also
    frees the KvK number for a new application."""
    cutoff = (now or utcnow()) - dt.timedelta(hours=rt.settings.confirm_link_hours)

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(Application)
            .where(Application.status == UNCONFIRMED, Application.created_at < cutoff)
            .values(status="withdrawn")
            .returning(Application.id)
        )
        return len(result.all())

    return await run_in_transaction(rt.sessionmaker, work)
