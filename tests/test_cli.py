"""The operator's commands, run as a person would: in a process, configured by environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def vouchers(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "VOUCHERS_ENVIRONMENT": "development",
            "VOUCHERS_MAIL_DIR": str(tmp_path / "mail"), "VOUCHERS_SITE_DIR": str(tmp_path / "live-site")}


def test_set_up_from_nothing_then_check(env: dict[str, str], tmp_path: Path) -> None:
    assert vouchers("db", "upgrade", env=env).returncode == 0
    loaded = vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env)
    assert loaded.returncode == 0 and "created scheme arnhem-2021" in loaded.stdout
    again = vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env)
    assert "updated scheme arnhem-2021" in again.stdout
    demo = vouchers("demo", env=env)
    assert demo.returncode == 0, demo.stderr
    assert "Coach API token: vt_" in demo.stdout and "Sample voucher:" in demo.stdout
    assert "Coach sign-in at" in demo.stdout and "/beheer/" in demo.stdout
    summary = vouchers("scheme", "summary", "arnhem-2021", env=env)
    assert '"budget_cents": 40500000' in summary.stdout and '"max_places": 300' in summary.stdout
    checked = vouchers("check", env=env)
    assert checked.returncode == 0 and "agree" in checked.stdout
    built = vouchers("site", "build", "--out", str(tmp_path / "site"), env=env)
    assert built.returncode == 0, built.stderr
    assert "site build: done (2/2 steps" in built.stderr  # not a terminal: plain lines
    home = (tmp_path / "site" / "index.html").read_text()
    assert "Ondernemersvoucher" in home and "Demo Onderneming" not in home
    assert (tmp_path / "site" / "en" / "index.html").exists()
    sent = vouchers("outbox", "send", env=env)
    assert sent.stdout.strip() == "sent 3"
    assert len(list(Path(env["VOUCHERS_MAIL_DIR"]).glob("*.eml"))) == 3


def test_check_fails_on_a_tampered_database(env: dict[str, str], tmp_path: Path) -> None:
    import sqlite3

    vouchers("db", "upgrade", env=env)
    vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env)
    with sqlite3.connect(tmp_path / "cli.db") as db:
        db.execute("UPDATE scheme SET committed_cents = 5")
    checked = vouchers("check", env=env)
    assert checked.returncode == 1 and "committed" in checked.stdout


def test_wrong_configuration_names_the_variable(env: dict[str, str]) -> None:
    result = vouchers("check", env={**env, "VOUCHERS_ENVIRONMENT": "production"})
    assert result.returncode != 0 and "VOUCHERS_SECRET_KEY" in result.stderr


def test_a_bad_scheme_file_is_explained(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('slug = "arnhem"\n')
    result = vouchers("scheme", "load", str(bad), env=env)
    assert result.returncode != 0 and "Object missing required field" in result.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["db", "upgrade"], ["scheme", "load"], ["scheme", "draw"],
                                     ["provider", "add"], ["token", "create"], ["check"], ["sweep"], ["outbox", "send"],
                                     ["worker"], ["site", "publish"], ["site", "rollback"], ["site", "resume"]])
def test_every_command_has_help(command: list[str], env: dict[str, str]) -> None:
    result = vouchers(*command, "--help", env=env)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_provider_approval_from_the_command_line_is_mailed(env: dict[str, str]) -> None:
    vouchers("db", "upgrade", env=env)
    vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env)
    added = vouchers("provider", "add", "--name", "Coach Rijn", "--kvk", "77777777", "--email", "rijn@example.org",
                     "--iban", "NL91ABNA0417164300", "--scheme", "arnhem-2021", "--category", "coaching", env=env)
    assert added.returncode == 0 and "enrolment 1 pending" in added.stdout, added.stderr
    approved = vouchers("provider", "approve", "1", env=env)
    assert approved.returncode == 0 and "approved" in approved.stdout
    again = vouchers("provider", "approve", "1", env=env)
    assert again.returncode != 0 and "already been decided" in again.stderr
    assert vouchers("outbox", "send", env=env).stdout.strip() == "sent 1"
    [mail] = list(Path(env["VOUCHERS_MAIL_DIR"]).glob("*.eml"))
    assert "rijn@example.org" in mail.read_text()


def test_tokens_are_listed_without_their_secret_and_can_be_revoked(env: dict[str, str]) -> None:
    vouchers("db", "upgrade", env=env)
    created = vouchers("token", "create", "--role", "admin", "--name", "intake", env=env)
    token = created.stdout.strip()
    assert created.returncode == 0 and token.startswith("vt_")
    listed = vouchers("token", "list", env=env)
    assert "intake" in listed.stdout and "active" in listed.stdout and token not in listed.stdout
    assert "revoked" in vouchers("token", "revoke", "1", env=env).stdout
    assert "revoked" in vouchers("token", "list", env=env).stdout
    again = vouchers("token", "revoke", "1", env=env)
    assert again.returncode != 0 and "revoked already" in again.stderr


def _children(pid: int) -> list[tuple[int, int]]:
    """(pid, nice) of the living processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append((int(entry.name), int(fields[16])))
    return found


def _wait_for_mail(folder: Path, count: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while len(list(folder.glob("*.eml"))) < count:
        assert time.monotonic() < deadline, f"{len(list(folder.glob('*.eml')))} of {count} mails sent"
        time.sleep(0.1)


def test_serve_sends_mail_from_one_background_process_of_lower_priority(env: dict[str, str], tmp_path: Path) -> None:
    vouchers("db", "upgrade", env=env)
    vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env)
    assert vouchers("demo", env=env).returncode == 0  # leaves three mails in the outbox
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as output:
        serving = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"], cwd=ROOT,
            env={**os.environ, **env, "VOUCHERS_BACKGROUND_NICE": "5", "VOUCHERS_OUTBOX_INTERVAL_SECONDS": "0.2"},
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_mail(Path(env["VOUCHERS_MAIL_DIR"]), 3)
        deadline = time.monotonic() + 30
        # Both web processes up: granian misses a worker that starts while it shuts down.
        while "Started worker-2" not in log.read_text():
            assert time.monotonic() < deadline, "the web processes did not start"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        children = _children(serving.pid)
        background = [pid for pid, nice in children if nice == 5]
        assert len(background) == 1, children  # one, however many web processes
        assert any(nice == 0 for _, nice in children)  # granian's, at the server's priority
        os.kill(background[0], signal.SIGKILL)  # a crash: it is started again, and sends what is new
        while not (again := [pid for pid, nice in _children(serving.pid) if nice == 5 and pid != background[0]]):
            assert time.monotonic() < deadline + 30, "the background process was not started again"
            time.sleep(0.2)
        assert vouchers("provider", "add", "--name", "Coach Rijn", "--kvk", "77777777", "--email", "rijn@example.org",
                        "--iban", "NL91ABNA0417164300", "--scheme", "arnhem-2021", "--category", "coaching",
                        env=env).returncode == 0
        assert vouchers("provider", "approve", "2", env=env).returncode == 0
        _wait_for_mail(Path(env["VOUCHERS_MAIL_DIR"]), 4)
        serving.send_signal(signal.SIGINT)
        assert serving.wait(timeout=30) == 0
        assert not Path(f"/proc/{again[0]}").exists()
    finally:
        if serving.poll() is None:
            os.killpg(serving.pid, signal.SIGKILL)
            serving.wait()


def test_the_worker_command_runs_the_background_work_until_stopped(env: dict[str, str]) -> None:
    vouchers("db", "upgrade", env=env)
    vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env)
    vouchers("demo", env=env)
    working = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], cwd=ROOT,
                               env={**os.environ, **env, "VOUCHERS_OUTBOX_INTERVAL_SECONDS": "0.2"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_mail(Path(env["VOUCHERS_MAIL_DIR"]), 3)
        working.terminate()
        _, err = working.communicate(timeout=30)
        assert working.returncode == 0, err
    finally:
        if working.poll() is None:
            working.kill()
            working.communicate()
