"""The benchmark harness works: ``python -m bench --quick`` on SQLite, about a second per
scenario, the pages included. Not a timed test: it asserts the checks the harness makes (exact
counts, balances, reconcile) and that statements are counted, never a speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _need_wrk() -> None:
    if shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install -y wrk)"
        if os.environ.get("VOUCHERS_REQUIRE_WRK") == "1":
            pytest.fail(message)
        pytest.skip(message + "; set VOUCHERS_REQUIRE_WRK=1 to make this an error")


def test_bench_quick_run_on_sqlite(tmp_path: Path) -> None:
    _need_wrk()
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--db", "sqlite", "--duration", "1", "--rush-applicants", "40",
         "--scenarios", "rush,page-rush,scan,page-scan,redeem,page-redeem,qr", "--out", str(out), "--no-markdown"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())["results"]
    http = {r["scenario"]: r for r in results if r["kind"] == "http"}
    assert {"bare GET c32", "bare POST c32", "bare page c32", "bare form c32", "scan", "page scan", "redeem",
            "page redeem", "redeem 10 providers", "redeem hot-10", "rush 40→10", "page rush 40→10: form",
            "page rush 40→10: confirm"} <= set(http)
    # Each applicant once, all but the five sent one at a time through wrk; the books exact. 35
    # applicants are more than one address may send (30): each came from their own, through the proxy.
    assert http["rush 40→10"]["statuses"] == {"201": 35}
    assert http["page rush 40→10: form"]["statuses"] == {"303": 35}
    assert http["page rush 40→10: confirm"]["statuses"] == {"303": 35}
    assert http["page rush 40→10: confirm"]["applicants_per_second"] > 0
    assert http["bare page c32"]["statuses"].keys() == {"200"} and http["bare form c32"]["statuses"].keys() == {"303"}
    assert http["scan"]["requests"] > 0 and http["page scan"]["statuses"].keys() == {"200"}
    assert http["redeem"]["statuses"].get("201", 0) > 0 and http["page redeem"]["statuses"].keys() == {"303"}
    assert http["redeem 10 providers"]["statuses"].get("201", 0) > 0
    assert all(not r["problems"] for r in http.values())
    # Statements are counted in the server, under load and one at a time, for every path.
    for name in ("scan", "page scan", "redeem", "page redeem", "rush 40→10", "page rush 40→10: confirm"):
        assert http[name]["extra"]["sql"]["statements"] > 0, name
        assert http[name]["sql_alone"]["statements"] >= 1, name
    assert http["page redeem"]["sql_alone"]["idempotency"] > 0  # the form's key, counted apart
    targets = {(r["what"], r["versus"]) for r in results if r["kind"] == "target"}
    assert {("page scan", "of API scan"), ("page scan", "of bare Jinja page"), ("page redemption", "of API redemption"),
            ("page rush (applicants)", "of API rush")} <= targets
    assert any(r["kind"] == "qr" for r in results)


def test_statements_are_counted_by_transaction_and_the_idempotency_key_apart() -> None:
    """The counter the harness puts in the server (``bench/sqlcount.py``), on a SQLite connection
    of its own: control statements count, a trigger's program does not, a transaction that only
    claims an idempotency key is the key's own, and a simple query is split into its statements."""
    import sqlite3

    from bench.sqlcount import _key_only, split_statements, sqlite_factory

    class Tally:
        def __init__(self) -> None:
            self.values = [0, 0, 0]

        def add(self, *values: int) -> None:
            self.values = [a + b for a, b in zip(self.values, values, strict=True)]

    tally = Tally()
    connection = sqlite3.connect(":memory:", isolation_level=None, factory=sqlite_factory(tally))
    connection.executescript("CREATE TABLE t (x); CREATE TABLE idempotency_key (k); CREATE TABLE u (k);")
    connection.execute("CREATE TRIGGER copy AFTER INSERT ON t BEGIN INSERT INTO u VALUES (new.x); END")
    assert tally.values == [3, 0, 1]
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO t VALUES (1)")
    connection.executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])
    connection.cursor().execute("UPDATE idempotency_key SET k = 0 WHERE k = 1")
    connection.execute("COMMIT")
    # BEGIN, three inserts (not their trigger's), COMMIT; the key's UPDATE apart.
    assert tally.values == [3 + 5, 2, 1 + 1]
    connection.execute("BEGIN")
    connection.execute("SAVEPOINT s")
    connection.execute("INSERT INTO idempotency_key VALUES (9)")
    connection.execute("RELEASE SAVEPOINT s")
    connection.commit()
    assert tally.values == [8, 2, 2 + 5]  # the key's own transaction, savepoints and all
    legacy = sqlite3.connect(":memory:", factory=sqlite_factory(tally))  # the module's own BEGIN
    legacy.execute("CREATE TABLE t (x)")
    legacy.execute("INSERT INTO t VALUES (1)")
    legacy.execute("SAVEPOINT s")
    legacy.execute("INSERT INTO t VALUES (2)")
    legacy.execute("ROLLBACK TO SAVEPOINT s")
    legacy.commit()
    assert tally.values == [8 + 7, 2 + 2, 7]
    for c in (connection, legacy):
        c.close()
    assert split_statements("BEGIN; SELECT ';' FROM t ;SELECT 2;") == ["BEGIN", "SELECT ';' FROM t", "SELECT 2"]
    # A statement that completes the key along with the operation's own work is the operation's.
    assert _key_only('UPDATE "idempotency_record" SET status_code = 201 WHERE id = 3')
    assert not _key_only("WITH r AS (INSERT INTO redemption VALUES (1) RETURNING id) "
                         "UPDATE idempotency_record SET response_body = (SELECT id FROM r)")


_COUNTED = """
import asyncio, json, os, sqlite3, sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.sqlcount import read

URL = os.environ["URL"]
DIR = Path(os.environ["BENCH_SQL_COUNT_DIR"])
T = os.environ["TABLE"]


async def main() -> None:
    engine = create_async_engine(URL)
    async with engine.begin() as c:  # the dialect's own first statements, and the table
        await c.execute(text(f"CREATE TABLE IF NOT EXISTS {T} (x int)"))
    before = read(DIR)
    async with engine.begin() as c:
        await c.execute(text(f"INSERT INTO {T} VALUES (1)"))
        await c.execute(text(f"INSERT INTO {T} VALUES (2)"))
    await engine.dispose()
    if URL.startswith("sqlite"):
        raw = sqlite3.connect(URL.split("///", 1)[1], isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO t VALUES (3)")
        raw.executemany("INSERT INTO t VALUES (?)", [(4,), (5,)])
        raw.execute("CREATE TABLE idempotency_probe (k int)")
        raw.execute("COMMIT")
        raw.close()
    else:
        import asyncpg

        raw = await asyncpg.connect(URL.replace("+asyncpg", ""))
        await raw.fetchval("SELECT 1")
        await raw.execute("BEGIN; SELECT 1; SELECT 2")
        await raw.fetchmany("SELECT $1::int", [(1,), (2,)])
        await raw.execute("CREATE TEMP TABLE idempotency_probe (k int)")
        await raw.execute("COMMIT")
        prepared = await raw.prepare("SELECT $1::int")
        await prepared.fetchval(1)
        await raw.close()
    print(json.dumps(vars(read(DIR) - before)))


asyncio.run(main())
"""


@pytest.mark.parametrize("argv", [[], ["service.cli", "worker"]], ids=["web", "background"])
def test_the_server_hook_counts_every_driver_in_the_web_processes_only(
        database: tuple[str, str | None], tmp_path: Path, argv: list[str]) -> None:
    """What ``bench/hook`` installs in a process that Python starts with it on its path: the
    statements of SQLAlchemy's engine and of the bare driver, on either database; nothing in the
    background process (``python -m service.cli worker``), whose work is no request's."""
    url, schema = database
    counts = tmp_path / "counts"
    env = {**os.environ, "URL": url, "TABLE": f"{schema}.t" if schema else "t", "BENCH_SQL_COUNT_DIR": str(counts),
           "PYTHONPATH": os.pathsep.join((str(ROOT / "bench" / "hook"), str(ROOT)))}
    done = subprocess.run([sys.executable, "-", *argv], input=_COUNTED, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    if argv:
        assert json.loads(done.stdout) == {"statements": 0, "control": 0, "idempotency": 0}
        return
    found = json.loads(done.stdout)
    if url.startswith("sqlite"):
        # SQLAlchemy's transaction (the module's own BEGIN, two INSERTs, COMMIT), then BEGIN
        # IMMEDIATE, three INSERTs and COMMIT; the idempotency table's statement apart.
        assert found == {"statements": 4 + 5, "control": 4, "idempotency": 1}
    else:
        # BEGIN, two INSERTs, COMMIT; one SELECT; BEGIN, two SELECTs, two of fetchmany, COMMIT (the
        # temporary table apart); the prepared statement's one execution.
        assert found == {"statements": 4 + 1 + 6 + 1, "control": 4, "idempotency": 1}


def test_the_api_rows_are_compared_with_the_run_before_of_the_same_kind(tmp_path: Path) -> None:
    from bench.report import against_previous

    def row(scenario: str, rps: float, bare: float) -> dict[str, object]:
        return {"kind": "http", "db": "postgres", "scenario": scenario, "rps": rps, "bare": {"rps": bare}}

    args = {"quick": False, "duration": 10.0, "workers": 2, "connections": 64, "hot_connections": 200}
    before = tmp_path / "results.json"
    before.write_text(json.dumps({"machine": {"date": "then"}, "args": args, "results": [
        row("scan", 4000, 10000), row("page scan", 100, 10000)]}))
    now = [row("scan", 3000, 6000), row("page scan", 3000, 6000), row("redeem", 100, 1000)]
    assert against_previous(before, now, args) == ("API rows against the run of then (share of their yardstick): "
                                                   "postgres scan 40.0% → 50.0%.")
    assert against_previous(before, now, {**args, "quick": True}) == ""
    assert against_previous(tmp_path / "none.json", now, args) == ""


def test_a_paced_run_sends_at_its_rate_and_counts_late_sends(tmp_path: Path) -> None:
    """The fixed-rate runs the scale comparison uses: request k goes out k / rate after the
    first, so a 1-second run at 200/s sends exactly 200; at a rate no server keeps up with,
    the requests that went out after their time are counted."""
    _need_wrk()
    from bench.servers import bare_server  # `python -m pytest` runs from the project's root
    from bench.wrk import run_wrk

    with bare_server(1, tmp_path / "bare.log") as srv:
        paced = run_wrk(srv.url, path="/bare", seconds=1.0, connections=8, rate=200)
        flooded = run_wrk(srv.url, path="/bare", seconds=1.0, connections=8, rate=1_000_000)
    assert paced.requests == paced.sent == paced.received == 200, paced
    assert paced.statuses == {"200": 200} and paced.seconds >= 0.99, paced
    assert flooded.sent == flooded.received and flooded.late > 0 and flooded.max_late_ms > 10, flooded
