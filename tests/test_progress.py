"""Long commands show progress: a bar on a terminal, plain lines otherwise, on standard error."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from service import payouts
from service.db import run_in_transaction
from service.progress import progress
from tests.conftest import ROOT
from tests.helpers import make_provider, make_scheme, make_voucher
from tests.test_payouts import DEBTOR, END, START, _redeem


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with progress("purge", total=40, unit="applications", stream=out) as shown:
        for _ in range(40):
            shown.advance()
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["purge: 10% (4/40 applications)", "purge: 20% (8/40 applications)"]
    assert len(lines) == 10 and lines[-1].startswith("purge: done (40/40 applications in ")


def test_a_bar_on_a_terminal() -> None:
    out = Terminal()
    with progress("backup", total=8, unit="pages", stream=out) as shown:
        shown.update(3)
        shown.update(8)
    drawn = out.getvalue()
    assert "backup" in drawn and "8/8" in drawn and "━" in drawn
    assert "done (" not in drawn  # the bar itself says it


async def test_a_payout_batch_reports_each_step(rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme)
    for name in ("Coach A", "Coach B", "Coach C"):
        provider, _ = await make_provider(rt, scheme, name=name)
        await _redeem(rt, voucher.id, provider, 10_00, name)
    seen: list[tuple[int, int]] = []
    batch = await run_in_transaction(rt.sessionmaker, lambda s: payouts.create_batch(
        s, start=START, end=END, debtor=DEBTOR, created_by="test", progress=lambda d, t: seen.append((d, t))))
    assert batch.transaction_count == 3
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_loads_and_purges_say_how_far_they_are(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOUCHERS_")},
           "VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db", "VOUCHERS_ENVIRONMENT": "development"}

    def vouchers(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    assert vouchers("db", "upgrade").returncode == 0
    loaded = vouchers("scheme", "load", "schemes/arnhem-2021.toml", "schemes/arnhem-2021.toml")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == ["created scheme arnhem-2021", "updated scheme arnhem-2021"]
    assert "scheme load: 50% (1/2 files)" in loaded.stderr and "scheme load: done (2/2 files" in loaded.stderr
    purged = vouchers("privacy", "purge", "--after-days", "0")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("{") and "privacy purge: done (" in purged.stderr
    exported = vouchers("privacy", "export", "12345678")
    assert exported.returncode == 0 and "privacy export: done (1/1 subjects" in exported.stderr
