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


def test_bench_quick_run_on_sqlite(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install -y wrk)"
        if os.environ.get("VOUCHERS_REQUIRE_WRK") == "1":
            pytest.fail(message)
        pytest.skip(message + "; set VOUCHERS_REQUIRE_WRK=1 to make this an error")
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
