"""Databases and data for the benchmark: a fresh database per run, the schemes, a provider with
a coach token, an admin token and vouchers, all made through the service's own domain functions
(as tests/helpers.py does), and the checks run after each scenario."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service import applications, check, providers, schemes, signin, staff
from service.codes import format_code
from service.db import run_in_transaction
from service.models import Application, Enrolment, OutboxMessage, Redemption, Scheme, Voucher, utcnow
from service.models_admin import AuditEntry
from service.runtime import Runtime
from service.settings import Settings

__all__ = ("Fixture", "prepare_database", "drop_database", "server_env", "setup_data", "RUSH_BODY", "REDEEM_BODY",
           "REDEEM_AMOUNT", "rush_check", "money_snapshot", "reconcile", "database_version", "confirm_tokens",
           "applicant_address", "PROXY", "COACH_ADDRESS")

PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# A database of its own per run (several runs may share one PostgreSQL server), dropped at the end.
PG_DATABASE = os.environ.get("BENCH_POSTGRES_DATABASE") or f"vouchers_bench_{os.getpid()}_{secrets.token_hex(3)}"
BIN = Path(sys.executable).parent
PROXY = "127.0.0.1"
"""The trusted proxy (``VOUCHERS_TRUSTED_PROXIES``): wrk connects from it, and the pages' requests
carry the client's address in ``X-Forwarded-For`` as a reverse proxy would add it."""
COACH_ADDRESS = "192.0.2.10"

VALUE_CENTS = 1_350_00
# Cents per redemption; the schemes have no own contribution, so the voucher pays all of it. Small,
# so that the ten vouchers of the hot-spot run (EUR 1,350 each) last 135,000 redemptions.
REDEEM_AMOUNT = 10
RUSH_KVK_BASE = 20_000_000
PAGE_RUSH_KVK_BASE = 40_000_000
PAGE_RUSH_SLUG = "bench-rush-page"
COACH_PASSWORD = "bench-coach-password-1"
COACH_EMAIL = "bench.coach@example.org"
PROVIDERS = 10  # enrolled in the pool scheme; the spread-over-providers run uses a coach of each in turn
RUSH_BODY = ('{"kvk_number":"{item}","company_name":"Bench BV {item}","employees":3,"postcode":"6811 AB",'
             '"contact_name":"Jan Bench","email":"b{item}@example.org"}')
REDEEM_BODY = '{"amount_cents":%d,"category":"coaching","reference":"bench-{n}"}' % REDEEM_AMOUNT


def prepare_database(db: str, workdir: Path) -> str:
    """A new, empty database for this run; returns its URL."""
    if db == "sqlite":
        path = workdir / "vouchers-bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite+aiosqlite:///{path}"

    async def recreate() -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
                await conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
        finally:
            await engine.dispose()

    asyncio.run(recreate())
    return make_url(PG_ADMIN_URL).set(database=PG_DATABASE).render_as_string(hide_password=False)


def drop_database(db: str) -> None:
    """Drop this run's PostgreSQL database (the servers on it have stopped)."""
    if db != "postgres":
        return

    async def drop() -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
        finally:
            await engine.dispose()

    asyncio.run(drop())


def server_env(url: str, workdir: Path) -> dict[str, str]:
    """Production settings: a random secret, mail to files, background tasks on (as deployed),
    behind a reverse proxy on 127.0.0.1, with the trade register read from an extract that holds
    the applicants of the page rush."""
    return {
        **os.environ,
        "VOUCHERS_ENVIRONMENT": "production",
        "VOUCHERS_SECRET_KEY": secrets.token_hex(32),
        "VOUCHERS_DATABASE_URL": url,
        "VOUCHERS_MAIL_BACKEND": "file",
        "VOUCHERS_MAIL_DIR": str(workdir / "mail"),
        "VOUCHERS_TRUSTED_PROXIES": PROXY,
        "VOUCHERS_REGISTRY": "file",
        "VOUCHERS_REGISTRY_FILE": str(workdir / "kvk-extract.csv"),
    }


def applicant_address(i: int) -> str:
    """A client address of its own for applicant ``i`` (10.0.0.0/8, up to 16 million)."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def migrate(env: dict[str, str]) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([str(BIN / "vouchers"), "db", "upgrade"], env={**env, "PYTHONPATH": root},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vouchers db upgrade failed:\n{done.stderr[-3000:]}")


def settings_from(env: dict[str, str]) -> Settings:
    return Settings.from_env(environ=env)


def scheme_spec(slug: str, *, places: int, budget_places: int | None = None) -> schemes.SchemeFile:
    now = utcnow()
    return msgspec.convert({
        "slug": slug, "name": f"Bench {slug}", "name_en": f"Bench {slug}", "allocation": "first_come",
        "budget_cents": VALUE_CENTS * (budget_places or places), "max_places": places, "value_cents": VALUE_CENTS,
        "categories": ["coaching", "retraining", "financial_advice"],
        "applications_open_at": (now - dt.timedelta(days=1)).isoformat(),
        "applications_close_at": (now + dt.timedelta(days=30)).isoformat(),
        "validity_days": 365, "eligibility": {"max_employees": 10, "postcodes": ["6811-6846"]},
    }, schemes.SchemeFile)


@dataclass
class Fixture:
    admin_token: str
    coach_token: str
    provider_id: int
    provider_ids: list[int]
    """Every provider's, the first being ``provider_id``: the coaches of ``coach_tokens``."""
    coach_tokens: Path
    """A coach token of each provider, one per line, for the run spread over providers."""
    rush_slug: str
    page_rush_slug: str
    coach_email: str
    """The first provider's staff account (password ``COACH_PASSWORD``), for the coach's pages."""
    pool_slug: str
    spread_ids: list[int]
    hot_ids: list[int]
    spread_codes: Path
    hot_codes: Path
    rush_kvks: Path
    page_rush_kvks: Path
    """The page rush's applicants: ``kvk<TAB>client address`` a line."""


async def _make_vouchers(rt: Runtime, slug: str, count: int, kvk_start: int, progress: str = "") -> list[tuple[int, str]]:
    made: list[tuple[int, str]] = []
    batch = 100
    for start in range(0, count, batch):
        async def work(session: Any, start: int = start) -> list[tuple[int, str]]:
            scheme = await schemes.get_scheme(session, slug)
            out = []
            for i in range(start, min(start + batch, count)):
                details = applications.ApplicantDetails(
                    kvk_number=str(kvk_start + i), company_name=f"Bakkerij {i}", employees=3, postcode="6811 AB",
                    contact_name="Jan Jansen", email=f"v{kvk_start + i}@example.org")
                application = await applications.submit(session, scheme, details)
                await applications.decide(session, rt, scheme, application, employees=3, postcode="6811 AB")
                voucher = await session.scalar(select(Voucher).where(Voucher.application_id == application.id))
                assert voucher is not None, "no place left for a bench voucher"
                out.append((voucher.id, format_code(rt.keys.code_for(voucher.code_salt))))
            return out

        made += await run_in_transaction(rt.sessionmaker, work)
        if progress:
            print(f"\r  {progress}: {len(made)}/{count} vouchers", end="", flush=True)
    if progress:
        print()
    return made


async def setup_data(env: dict[str, str], workdir: Path, *, pool: int, hot: int, rush_cap: int,
                     rush_applicants: int) -> Fixture:
    rt = Runtime.create(settings_from(env))
    try:
        async def base(session: Any) -> tuple[str, list[str], list[int]]:
            await schemes.load_scheme(session, scheme_spec("bench-rush", places=rush_cap))
            await schemes.load_scheme(session, scheme_spec(PAGE_RUSH_SLUG, places=rush_cap))
            pool_scheme, _ = await schemes.load_scheme(session, scheme_spec("bench-pool", places=pool + hot))
            coaches, provider_ids = [], []
            for n in range(PROVIDERS):
                provider = await providers.add_provider(session, providers.ProviderDetails(
                    name=f"Bench Coaching {n + 1}", kvk_number=str(19_990_000 + n), email=f"coach{n + 1}@example.org",
                    iban="NL91ABNA0417164300"))
                enrolment = await providers.enrol(session, pool_scheme, provider, list(pool_scheme.categories))
                await providers.decide_enrolment(session, enrolment.id, approve=True)
                coaches.append(await providers.create_token(session, rt, role="coach", name=f"bench coach {n + 1}",
                                                            provider_id=provider.id))
                provider_ids.append(provider.id)
            admin = await providers.create_token(session, rt, role="admin", name="bench intake", provider_id=None)
            await staff.create_user(session, provider_id=provider_ids[0], email=COACH_EMAIL, name="Bench Coach",
                                    password=COACH_PASSWORD)
            return admin, coaches, provider_ids

        admin, coaches, provider_ids = await run_in_transaction(rt.sessionmaker, base)
        made = await _make_vouchers(rt, "bench-pool", pool + hot, 10_000_000, progress="setup")
        if not rt.settings.is_sqlite:
            # A database in service has planner statistics: autovacuum gathers them within a
            # minute of a load. Without them PostgreSQL found a redeemed voucher through the
            # expiry index, reading every active voucher, instead of by its id.
            async with rt.sessionmaker() as session:
                await session.execute(text("ANALYZE"))
    finally:
        await rt.close()
    spread, hot_made = made[:pool], made[pool:]
    files = {}
    for name, rows in (("spread-codes.txt", spread), ("hot-codes.txt", hot_made)):
        files[name] = workdir / name
        files[name].write_text("".join(code + "\n" for _, code in rows))
    kvks = workdir / "rush-kvk.txt"
    kvks.write_text("".join(f"{RUSH_KVK_BASE + i}\n" for i in range(rush_applicants)))
    page_kvks = workdir / "page-rush-kvk.txt"
    page_kvks.write_text("".join(f"{PAGE_RUSH_KVK_BASE + i}\t{applicant_address(i)}\n" for i in range(rush_applicants)))
    # The trade register's extract: every applicant of the page rush is an eligible firm.
    (workdir / "kvk-extract.csv").write_text("kvk_number,name,employees,postcode,active\n" + "".join(
        f"{PAGE_RUSH_KVK_BASE + i},Bench Page BV {i},3,6811 AB,yes\n" for i in range(rush_applicants)))
    tokens = workdir / "coach-tokens.txt"
    tokens.write_text("".join(token + "\n" for token in coaches))
    return Fixture(admin_token=admin, coach_token=coaches[0], provider_id=provider_ids[0], provider_ids=provider_ids,
                   coach_tokens=tokens, rush_slug="bench-rush", page_rush_slug=PAGE_RUSH_SLUG, coach_email=COACH_EMAIL,
                   page_rush_kvks=page_kvks,
                   pool_slug="bench-pool", spread_ids=[i for i, _ in spread], hot_ids=[i for i, _ in hot_made],
                   spread_codes=files["spread-codes.txt"], hot_codes=files["hot-codes.txt"], rush_kvks=kvks)


def _run(env: dict[str, str], work: Any) -> Any:
    async def main() -> Any:
        rt = Runtime.create(settings_from(env))
        try:
            async with rt.sessionmaker() as session:
                return await work(session)
        finally:
            await rt.close()

    return asyncio.run(main())


def backlog(env: dict[str, str]) -> tuple[int, int]:
    """Mails not yet sent and audit entries not yet sealed: the background work still to do."""

    async def work(session: Any) -> tuple[int, int]:
        mails = await session.scalar(select(func.count()).select_from(OutboxMessage)
                                     .where(OutboxMessage.status == "pending"))
        unsealed = await session.scalar(select(func.count()).select_from(AuditEntry)
                                        .where(AuditEntry.chain_seq.is_(None)))
        return int(mails or 0), int(unsealed or 0)

    return _run(env, work)


def reconcile(env: dict[str, str]) -> list[str]:
    """``service.check.reconcile``: what ``vouchers check`` runs."""
    return _run(env, check.reconcile)


def rush_check(env: dict[str, str], slug: str, *, cap: int, applicants: int) -> list[str]:
    """Exactly ``cap`` vouchers, everyone else on the waiting list, counters agree."""

    async def work(session: Any) -> list[str]:
        scheme = await schemes.get_scheme(session, slug)
        vouchers = await session.scalar(select(func.count()).select_from(Voucher).where(Voucher.scheme_id == scheme.id))
        by_status = dict((await session.execute(
            select(Application.status, func.count()).where(Application.scheme_id == scheme.id).group_by(Application.status)
        )).all())
        problems = []
        if vouchers != cap:
            problems.append(f"{vouchers} vouchers, expected {cap}")
        if by_status.get("waiting", 0) != applicants - cap:
            problems.append(f"{by_status.get('waiting', 0)} waiting, expected {applicants - cap}")
        if by_status.get("granted", 0) != cap:
            problems.append(f"{by_status.get('granted', 0)} granted, expected {cap}")
        if sum(by_status.values()) != applicants:
            problems.append(f"{sum(by_status.values())} applications stored, expected {applicants}")
        if scheme.places_used != cap or scheme.waiting_count != applicants - cap:
            problems.append(f"scheme counters: {scheme.places_used} places used, {scheme.waiting_count} waiting")
        if scheme.committed_cents != cap * scheme.value_cents:
            problems.append(f"scheme committed {scheme.committed_cents} cents, expected {cap * scheme.value_cents}")
        others = {k: v for k, v in by_status.items() if k not in ("granted", "waiting")}
        if others:
            problems.append(f"applications left in {others}")
        return problems

    return _run(env, work)


def confirm_tokens(env: dict[str, str], slug: str, kvk_base: int, first: int, count: int) -> list[tuple[int, str]]:
    """``(applicant index, confirmation token)`` of the unconfirmed applications of applicants
    ``first`` to ``first + count - 1``, in that order: the token of the link their mail carries
    (``signin.confirm_link``, made with the server's secret)."""

    async def main() -> list[tuple[int, str]]:
        rt = Runtime.create(settings_from(env))
        try:
            async with rt.sessionmaker() as session:
                scheme = await schemes.get_scheme(session, slug)
                numbers = [str(kvk_base + i) for i in range(first, first + count)]
                rows = (await session.execute(
                    select(Application.kvk_number, Application.public_id)
                    .where(Application.scheme_id == scheme.id, Application.status == "unconfirmed"))).all()
            found = {kvk: public_id for kvk, public_id in rows}
            return [(int(kvk) - kvk_base, signin.confirm_link(rt, found[kvk]).rsplit("/", 1)[1])
                    for kvk in numbers if kvk in found]
        finally:
            await rt.close()

    return asyncio.run(main())


def money_snapshot(env: dict[str, str], voucher_ids: list[int], provider_ids: list[int]) -> dict[str, int]:
    """Balances of the given vouchers, their redemptions, and what the providers have received."""

    async def work(session: Any) -> dict[str, int]:
        balance, redeemed = (await session.execute(
            select(func.coalesce(func.sum(Voucher.balance_cents), 0), func.coalesce(func.sum(Voucher.redeemed_cents), 0))
            .where(Voucher.id.in_(voucher_ids)))).one()
        count = await session.scalar(select(func.count()).select_from(Redemption).where(Redemption.voucher_id.in_(voucher_ids)))
        received = await session.scalar(select(func.coalesce(func.sum(Enrolment.received_cents), 0))
                                        .where(Enrolment.provider_id.in_(provider_ids)))
        return {"balance": int(balance), "redeemed": int(redeemed), "redemptions": int(count), "provider": int(received)}

    return _run(env, work)


def database_version(env: dict[str, str]) -> str:
    async def work(session: Any) -> str:
        if session.bind.dialect.name == "sqlite":
            return "SQLite " + str(await session.scalar(text("select sqlite_version()")))
        return str(await session.scalar(text("select version()"))).split(" on ")[0]

    return _run(env, work)


def scheme_row(env: dict[str, str], slug: str) -> Scheme:
    return _run(env, lambda session: schemes.get_scheme(session, slug))
