"""The OpenAPI document tells the truth about the API: schemathesis generates requests from
``/api/schema/openapi.json`` (valid ones and invalid ones) and runs every check it has against
the real app factory, as a coach, as the municipality and as nobody."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from service.app import create_app
from service.models import Base
from service.runtime import Runtime
from service.settings import Settings
from tests.conftest import TEST_SECRET
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher, new_pg_schema

CONFIG = schemathesis.Config.from_dict({
    "seed": 20261205,
    # Undeclared query parameters are ignored, as everywhere on the web; schemathesis does not
    # count them against the API either, except a parameter with an empty name.
    "generation": {"max-examples": 20, "deterministic": True, "database": "none", "allow-extra-parameters": False},
    "checks": {
        # A request the document calls valid may still be refused by the scheme's rules: a code
        # whose check symbol is wrong, a balance too low, an Idempotency-Key used before. This API
        # answers those with 422 (see problems.STATUS); a malformed request is a 400 and still fails.
        "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]},
    },
})


@dataclass
class World:
    app: Any
    tokens: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.tokens[role]) if role in self.tokens else {}


async def _seed(settings: Settings) -> dict[str, str]:
    rt = Runtime.create(settings)
    try:
        async with rt.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        scheme = await make_scheme(rt)
        for _ in range(3):
            await make_voucher(rt, scheme)
        _provider, coach = await make_provider(rt, scheme)
        return {"coach": coach, "admin": await admin_token(rt)}
    finally:
        await rt.close()


# One database per backend, seeded once and shared by every operation and role in turn, so that
# the state grows as a real API's does (redemptions lower balances, wrong codes count towards the
# limit of failed lookups); the order of the tests and the seed keep the run the same every time.
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("openapi")
    schema = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp}/vouchers.db"
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_pg_schema(url)
    settings = Settings(environment="test", database_url=url, database_schema=schema, secret_key=TEST_SECRET,
                        base_url="http://testserver.local", mail_dir=str(tmp / "mail"), background_tasks=False)
    tokens = asyncio.run(_seed(settings))
    yield World(create_app(settings), tokens)


@pytest.fixture(scope="module", params=["coach", "admin", "anonymous"])
def role(request: pytest.FixtureRequest) -> str:
    return request.param


def _document() -> Any:
    """The document as the app serves it. Read when the module is collected, because that is when
    schemathesis makes one test per operation; serving it opens no database."""
    unused = Path(tempfile.gettempdir()) / "vouchers-openapi-document.db"
    settings = Settings(environment="test", database_url=f"sqlite+aiosqlite:///{unused}", secret_key=TEST_SECRET,
                        background_tasks=False)
    return schemathesis.openapi.from_asgi("/api/schema/openapi.json", create_app(settings), config=CONFIG)


schema = _document()


@schema.parametrize()
def test_the_api_does_what_its_document_says(case: Any, world: World, role: str) -> None:
    case.call_and_validate(app=world.app, headers=world.headers(role))


# --- what schemathesis found, pinned down -------------------------------------------------------


async def test_the_last_day_of_the_calendar_is_refused_not_a_failure(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme)
    _provider, coach = await make_provider(rt, scheme)
    admin = bearer(await admin_token(rt))
    r = await client.get("/api/v1/provider/statement?month=9999-12", headers=bearer(coach))
    assert r.status_code == 422 and r.json()["code"] == "month-invalid"
    r = await client.post(f"/api/v1/admin/vouchers/{voucher.id}/extension", headers=admin,
                          json={"until": "9999-12-31", "reason": "ziekte"})
    assert r.status_code == 422 and r.json()["code"] == "date-too-late"
    r = await client.get("/api/v1/admin/audit?since=9999-12-31&until=9999-12-31", headers=admin)
    assert r.status_code == 200 and r.json() == []
    r = await client.get(f"/api/v1/admin/vouchers/{2**31}/history", headers=admin)
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "voucher_id"


async def test_too_many_attempts_say_when_to_try_again(client, rt) -> None:
    scheme = await make_scheme(rt)
    _voucher, code = await make_voucher(rt, scheme)
    _provider, coach = await make_provider(rt, scheme)
    for _ in range(rt.settings.failed_lookup_limit):
        assert (await client.get("/api/v1/vouchers/0000-0000", headers=bearer(coach))).status_code == 422
    r = await client.get(f"/api/v1/vouchers/{code}", headers=bearer(coach))
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) == 60 * max(1, rt.settings.failed_lookup_window_seconds // 60)


async def test_options_lists_every_method_of_a_path(client, rt) -> None:
    scheme = await make_scheme(rt)
    _provider, coach = await make_provider(rt, scheme)
    r = await client.options("/api/v1/provider/offers", headers=bearer(coach))
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, POST"


async def test_an_integer_may_be_written_with_a_zero_fraction(client, rt) -> None:
    scheme = await make_scheme(rt)
    _voucher, code = await make_voucher(rt, scheme)
    _provider, coach = await make_provider(rt, scheme)
    url = f"/api/v1/vouchers/{code}/redemptions"
    body = {"amount_cents": 1000.0, "category": "coaching", "reference": "F-1"}
    r = await client.post(url, headers=bearer(coach), json=body)
    assert r.status_code == 201 and r.json()["amount_cents"] == 1000
    for wrong in (1000.5, "1000"):
        r = await client.post(url, headers=bearer(coach), json={**body, "amount_cents": wrong})
        assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "amount_cents"


async def test_the_document_names_its_security_and_problem_shape(client) -> None:
    document = (await client.get("/api/schema/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    redeem = document["paths"]["/api/v1/vouchers/{code}/redemptions"]["post"]
    assert redeem["security"] == [{"bearer": []}]
    assert {"400", "401", "403", "404", "409", "422", "429"} <= set(redeem["responses"])
    assert redeem["responses"]["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert redeem["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/RedemptionOut")
    assert "application/problem+json" in redeem["responses"]["422"]["content"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in redeem["parameters"])
    assert "security" not in document["paths"]["/api/v1/schemes"]["get"]


def test_every_api_route_is_documented_with_problem_answers() -> None:
    """A route added later with a plain Controller (not ``ApiController``) or without its token
    fails here before schemathesis has to find out."""
    app = schema.app
    document = app.openapi_schema.to_schema()
    routes = {route.path.replace(":int}", "}").replace(":str}", "}") for route in app.routes
              if route.path.startswith("/api/v1")}
    assert routes == set(document["paths"])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            assert {"400", "401", "500"} <= set(operation["responses"]), label
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (label, status)
            public = path in ("/api/v1/schemes", "/api/v1/offers", "/api/v1/provider-applications") or \
                path.startswith(("/api/v1/schemes/", "/api/v1/applications/"))
            assert ("security" in operation) != public, label
            assert public or "403" in operation["responses"], label
