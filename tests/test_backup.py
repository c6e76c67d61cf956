"""Backups that restore, on both databases, taken while the server runs and writes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from sqlalchemy import func, select

from service.models import Redemption
from service.runtime import Runtime
from tests.conftest import ROOT, LiveServer, settings_env
from tests.helpers import bearer, make_provider, make_scheme, make_voucher


def vouchers(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


async def redemptions(rt: Runtime) -> int:
    async with rt.reader() as session:
        return int(await session.scalar(select(func.count()).select_from(Redemption)) or 0)


class Writer(threading.Thread):
    """A coach recording one-cent sessions over the API, about fifty a second."""

    def __init__(self, url: str, code: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.code, self.token = url, code, token
        self.stopping = threading.Event()
        self.done = 0
        self.failures: list[int] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stopping.is_set():
                answer = http.post(f"/api/v1/vouchers/{self.code}/redemptions", headers=bearer(self.token),
                                   json={"amount_cents": 1, "category": "coaching", "reference": f"R-{self.done}"})
                if answer.status_code == 201:
                    self.done += 1
                else:
                    self.failures.append(answer.status_code)
                self.stopping.wait(0.02)  # steady writes, leaving the machine's cores to the backup too

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=20)


async def test_backup_while_writing_verifies_and_restores(rt, tmp_path: Path) -> None:
    scheme = await make_scheme(rt)
    _voucher, code = await make_voucher(rt, scheme)
    _provider, token = await make_provider(rt, scheme)
    server = await asyncio.to_thread(LiveServer, rt.settings, 1)
    file = tmp_path / "backups" / "vouchers.backup"
    writer = Writer(server.url, code, token)
    try:
        writer.start()
        while writer.done < 5:
            await asyncio.sleep(0.05)
        made = await asyncio.to_thread(vouchers, rt.settings, "backup", str(file))
        assert made.returncode == 0, made.stderr
        assert f"backed up to {file}" in made.stdout and "backup: done" in made.stderr
        while writer.done < 5 + 3:  # and it goes on writing after the backup
            await asyncio.sleep(0.05)
    finally:
        writer.stop()
        server.stop()
    assert writer.failures == [] and writer.done >= 8
    before_restore = await redemptions(rt)
    assert before_restore == writer.done

    checked = await asyncio.to_thread(vouchers, rt.settings, "backup", "verify", str(file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "vouchers check: ok" in checked.stdout and "vouchers audit verify: ok" in checked.stdout
    assert "restore into scratch: done" in checked.stderr

    restored = await asyncio.to_thread(vouchers, rt.settings, "restore", str(file), "--yes")
    assert restored.returncode == 0, restored.stderr
    # The database is as it was at the backup: some redemptions, fewer than at the end.
    assert 5 <= await redemptions(rt) < before_restore
    after = await asyncio.to_thread(vouchers, rt.settings, "check")
    assert after.returncode == 0, after.stdout + after.stderr


async def test_what_is_no_backup_is_refused_in_one_line(rt, tmp_path: Path) -> None:
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a backup at all")
    for args in (("backup", "verify", str(junk)), ("restore", str(junk), "--yes")):
        refused = await asyncio.to_thread(vouchers, rt.settings, *args)
        assert refused.returncode == 1 and "is not a backup made by `vouchers backup`" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_backup_whose_books_do_not_add_up_fails_verify(tmp_path: Path) -> None:
    """SQLite's backup is an ordinary database file, so it can be changed as a damaged disk would."""
    import sqlite3

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOUCHERS_")},
           "VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/v.db", "VOUCHERS_ENVIRONMENT": "development",
           "VOUCHERS_MAIL_DIR": str(tmp_path / "mail")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    for args in (("db", "upgrade"), ("scheme", "load", "schemes/arnhem-2021.toml"), ("demo",),
                 ("backup", str(tmp_path / "good.backup"))):
        assert run(*args).returncode == 0, args
    assert run("backup", "verify", str(tmp_path / "good.backup")).returncode == 0
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes((tmp_path / "good.backup").read_bytes())
    db = sqlite3.connect(damaged)
    with db:
        db.execute("UPDATE scheme SET committed_cents = committed_cents + 1")
    db.close()
    failed = run("backup", "verify", str(damaged))
    assert failed.returncode == 1
    assert "vouchers check: FAILED (exit 1)" in failed.stdout and "vouchers audit verify: ok" in failed.stdout


async def test_restore_refuses_while_a_background_process_runs(rt, tmp_path: Path) -> None:
    from service import health

    file = tmp_path / "v.backup"
    assert (await asyncio.to_thread(vouchers, rt.settings, "backup", str(file))).returncode == 0
    await health.beat(rt)
    refused = await asyncio.to_thread(vouchers, rt.settings, "restore", str(file), "--yes")
    assert refused.returncode == 1 and "stop `vouchers serve` and `vouchers worker` on every host" in refused.stderr
    forced = await asyncio.to_thread(vouchers, rt.settings, "restore", str(file), "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
