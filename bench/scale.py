"""Scale: put N vouchers (default 1,000,000) in PostgreSQL with COPY, consistent with the ledger
and the scheme's figures, so the service sees a realistic table; then scan and redeem run again
over 1,000 of them spread over the table."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from pathlib import Path
from typing import Any

import asyncpg

from service import providers, schemes
from service.codes import format_code
from service.db import run_in_transaction
from service.runtime import Runtime

from .data import VALUE_CENTS, Fixture, _run, scheme_spec, settings_from

__all__ = ("load", "set_based_check")

SLUG = "bench-scale"
CHUNK = 50_000
SAMPLE = 1000


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _load(env: dict[str, str], workdir: Path, n: int) -> Fixture:
    rt = Runtime.create(settings_from(env))
    try:
        async def base(session: Any) -> tuple[int, str, str, int]:
            scheme, _ = await schemes.load_scheme(session, scheme_spec(SLUG, places=n + 10))
            provider = await providers.add_provider(session, providers.ProviderDetails(
                name="Scale Coaching", kvk_number="19999998", email="scale@example.org", iban="NL91ABNA0417164300"))
            enrolment = await providers.enrol(session, scheme, provider, list(scheme.categories))
            await providers.decide_enrolment(session, enrolment.id, approve=True)
            coach = await providers.create_token(session, rt, role="coach", name="scale coach", provider_id=provider.id)
            admin = await providers.create_token(session, rt, role="admin", name="scale admin", provider_id=None)
            return scheme.id, coach, admin, provider.id

        scheme_id, coach, admin, provider_id = await run_in_transaction(rt.sessionmaker, base)
    finally:
        await rt.close()

    keys = rt.keys
    conn = await asyncpg.connect(_dsn(env["VOUCHERS_DATABASE_URL"]))
    try:
        first_app = int(await conn.fetchval("select coalesce(max(id), 0) + 1 from application"))
        first_voucher = int(await conn.fetchval("select coalesce(max(id), 0) + 1 from voucher"))
        first_entry = int(await conn.fetchval("select coalesce(max(id), 0) + 1 from ledger_entry"))
        now = dt.datetime.now(dt.UTC)
        expires = now + dt.timedelta(days=365)
        step = max(1, n // SAMPLE)
        sample: list[tuple[int, str]] = []
        started = time.monotonic()
        for chunk_start in range(0, n, CHUNK):
            count = min(CHUNK, n - chunk_start)
            apps, vouchers, entries = [], [], []
            for i in range(chunk_start, chunk_start + count):
                app_id, voucher_id = first_app + i, first_voucher + i
                kvk = str(30_000_000 + i)
                salt = secrets.token_bytes(16)
                code = keys.code_for(salt)
                apps.append((app_id, f"S{i:012d}", scheme_id, "granted", kvk, f"Onderneming {i}", 3, "6811 AB",
                             "Jan Jansen", f"s{i}@example.org", "", "nl", "[]", now, now))
                vouchers.append((voucher_id, scheme_id, app_id, kvk, keys.hash_of(code), salt, "active", VALUE_CENTS,
                                 VALUE_CENTS, 0, 0, 0, True, now, expires))
                entries.append((first_entry + i, scheme_id, "issue", "budget", scheme_id, "voucher", voucher_id,
                                VALUE_CENTS, 1, voucher_id, now, ""))
                if i % step == 0 and len(sample) < SAMPLE:
                    sample.append((voucher_id, format_code(code)))
            async with conn.transaction():
                await conn.copy_records_to_table("application", records=apps, columns=[
                    "id", "public_id", "scheme_id", "status", "kvk_number", "company_name", "employees", "postcode",
                    "contact_name", "email", "purpose", "locale", "reasons", "created_at", "decided_at"])
                await conn.copy_records_to_table("voucher", records=vouchers, columns=[
                    "id", "scheme_id", "application_id", "kvk_number", "code_hash", "code_salt", "status", "value_cents",
                    "balance_cents", "held_cents", "redeemed_cents", "returned_cents", "holds_place", "issued_at",
                    "expires_at"])
                await conn.copy_records_to_table("ledger_entry", records=entries, columns=[
                    "id", "scheme_id", "kind", "from_kind", "from_id", "to_kind", "to_id", "amount_cents", "places",
                    "voucher_id", "created_at", "memo"])
            done = chunk_start + count
            rate = done / (time.monotonic() - started)
            print(f"\r  loaded {done:,}/{n:,} vouchers ({rate:,.0f}/s)", end="", flush=True)
        print()
        async with conn.transaction():
            # The place and the money of every voucher, as take_place would have moved them.
            await conn.execute("update scheme set places_used = places_used + $1, committed_cents = committed_cents + $2 "
                               "where id = $3", n, n * VALUE_CENTS, scheme_id)
            for table in ("application", "voucher", "ledger_entry"):
                await conn.execute(f"select setval(pg_get_serial_sequence('{table}', 'id'), (select max(id) from {table}))")
        print("  ANALYZE", flush=True)
        await conn.execute("analyze")
        # The load wrote gigabytes of WAL; without this the checkpoint that follows it writes the
        # pages out during the timed runs. A database in service wrote them long ago.
        print("  CHECKPOINT", flush=True)
        await conn.execute("checkpoint")
    finally:
        await conn.close()
    codes = workdir / "scale-codes.txt"
    codes.write_text("".join(code + "\n" for _, code in sample))
    tokens = workdir / "scale-coach-tokens.txt"
    tokens.write_text(coach + "\n")
    return Fixture(admin_token=admin, coach_token=coach, provider_id=provider_id, provider_ids=[provider_id],
                   coach_tokens=tokens, rush_slug="", page_rush_slug="", coach_email="", pool_slug=SLUG,
                   spread_ids=[i for i, _ in sample], hot_ids=[], spread_codes=codes, hot_codes=codes,
                   rush_kvks=codes, page_rush_kvks=codes)


def load(env: dict[str, str], workdir: Path, n: int) -> Fixture:
    return asyncio.run(_load(env, workdir, n))


CHECKS = {
    "vouchers whose balance differs from the ledger": """
        with moves as (
            select to_id as id, amount_cents as d from ledger_entry where to_kind = 'voucher'
            union all select from_id, -amount_cents from ledger_entry where from_kind = 'voucher'),
        bal as (select id, sum(d) as b from moves group by id)
        select count(*) from voucher v left join bal on bal.id = v.id where v.balance_cents <> coalesce(bal.b, 0)""",
    "vouchers whose amounts do not add up to their value": """
        select count(*) from voucher
        where balance_cents + held_cents + redeemed_cents + returned_cents <> value_cents""",
    "schemes whose committed/redeemed/places differ from their vouchers": """
        select count(*) from scheme s left join (
            select scheme_id, sum(balance_cents + held_cents + redeemed_cents) c, sum(redeemed_cents) r,
                   count(*) filter (where holds_place) p from voucher group by scheme_id) v on v.scheme_id = s.id
        left join (select scheme_id, sum(received_cents) r from enrolment group by scheme_id) e on e.scheme_id = s.id
        where s.committed_cents <> coalesce(v.c, 0) or coalesce(e.r, 0) <> coalesce(v.r, 0)
           or s.places_used <> coalesce(v.p, 0)""",
    "enrolments whose received figure differs from the ledger": """
        with moves as (
            select to_id as id, amount_cents as d from ledger_entry where to_kind = 'provider'
            union all select from_id, -amount_cents from ledger_entry where from_kind = 'provider'),
        bal as (select id, sum(d) as b from moves group by id)
        select count(*) from enrolment e left join bal on bal.id = e.id
        where e.received_cents - e.paid_cents <> coalesce(bal.b, 0)""",
}


def set_based_check(env: dict[str, str]) -> list[str]:
    """The reconcile rules that matter for redemptions, as a few set-based queries (seconds on
    millions of rows, where the ORM-based ``service.check.reconcile`` would load every voucher)."""
    from sqlalchemy import text

    async def work(session: Any) -> list[str]:
        problems = []
        for label, sql in CHECKS.items():
            value = int(await session.scalar(text(sql)) or 0)
            if value:
                problems.append(f"{value} {label}")
        return problems

    return _run(env, work)
