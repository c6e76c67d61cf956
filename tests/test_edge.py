"""Input no handler should see is refused before routing with a 400 that names the field, on
both databases and before any database work; every answer carries the security headers."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from sqlalchemy import func, select

from service.models import Application, Voucher
from service.settings import Settings
from tests.entrepreneur_journey import REGISTER, apply
from tests.helpers import admin_token, applicant, bearer, make_provider, make_scheme, make_voucher, reload

REDEEM = {"amount_cents": 10000, "category": "coaching", "reference": "F-2026-001"}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    extract = tmp_path / "kvk.csv"
    extract.write_text(REGISTER, encoding="utf-8")
    return msgspec.structs.replace(settings, registry_file=str(extract))


@pytest.fixture
async def world(rt):
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    provider, token = await make_provider(rt, scheme)
    return {"scheme": scheme, "voucher": voucher, "code": code, "token": token, "admin": await admin_token(rt)}


async def count_applications(rt) -> int:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Application)) or 0)


def bad_request(response, field: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert [p["name"] for p in body["invalid_params"]] == [field], body
    return body


def api_posts(world: dict) -> list[tuple[str, str, dict]]:
    code = world["code"]
    return [
        (f"/api/v1/vouchers/{code}/redemptions", world["token"], {"Idempotency-Key": "k-1"}),
        (f"/api/v1/vouchers/{code}/redemptions", world["token"], {}),
        (f"/api/v1/vouchers/{code}/holds", world["token"], {}),
        ("/api/v1/admin/schemes/test-scheme/applications", world["admin"], {}),
        (f"/api/v1/admin/vouchers/{world['voucher'].id}/revocation", world["admin"], {}),
    ]


async def test_deeply_nested_json_is_a_400_on_every_json_endpoint(client, rt, world) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    nested = b'{"reference": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}"
    for path, token, headers in api_posts(world):
        for body in (deep, nested):
            r = await client.post(path, content=body, headers={**bearer(token), **headers,
                                                               "content-type": "application/json"})
            bad_request(r, "body")
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 135000


async def test_a_nul_byte_in_a_json_value_is_a_400_naming_the_field(client, rt, world) -> None:
    before = await count_applications(rt)
    details = msgspec.to_builtins(applicant(company_name="Bakkerij\x00 De Korenbloem"))
    for key in ({}, {"Idempotency-Key": "nul-1"}):
        r = await client.post("/api/v1/admin/schemes/test-scheme/applications", json=details,
                              headers={**bearer(world["admin"]), **key})
        bad_request(r, "company_name")
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions", headers=bearer(world["token"]),
                          json={**REDEEM, "reference": "F-\x01"})
    bad_request(r, "reference")
    r = await client.post(f"/api/v1/admin/vouchers/{world['voucher'].id}/revocation",
                          headers=bearer(world["admin"]), json={"reason": "fraude\x00"})
    bad_request(r, "reason")
    assert await count_applications(rt) == before
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 135000


async def test_a_nul_byte_in_the_path_or_query_is_a_400(client, world) -> None:
    r = await client.get(f"/api/v1/vouchers/{world['code']}%00", headers=bearer(world["token"]))
    bad_request(r, "path")
    r = await client.get("/api/v1/schemes/test-scheme%00")
    bad_request(r, "path")
    r = await client.get("/api/v1/schemes?lang=en&filter=a%00b")
    bad_request(r, "filter")
    r = await client.get("/regelingen/test-scheme%00", headers={"accept": "application/json"})
    bad_request(r, "path")


async def test_a_control_character_in_a_form_is_a_400_in_the_users_language(client, rt) -> None:
    await make_scheme(rt)
    r = await apply(client, contact_name="Jan\x00 Jansen")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert "Controleer deze velden: contact_name" in r.text and '<html lang="nl">' in r.text
    await client.get("/?lang=en")
    r = await apply(client, purpose="Coaching\x1b")
    assert r.status_code == 400 and "Check these fields: purpose" in r.text
    assert await count_applications(rt) == 0
    # Tabs and line breaks are ordinary in text.
    r = await apply(client, purpose="Coaching\r\n\tom nieuwe klanten te vinden")
    assert r.status_code in (200, 303), r.text
    assert await count_applications(rt) == 1


SECURITY = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


async def test_unmatched_routes_carry_the_security_headers_and_405_says_what_is_allowed(client) -> None:
    for r in (await client.get("/no-such-page"), await client.get("/api/v1/nothing-here"),
              await client.get("/no-such-page", headers={"accept": "text/html"}),
              await client.delete("/healthz"), await client.put("/api/v1/schemes")):
        assert r.status_code in (404, 405), r.text
        for name in SECURITY:
            assert name in r.headers, (r.request.url, name)
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in r.headers  # the base URL is http here
    r = await client.delete("/healthz")
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    r = await client.post("/healthz", headers={"accept": "text/html"})
    assert r.status_code == 405 and "GET" in r.headers["allow"]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_hsts_on_every_answer_when_the_base_url_is_https(rt, backend) -> None:
    from litestar.testing import AsyncTestClient

    from service.app import create_app

    app = create_app(msgspec.structs.replace(rt.settings, base_url="https://voucher.arnhem.nl"))
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as c:
        for r in (await c.get("/healthz"), await c.get("/nope"), await c.delete("/healthz"),
                  await c.get("/api/v1/schemes/x%00")):
            assert r.headers["strict-transport-security"].startswith("max-age="), r.status_code


async def test_a_body_over_the_limit_is_a_413_without_reading_it_all(client, world) -> None:
    big = b'{"reference": "' + b"x" * (70 * 1024) + b'"}'
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions", content=big,
                          headers={**bearer(world["token"]), "content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["x-content-type-options"] == "nosniff"
