"""The development broker is a real OpenID Connect provider in its own process, and the client
(``service.oidc``) accepts only what it should from it: each way the broker can misbehave is
refused with its reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey

from service import oidc

from tests.conftest import BrokerProcess
from tests.oidc_helpers import broker_answer

BASE = "http://service.test"


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    key = RSAKey.generate_key(2048, parameters={"kid": "client-key"})
    (folder / "private.json").write_text(json.dumps(key.as_dict(private=True)))
    (folder / "public.json").write_text(json.dumps(key.as_dict(private=False)))
    process = BrokerProcess(BASE, slow_seconds=3.0,
                            extra=["--client", f"keyed:jwk={folder / 'public.json'}@{BASE}"])
    yield process, folder / "private.json"
    process.stop()


def _provider(process: BrokerProcess, **changes: object) -> oidc.Provider:
    return oidc.Provider(issuer=process.issuer, client_id="vouchers", client_secret=process.secret,
                         timeout_seconds=1.5, **changes)  # type: ignore[arg-type]


async def _sign_in(provider: oidc.Provider, **choices: str) -> oidc.SignedIn:
    url, pending = await oidc.begin(provider, BASE + "/eherkenning/terug", "voucher", acr=oidc.LEVELS["EH2+"])
    back = broker_answer(url, **{"kvk": "91000000", "level": "EH3", "person": "a", **choices})
    assert back.startswith(BASE + "/eherkenning/terug?")
    return await oidc.finish(provider, pending, dict(parse_qsl(urlsplit(back).query)))


def test_discovery_and_keys(dev_broker: tuple[BrokerProcess, Path]) -> None:
    process, _ = dev_broker
    found = httpx.get(process.issuer + "/.well-known/openid-configuration").json()
    assert found["issuer"] == process.issuer
    assert found["code_challenge_methods_supported"] == ["S256"]
    assert "private_key_jwt" in found["token_endpoint_auth_methods_supported"]
    keys = httpx.get(found["jwks_uri"]).json()["keys"]
    assert [k["kty"] for k in keys] == ["RSA"] and all("d" not in k for k in keys)


def test_the_page_offers_the_register_firms_and_says_what_it_is(dev_broker: tuple[BrokerProcess, Path]) -> None:
    process, _ = dev_broker
    page = httpx.get(process.issuer + "/authorize", params={
        "response_type": "code", "client_id": "vouchers", "redirect_uri": BASE + "/x", "scope": "openid",
        "state": "s", "nonce": "n", "code_challenge": "x" * 43, "code_challenge_method": "S256"})
    assert page.status_code == 200
    assert "Development broker" in page.text and "signs anyone in" in page.text
    assert "91000000" in page.text and "EH2+" in page.text
    # A redirect address the client did not register is refused, not followed.
    wrong = httpx.get(process.issuer + "/authorize", params={
        "response_type": "code", "client_id": "vouchers", "redirect_uri": "http://elsewhere.test/x",
        "scope": "openid", "state": "s", "nonce": "n", "code_challenge": "x" * 43, "code_challenge_method": "S256"})
    assert wrong.status_code == 400


async def test_a_signed_token_with_the_chosen_firm_level_and_pseudonym(dev_broker: tuple[BrokerProcess, Path]) -> None:
    process, _ = dev_broker
    signed = await _sign_in(_provider(process), branch="000012345678")
    claims = signed.claims
    assert claims["iss"] == process.issuer and claims["aud"] == ["vouchers"]
    assert claims["urn:etoegang:1.9:EntityConcernedID:KvKnr"] == "91000000"
    assert claims["urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"] == "000012345678"
    assert oidc.level_of(claims["acr"]) == "EH3"
    assert len(claims["sub"]) == 32 and "name" not in claims
    colleague = await _sign_in(_provider(process), person="b")
    assert colleague.claims["sub"] != claims["sub"]


async def test_private_key_jwt(dev_broker: tuple[BrokerProcess, Path]) -> None:
    process, key_file = dev_broker
    provider = oidc.Provider(issuer=process.issuer, client_id="keyed", private_key_file=str(key_file))
    signed = await _sign_in(provider)
    assert signed.claims["aud"] == ["keyed"]
    # The secret of another client is no key to this one.
    with pytest.raises(oidc.LoginFailed) as refused:
        await _sign_in(oidc.Provider(issuer=process.issuer, client_id="keyed", client_secret=process.secret))
    assert refused.value.reason == "cancelled"


@pytest.mark.parametrize(("fault", "reason", "detail"), [
    ("wrong-issuer", "unverified", "claim iss"),
    ("wrong-audience", "unverified", "claim aud"),
    ("wrong-nonce", "unverified", "claim nonce"),
    ("wrong-state", "state", "state differs"),
    ("expired", "unverified", "expired"),
    ("unsigned", "unverified", "not a signed token: UnsupportedAlgorithmError"),
    ("unknown-key", "unverified", "unknown key id"),
    ("slow", "unavailable", "token endpoint timed out"),
    ("error", "cancelled", "provider error: access_denied"),
])
async def test_each_bad_answer_is_refused(dev_broker: tuple[BrokerProcess, Path], fault: str, reason: str,
                                          detail: str) -> None:
    process, _ = dev_broker
    with pytest.raises(oidc.LoginFailed) as refused:
        await _sign_in(_provider(process), fault=fault)
    assert (refused.value.reason, refused.value.detail) == (reason, detail)


async def test_a_broker_that_is_down() -> None:
    provider = oidc.Provider(issuer="http://127.0.0.1:9", client_id="vouchers", client_secret="x", timeout_seconds=1)
    with pytest.raises(oidc.LoginFailed) as refused:
        await oidc.begin(provider, BASE + "/eherkenning/terug", "voucher")
    assert refused.value.reason == "unavailable"


async def test_a_disabled_staff_account_is_refused_by_userinfo(dev_broker: tuple[BrokerProcess, Path]) -> None:
    process, _ = dev_broker
    provider = oidc.Provider(issuer=process.issuer, client_id="vouchers-staff", client_secret=process.staff_secret,
                             scope="openid email profile")
    url, pending = await oidc.begin(provider, BASE + "/beheer/sso/terug", "staff")
    back = broker_answer(url, email="lid@arnhem.example", name="Lid", groups="vouchers-lezers")
    signed = await oidc.finish(provider, pending, dict(parse_qsl(urlsplit(back).query)))
    assert signed.claims["groups"] == ["vouchers-lezers"] and signed.access_token
    assert await oidc.still_signed_in(provider, signed.access_token)
    httpx.post(process.issuer + "/accounts/disable", data={"email": "lid@arnhem.example"}).raise_for_status()
    assert not await oidc.still_signed_in(provider, signed.access_token)


def test_serve_in_development_starts_the_broker_beside_it(tmp_path: Path) -> None:
    """`make run` needs nothing else: `vouchers serve` in development starts the broker, points the
    sign-in settings at it, and stops it when it stops."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCHERS_")}
    env.update({"VOUCHERS_ENVIRONMENT": "development", "VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/v.db",
                "VOUCHERS_MAIL_DIR": str(tmp_path / "mail"), "VOUCHERS_BACKGROUND_TASKS": "false",
                "PYTHONPATH": str(ROOT)})
    subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=tmp_path,
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        found = re.search(r"Development broker .*: (http://127\.0\.0\.1:\d+)", log.read_text())
        assert found, log.read_text()
        issuer = found.group(1)
        assert httpx.get(issuer + "/.well-known/openid-configuration").json()["issuer"] == issuer
        signin = httpx.get(f"http://127.0.0.1:{port}/mijn-voucher")
        assert "Inloggen met eHerkenning" in signin.text
        assert "Inloggen met uw account van de gemeente" in httpx.get(f"http://127.0.0.1:{port}/beheer/inloggen").text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(issuer + "/.well-known/openid-configuration", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.3)
    raise AssertionError("the broker outlived the server")


async def test_a_broker_clock_a_little_ahead_is_within_the_skew(dev_broker: tuple[BrokerProcess, Path]) -> None:
    process, _ = dev_broker
    signed = await _sign_in(_provider(process, clock_skew_seconds=60), fault="clock-ahead")
    assert signed.claims["nbf"] > signed.claims["auth_time"]
    with pytest.raises(oidc.LoginFailed) as refused:
        await _sign_in(_provider(process, clock_skew_seconds=0), fault="clock-ahead")
    assert refused.value.reason == "unverified"
