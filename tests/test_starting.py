"""Starting the service for development: the port, what a taken port says, demo credentials again,
demo offers, and HEAD on pages."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service import demo, staff
from service.models import ApiToken
from tests.conftest import free_port
from tests.entrepreneur_journey import sign_in_as
from tests.helpers import make_scheme

ROOT = Path(__file__).resolve().parent.parent


def vouchers(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    plain = {k: v for k, v in os.environ.items() if not k.startswith("VOUCHERS_")}
    return {**plain, "VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/run.db",
            "VOUCHERS_ENVIRONMENT": "development", "VOUCHERS_MAIL_DIR": str(tmp_path / "mail")}


def test_a_taken_port_is_one_line_that_says_what_to_do(env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for args in (("serve", "--port", str(port)), ("serve", "--port", str(port), "--check")):
            result = vouchers(*args, env=env)
            assert result.returncode == 1
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert f"make run PORT={port + 1}" in result.stderr and f"--port {port + 1}" in result.stderr


def test_serve_on_another_port_mails_links_to_that_port_and_answers_head(env: dict[str, str]) -> None:
    assert vouchers("db", "upgrade", env=env).returncode == 0
    assert vouchers("scheme", "load", "schemes/arnhem-2021.toml", env=env).returncode == 0
    port = free_port()
    assert vouchers("demo", env={**env, "VOUCHERS_BASE_URL": f"http://127.0.0.1:{port}"}).returncode == 0
    mail = Path(env["VOUCHERS_MAIL_DIR"])
    serving = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT,
                               env={**env, "VOUCHERS_OUTBOX_INTERVAL_SECONDS": "0.2"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(list(mail.glob("*.eml"))) < 3:
            assert time.monotonic() < deadline and serving.poll() is None, "the demo's mails were not sent"
            time.sleep(0.2)
        for eml in mail.glob("*.eml"):
            text = eml.read_text()
            assert f"http://127.0.0.1:{port}/" in text and "127.0.0.1:8000" not in text
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        for path in ("/", "/regelingen/arnhem-2021", "/coach/login", "/mijn-voucher"):
            head, get = httpx.head(base + path, timeout=5), httpx.get(base + path, timeout=5)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
        assert httpx.head(base + "/no-such-page", timeout=5).status_code == 404
    finally:
        os.killpg(serving.pid, signal.SIGINT)
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
            serving.wait()


def test_demo_credentials_before_the_demo_is_one_line(env: dict[str, str]) -> None:
    assert vouchers("db", "upgrade", env=env).returncode == 0
    result = vouchers("demo", "credentials", env=env)
    assert result.returncode == 1 and "vouchers demo" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_demo_credentials_are_fresh_and_work_and_the_demo_has_offers(rt, client, smtp_server) -> None:
    await make_scheme(rt)
    first = await demo.create_demo(rt)
    again = await demo.demo_credentials(rt)
    password = re.search(r"coach@example\.org / (\S+)", again)[1]  # type: ignore[index]
    token = re.search(r"Coach API token: (\S+)", again)[1]  # type: ignore[index]
    assert password not in first and token not in first
    assert re.findall(r"Sample voucher: (\S+)", first) == re.findall(r"Sample voucher: (\S+)", again) != []
    assert "/beheer/instellen/" in again
    async with rt.sessionmaker() as session:
        signed_in = await staff.authenticate(session, demo.DEMO_COACH_EMAIL, password)
        assert not isinstance(signed_in, staff.SignInRefused)
        tokens = {t.token_hash: t.revoked_at for t in await session.scalars(select(ApiToken))}
    assert tokens[rt.token_hash(token)] is None and sum(r is None for r in tokens.values()) == 1
    # The online redemption has offers to choose from.
    await sign_in_as(client, rt, smtp_server, "ondernemer1@example.org")
    offers = await client.get("/mijn-voucher/aanbod")
    assert offers.status_code == 200 and "Loopbaancoaching voor zzp&#39;ers" in offers.text
