"""Helpers for making schemes, providers, tokens and vouchers in tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
import secrets
from typing import Any

import msgspec
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from service import applications, providers, schemes
from service.codes import format_code
from service.db import run_in_transaction
from service.models import Provider, Scheme, Voucher, utcnow
from service.runtime import Runtime

_kvk = itertools.count(10000000)


def next_kvk() -> str:
    return str(next(_kvk))


def scheme_spec(**overrides: Any) -> schemes.SchemeFile:
    now = utcnow()
    base: dict[str, Any] = {
        "slug": "test-scheme",
        "name": "Testregeling",
        "name_en": "Test scheme",
        "allocation": "first_come",
        "budget_cents": 405_000_00,
        "max_places": 300,
        "value_cents": 1_350_00,
        "categories": ["coaching", "retraining", "financial_advice"],
        "applications_open_at": now - dt.timedelta(days=1),
        "applications_close_at": now + dt.timedelta(days=30),
        "validity_days": 90,
        "eligibility": {"max_employees": 10, "postcodes": ["6811-6846"]},
    }
    base.update(overrides)
    return msgspec.convert(base, schemes.SchemeFile)


async def make_scheme(rt: Runtime, **overrides: Any) -> Scheme:
    spec = scheme_spec(**overrides)

    async def work(session):  # type: ignore[no-untyped-def]
        scheme, _ = await schemes.load_scheme(session, spec)
        return scheme

    return await run_in_transaction(rt.sessionmaker, work)


def applicant(**overrides: Any) -> applications.ApplicantDetails:
    base: dict[str, Any] = {
        "kvk_number": next_kvk(),
        "company_name": "Bakkerij De Korenbloem",
        "employees": 3,
        "postcode": "6811 AB",
        "contact_name": "Jan Jansen",
        "email": f"ondernemer{next(_kvk)}@example.org",
    }
    base.update(overrides)
    return msgspec.convert(base, applications.ApplicantDetails)


async def make_voucher(rt: Runtime, scheme: Scheme, **overrides: Any) -> tuple[Voucher, str]:
    """Apply and decide; returns the voucher and its code as a person would type it."""
    details = applicant(**overrides)

    async def work(session):  # type: ignore[no-untyped-def]
        fresh = await session.get_one(Scheme, scheme.id)
        application = await applications.submit(session, fresh, details)
        await applications.decide(session, rt, fresh, application, employees=details.employees,
                                  postcode=details.postcode)
        return await session.scalar(select(Voucher).where(Voucher.application_id == application.id))

    voucher = await run_in_transaction(rt.sessionmaker, work)
    assert voucher is not None, "no place left for this test voucher"
    return voucher, format_code(rt.keys.code_for(voucher.code_salt))


async def make_provider(rt: Runtime, scheme: Scheme, *, approve: bool = True, categories: list[str] | None = None,
                        name: str = "Coach & Co") -> tuple[Provider, str]:
    """A provider enrolled in ``scheme`` and a coach API token for it."""

    async def work(session):  # type: ignore[no-untyped-def]
        provider = await providers.add_provider(session, providers.ProviderDetails(
            name=name, kvk_number=next_kvk(), email="coach@example.org", iban="NL91ABNA0417164300"))
        fresh = await session.get_one(Scheme, scheme.id)
        enrolment = await providers.enrol(session, fresh, provider, categories or list(fresh.categories))
        if approve:
            await providers.decide_enrolment(session, enrolment.id, approve=True)
        token = await providers.create_token(session, rt, role="coach", name=name, provider_id=provider.id)
        return provider, token

    return await run_in_transaction(rt.sessionmaker, work)


async def confirm_providers(rt: Runtime) -> None:
    """Confirm every web sign-up's address through the link its mail carries (staff decide only
    confirmed ones)."""
    from service import staff
    from sqlalchemy import select

    async def work(session):  # type: ignore[no-untyped-def]
        for provider_id in list(await session.scalars(select(Provider.id).where(Provider.email_confirmed_at.is_(None)))):
            token = staff.confirm_link(rt, provider_id).rpartition("/")[2]
            assert await staff.confirm_provider(session, rt, token) is not None

    await run_in_transaction(rt.sessionmaker, work)


async def admin_token(rt: Runtime) -> str:
    return await run_in_transaction(
        rt.sessionmaker, lambda s: providers.create_token(s, rt, role="admin", name="gemeente", provider_id=None)
    )


async def reload(rt: Runtime, model: type, id_: int) -> Any:
    async with rt.sessionmaker() as session:
        return await session.get_one(model, id_)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_pg_schema(url: str, prefix: str = "t") -> str:
    """A new, empty schema in the run's PostgreSQL database (``pg_database``), for one test or one
    module: the tables of each test stay apart without a database of their own."""
    schema = f"{prefix}_{secrets.token_hex(6)}"

    async def create() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await engine.dispose()

    asyncio.run(create())
    return schema


_LIMIT_STATEMENT = re.compile(r"\s*(INSERT INTO rate_limit_counter|UPDATE rate_limit_counter|SELECT f\.count)")
"""The failed-lookup limit's own statements (``service.ratelimit``), not those that read its count."""


class Statements:
    """The statements this process sends to a database while the block runs (``service.statements``),
    on every path: the engines, ``sqlite3`` and asyncpg's own connections."""

    CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._listening: Any = None

    def __enter__(self) -> Statements:
        from service import statements

        self._listening = statements.listening(self.sent.append)
        self._listening.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._listening.__exit__(*exc)

    @property
    def work(self) -> list[str]:
        """The statements that read or write, without transaction control."""
        return [sql for sql in self.sent if sql.split(None, 1)[0].upper() not in self.CONTROL]

    @property
    def limits(self) -> list[str]:
        """The failed-lookup limit's own statements: taking a slot before a code is looked up, and
        giving it back when the code was found (``ratelimit.failures_limited``)."""
        return [sql for sql in self.work if _LIMIT_STATEMENT.match(sql)]

    @property
    def beside_limits(self) -> list[str]:
        """:attr:`work` without the failed-lookup limit's statements."""
        return [sql for sql in self.work if not _LIMIT_STATEMENT.match(sql)]

    def count(self, word: str) -> int:
        """How often a transaction was begun, committed or rolled back (``BEGIN`` …)."""
        return sum(1 for sql in self.sent if sql.split(None, 1)[0].upper() == word)
