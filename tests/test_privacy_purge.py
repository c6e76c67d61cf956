"""The privacy purge keeps its two promises: no personal value survives it anywhere in the
database, and "one voucher per KvK number" still holds for the numbers it pseudonymised, on every
path that creates applications."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, select

import service.models_admin  # noqa: F401  (its tables are searched too)
from service import privacy, schemes
from service.db import run_in_transaction
from service.errors import Conflict
from service.models import Base, Voucher, utcnow
from service.settings import Settings
from tests.entrepreneur_journey import FORM, REGISTER, apply, csrf, deliver, link, post_form
from tests.helpers import admin_token, bearer, make_scheme, make_voucher, scheme_spec

FAST = {"kvk_number": "31000001", "company_name": "Fietsmakerij Snelweg", "employees": 2, "postcode": "6822 AB",
        "contact_name": "Sara Snelders", "email": "sara.snelders@example.org", "purpose": "boekhouding op orde"}
SLOW = {"kvk_number": "31000002", "company_name": "Schilderwerk Langzaam", "employees": 1, "postcode": "6824 CD",
        "contact_name": "Piet Langzamer", "email": "piet.langzamer@example.org", "purpose": "marketingplan schrijven"}
HELPER = {"kvk_number": "31000003", "company_name": "Kapsalon Elsje", "contact_name": "Els Kapperman",
          "email": "els.kapperman@example.org", "purpose": "klantenbestand opbouwen", "postcode": "6811 CD"}
APPLICATIONS = "/api/v1/admin/schemes/test-scheme/applications"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    extract = tmp_path / "kvk.csv"
    extract.write_text(REGISTER, encoding="utf-8")
    return msgspec.structs.replace(settings, registry_file=str(extract))


def personal_values(*applicants: dict[str, Any]) -> set[str]:
    values = set()
    for a in applicants:
        values |= {a["kvk_number"], a["company_name"], a["contact_name"], a["email"], a["purpose"]}
        postcode = a["postcode"].upper().replace(" ", "")
        values |= {postcode, f"{postcode[:4]} {postcode[4:]}"}
    return values


def as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "ignore")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "" if value is None else str(value)


async def everything_stored(rt) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """(table, column, value as text) for every value of every row of every table."""
    found = []
    async with rt.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in (await conn.execute(table.select())).all():
                found += [(table.name, column.name, as_text(value)) for column, value in zip(table.columns, row,
                                                                                              strict=True)]
    return found


async def fill(client, rt, smtp_server) -> None:  # type: ignore[no-untyped-def]
    """Applicants by every way in: the form (with its e-mail confirmation and a sign-in link), the
    API's one-statement write, the API's session path (with an Idempotency-Key), the domain."""
    scheme = await make_scheme(rt)
    assert (await apply(client)).status_code == 303
    confirm_path = link((await deliver(rt, smtp_server))[-1], "/aanvraag/bevestigen/")
    page = await client.get(confirm_path)
    assert (await client.post(confirm_path, data={"_csrf_token": csrf(page.text)})).status_code in (200, 303)
    assert (await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email=FORM["email"])).status_code == 200
    admin = bearer(await admin_token(rt))
    assert (await client.post(APPLICATIONS, json=FAST, headers=admin)).status_code == 201
    r = await client.post(APPLICATIONS, json=SLOW, headers={**admin, "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    await make_voucher(rt, scheme, **HELPER)
    await deliver(rt, smtp_server)
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Voucher)) == 4


async def purge(rt) -> None:  # type: ignore[no-untyped-def]
    later = utcnow() + dt.timedelta(days=30 + 90 + privacy.DEFAULT_RETENTION_DAYS + 1)
    report = await run_in_transaction(rt.sessionmaker, lambda s: privacy.purge(s, rt, now=later))
    assert report.applications == 4


async def test_no_personal_value_survives_a_purge_anywhere(client, rt, smtp_server) -> None:
    await fill(client, rt, smtp_server)
    wanted = personal_values({**FORM, "employees": 3}, FAST, SLOW, HELPER)
    stored = await everything_stored(rt)
    as_stored = {v for v in wanted if not v[:4].isdigit() or " " in v or len(v) == 8}  # postcodes: "6811 AB"
    assert {v for v in wanted if any(v.lower() in text.lower() for _, _, text in stored)} == as_stored, \
        "the test should see every value before the purge"
    await purge(rt)
    left = sorted({(table, column, v) for table, column, text in await everything_stored(rt)
                   for v in wanted if v.lower() in text.lower()})
    assert left == []


async def test_one_voucher_per_kvk_number_holds_across_a_purge(client, rt, smtp_server) -> None:
    await fill(client, rt, smtp_server)
    await purge(rt)
    # The municipality reopens the scheme: the same file with a later closing date.
    spec = scheme_spec(applications_close_at=utcnow() + dt.timedelta(days=60))
    await run_in_transaction(rt.sessionmaker, lambda s: schemes.load_scheme(s, spec))
    admin = bearer(await admin_token(rt))
    for details in (FAST, SLOW, {**HELPER, "employees": 2}):
        r = await client.post(APPLICATIONS, json=details, headers=admin)
        assert r.status_code == 409 and "already-applied" in r.text, r.text
        r = await client.post(APPLICATIONS, json=details, headers={**admin, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 409 and "already-applied" in r.text, r.text
    form = await apply(client)
    assert form.status_code == 422 and 'id="kvk_number-error"' in form.text
    async with rt.sessionmaker() as session:
        scheme = await schemes.get_scheme(session, "test-scheme")
    with pytest.raises(Conflict):
        await make_voucher(rt, scheme, **HELPER)
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Voucher)) == 4
    # Another KvK number is welcome.
    r = await client.post(APPLICATIONS, json={**FAST, "kvk_number": "31000009"}, headers=admin)
    assert r.status_code == 201, r.text
