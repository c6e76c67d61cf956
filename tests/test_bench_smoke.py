"""The benchmark harness works: ``python -m bench --quick`` on SQLite, about a second per
scenario. Not a timed test: it asserts the checks the harness makes (exact counts, balances,
reconcile), never a speed."""

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
        [sys.executable, "-m", "bench", "--quick", "--db", "sqlite", "--duration", "1",
         "--scenarios", "rush,scan,redeem,qr", "--out", str(out), "--no-markdown"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())["results"]
    http = {r["scenario"]: r for r in results if r["kind"] == "http"}
    assert {"bare GET c32", "bare POST c32", "scan", "redeem", "redeem 10 providers", "redeem hot-10"} <= set(http)
    rush = next(r for name, r in http.items() if name.startswith("rush"))
    assert rush["statuses"] == {"201": 200} and rush["problems"] == []
    assert http["scan"]["requests"] > 0 and http["redeem"]["statuses"].get("201", 0) > 0
    assert http["redeem 10 providers"]["statuses"].get("201", 0) > 0
    assert all(not r["problems"] for r in http.values())
    assert any(r["kind"] == "qr" for r in results)


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
    assert paced.requests == paced.sent == paced.received == 200
    assert paced.statuses == {"200": 200} and paced.seconds >= 0.99
    assert flooded.sent == flooded.received and flooded.late > 0 and flooded.max_late_ms > 10
