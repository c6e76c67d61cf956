"""The OpenAPI document tells the truth about the API: schemathesis generates requests from
``/api/schema/openapi.json`` (valid ones and invalid ones) and runs every check it has against
the real app factory, as a coach, as the municipality and as nobody."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.app import create_app
from service.models import Base
from service.runtime import Runtime
from service.settings import Settings
from tests.conftest import TEST_SECRET
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher

CONFIG = schemathesis.Config.from_dict({
    "seed": 20261205,
    "generation": {"max-examples": 25, "deterministic": True, "database": "none"},
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


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("openapi")
    schema = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp}/vouchers.db"
    else:
        url = request.getfixturevalue("pg_database")
        schema = f"t_{secrets.token_hex(6)}"

        async def create() -> None:
            engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
            async with engine.connect() as conn:
                await conn.execute(text(f"CREATE SCHEMA {schema}"))
            await engine.dispose()

        asyncio.run(create())
    settings = Settings(environment="test", database_url=url, database_schema=schema, secret_key=TEST_SECRET,
                        base_url="http://testserver.local", mail_dir=str(tmp / "mail"), background_tasks=False)
    tokens = asyncio.run(_seed(settings))
    yield World(create_app(settings), tokens)


@pytest.fixture(scope="module", params=["coach", "admin", "anonymous"])
def role(request: pytest.FixtureRequest) -> str:
    return request.param


def _document() -> Any:
    """The document as the app serves it; reading it touches no database."""
    folder = tempfile.mkdtemp()
    settings = Settings(environment="test", database_url=f"sqlite+aiosqlite:///{folder}/unused.db",
                        secret_key=TEST_SECRET, mail_dir=folder, background_tasks=False)
    return schemathesis.openapi.from_asgi("/api/schema/openapi.json", create_app(settings), config=CONFIG)


schema = _document()


@schema.parametrize()
def test_the_api_does_what_its_document_says(case: Any, world: World, role: str) -> None:
    case.call_and_validate(app=world.app, headers=world.headers(role))
