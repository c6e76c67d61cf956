"""The audit log: every change is recorded with who, where, before and after; secrets and
personal data never enter it; the hash chain catches an edited or a removed entry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from service import audit, vouchers
from service.db import run_in_transaction
from service.models import Application, AuditEntry, Redemption, Scheme, Voucher
from tests.conftest import ROOT, TEST_SECRET, settings_env
from tests.helpers import make_provider, make_scheme, make_voucher


async def _activity(rt):  # type: ignore[no-untyped-def]
    """A scheme, a voucher, a redemption and its reversal, by a named actor."""
    with audit.use_context("cli:tester", "local"):
        scheme = await make_scheme(rt)
        voucher, code = await make_voucher(rt, scheme, company_name="Geheime Bakkerij", contact_name="Jan Geheim")
        provider, _token = await make_provider(rt, scheme)

        async def redeem(session):  # type: ignore[no-untyped-def]
            fresh = await session.get_one(Voucher, voucher.id)
            return await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name=provider.name,
                                         category="coaching", invoice_cents=10000, reference="F-1",
                                         session_date=None, recorded_by="test")

        redemption = await run_in_transaction(rt.sessionmaker, redeem)
        await run_in_transaction(rt.sessionmaker, lambda s: vouchers.reverse_redemption(
            s, redemption.id, reason="dubbel geboekt", provider_id=None))
    await audit.seal_all(rt.sessionmaker)
    return scheme, voucher, code, provider, redemption


async def test_changes_are_recorded_with_actor_before_and_after(rt) -> None:
    scheme, voucher, code, _provider, redemption = await _activity(rt)
    async with rt.sessionmaker() as session:
        entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        assert (await audit.verify(session)).ok
    assert entries and all(e.actor == "cli:tester" and e.address == "local" for e in entries)
    # Inserts by the ORM flush.
    assert any(e.action == "insert" and e.table_name == "voucher" and e.row_id == str(voucher.id) for e in entries)
    # Counters changed by update() statements, with before and after.
    received = [e for e in entries if e.table_name == "enrolment" and e.action == "update" and "received_cents" in e.after]
    assert [(e.before["received_cents"], e.after["received_cents"]) for e in received] == [(0, 10000), (10000, 0)]
    balance = [e for e in entries if e.table_name == "voucher" and e.action == "update" and "balance_cents" in e.after]
    assert (balance[0].before["balance_cents"], balance[0].after["balance_cents"]) == (135000, 125000)
    reversal = [e for e in entries if e.table_name == "redemption" and e.action == "update"]
    assert reversal[0].after["reversal_reason"] == "dubbel geboekt" and reversal[0].row_id == str(redemption.id)
    # No secrets and no personal data in the log.
    dumped = json.dumps([[e.before, e.after] for e in entries])
    for secret in ("Geheime Bakkerij", "Jan Geheim", code.replace("-", ""), voucher.kvk_number, "example.org"):
        assert secret not in dumped.replace("-", ""), secret
    insert = next(e for e in entries if e.action == "insert" and e.table_name == "application")
    assert insert.after["company_name"] == audit.REDACTED and insert.after["email"] == audit.REDACTED
    assert next(e for e in entries if e.table_name == "voucher" and e.action == "insert").after["code_hash"] \
        == audit.REDACTED


async def test_rolled_back_work_leaves_no_entries(rt) -> None:
    scheme = await make_scheme(rt)
    async with rt.sessionmaker() as session:
        before = len(list(await session.scalars(select(AuditEntry))))

    async def fails(session):  # type: ignore[no-untyped-def]
        await session.execute(update(Scheme).where(Scheme.id == scheme.id).values(name="Anders"))
        raise RuntimeError("boom")

    try:
        await run_in_transaction(rt.sessionmaker, fails)
    except RuntimeError:
        pass

    async def savepoint(session):  # type: ignore[no-untyped-def]
        try:
            async with session.begin_nested():
                await session.execute(update(Scheme).where(Scheme.id == scheme.id).values(name="Weg"))
                raise RuntimeError("inner")
        except RuntimeError:
            pass
        await session.execute(update(Scheme).where(Scheme.id == scheme.id).values(name="Blijft"))

    await run_in_transaction(rt.sessionmaker, savepoint)
    async with rt.sessionmaker() as session:
        entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        assert (await audit.verify(session)).ok
    new = entries[before:]
    assert [(e.before.get("name"), e.after.get("name")) for e in new] == [("Testregeling", "Blijft")]


def _verify_cli(rt) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "service.cli", "audit", "verify"], cwd=ROOT,
                          env={**os.environ, **settings_env(rt.settings)}, capture_output=True, text=True, timeout=120)


async def test_an_edited_entry_is_detected(rt) -> None:
    await _activity(rt)
    ok = _verify_cli(rt)
    assert ok.returncode == 0 and "audit log intact" in ok.stdout, ok.stdout + ok.stderr
    async with rt.sessionmaker() as session, session.begin():
        target = await session.scalar(select(AuditEntry).where(AuditEntry.table_name == "scheme",
                                                               AuditEntry.action == "update").limit(1))
        changed = dict(target.after)
        changed["redeemed_cents"] = 1
        # Straight in the database, as someone with access to it would.
        await session.execute(update(AuditEntry.__table__).where(AuditEntry.seq == target.seq)
                              .values(after=changed), execution_options={"audit_skip": True})
    async with rt.sessionmaker() as session:
        result = await audit.verify(session)
    assert not result.ok and f"entry {target.seq}: its content was changed" in result.problems
    failed = _verify_cli(rt)
    assert failed.returncode == 1 and f"entry {target.seq}" in failed.stdout


async def test_a_deleted_entry_is_detected(rt) -> None:
    await _activity(rt)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(text("DELETE FROM audit_entry WHERE seq = 3"))
    async with rt.sessionmaker() as session:
        result = await audit.verify(session)
    assert not result.ok and any("missing" in p or "does not follow" in p for p in result.problems)
    assert _verify_cli(rt).returncode == 1


async def test_removing_the_last_entries_is_detected(rt) -> None:
    await _activity(rt)
    async with rt.sessionmaker() as session, session.begin():
        last = await session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
        await session.execute(delete(AuditEntry.__table__).where(AuditEntry.seq == last),
                              execution_options={"audit_skip": True})
    async with rt.sessionmaker() as session:
        result = await audit.verify(session)
    assert not result.ok and "entries were removed" in result.problems[-1]


async def test_search_filters(rt) -> None:
    scheme, voucher, *_ = await _activity(rt)
    async with rt.sessionmaker() as session:
        by_row = await audit.search(session, audit.AuditFilter(table_name="voucher", row_id=str(voucher.id)))
        assert by_row and all(e.table_name == "voucher" and e.row_id == str(voucher.id) for e in by_row)
        assert [e.seq for e in by_row] == sorted((e.seq for e in by_row), reverse=True)
        by_text = await audit.search(session, audit.AuditFilter(text="dubbel geboekt"))
        assert [e.table_name for e in by_text] == ["ledger_entry", "redemption"] or \
            {e.table_name for e in by_text} == {"ledger_entry", "redemption"}
        assert not await audit.search(session, audit.AuditFilter(actor="staff:"))
        assert await session.scalar(select(Application.id)) is not None
        assert (await session.get_one(Redemption, 1)).reversed_at is not None


async def test_entries_are_sealed_after_commit_in_one_line(rt) -> None:
    """Writers do not wait for the chain: entries are stored unsealed with their change and
    sealed afterwards. Concurrent writers and two concurrent sealers still give one unbroken
    chain holding every entry."""
    scheme = await make_scheme(rt)
    async with rt.sessionmaker() as session:
        waiting = await session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.chain_seq.is_(None)))
        assert waiting and (await audit.verify(session)).unsealed == waiting

    async def rename(i: int) -> None:
        await run_in_transaction(rt.sessionmaker, lambda s: s.execute(
            update(Scheme).where(Scheme.id == scheme.id).values(name=f"Naam {i}")))

    async def seal_while_writing() -> int:
        total = 0
        for _ in range(5):
            total += await audit.seal_all(rt.sessionmaker)
            await asyncio.sleep(0)
        return total

    results = await asyncio.gather(*(rename(i) for i in range(30)), seal_while_writing(), seal_while_writing())
    await audit.seal_all(rt.sessionmaker)
    async with rt.sessionmaker() as session:
        result = await audit.verify(session)
        entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.chain_seq)))
    assert result.ok and result.unsealed == 0, result.problems
    assert [e.chain_seq for e in entries] == list(range(1, len(entries) + 1)) and result.entries == len(entries)
    assert sum(r for r in results if isinstance(r, int)) <= len(entries)
    renames = [e for e in entries if e.table_name == "scheme" and e.action == "update" and "name" in e.after]
    assert sorted(e.after["name"] for e in renames) == sorted(f"Naam {i}" for i in range(30))


async def test_the_database_refuses_edits_but_lets_an_entry_be_sealed_once(database) -> None:
    """In a migrated database (triggers on both kinds): an unsealed entry may get its place and
    hash once; changing its content, sealing it again or deleting it is refused."""
    from service.migrate import upgrade
    from service.settings import Settings
    from service.runtime import Runtime

    url, schema = database
    await asyncio.to_thread(upgrade, url, schema)
    rt = Runtime.create(Settings(database_url=url, database_schema=schema, secret_key=TEST_SECRET))
    try:
        with audit.use_context("cli:tester", "local"):
            await make_scheme(rt)
        assert await audit.seal_all(rt.sessionmaker) > 0
        for statement in (
            update(AuditEntry.__table__).where(AuditEntry.seq == 1).values(after={"name": "vervalst"}),
            update(AuditEntry.__table__).where(AuditEntry.seq == 1).values(hash="0" * 64),
            delete(AuditEntry.__table__).where(AuditEntry.seq == 1),
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with rt.sessionmaker() as session, session.begin():
                    await session.execute(statement, execution_options={"audit_skip": True})
        async with rt.sessionmaker() as session:
            assert (await audit.verify(session)).ok
    finally:
        await rt.close()
