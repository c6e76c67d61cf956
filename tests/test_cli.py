"""The operator's commands, run as a person would: in a process, configured by environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def vouchers(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "VOUCHERS_ENVIRONMENT": "development",
            "VOUCHERS_MAIL_DIR": str(tmp_path / "mail")}


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
        db.execute("UPDATE scheme SET redeemed_cents = 0, committed_cents = 5")
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
                                     ["provider", "add"], ["token", "create"], ["check"], ["sweep"], ["outbox", "send"]])
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
