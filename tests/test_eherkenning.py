"""Applying with eHerkenning and opening "my voucher" with it, against the development broker
running as its own process: the KvK number can only be the one the login proved, the login's
level and pseudonym are recorded, and every bad answer of the broker gives a page that says what
to do, a log line without personal data, and nothing recorded."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from service.app import create_app
from service.models import Application, OutboxMessage, UserSession, Voucher
from service.settings import Settings
from tests.conftest import BrokerProcess, free_port
from tests.entrepreneur_journey import FORM, REGISTER, csrf, post_form
from tests.helpers import admin_token, make_scheme
from tests.oidc_helpers import broker_answer

BASE = "http://testserver.local"


@pytest.fixture(scope="module")
def broker_process() -> Iterator[BrokerProcess]:
    process = BrokerProcess(BASE, slow_seconds=3.0)
    yield process
    process.stop()


@pytest.fixture
def settings(settings: Settings, broker_process: BrokerProcess, tmp_path: Path) -> Settings:
    extract = tmp_path / "kvk.csv"
    extract.write_text(REGISTER, encoding="utf-8")
    return broker_process.settings(settings, registry_file=str(extract))


async def through_broker(client: Any, page: str, action: str, **choices: str) -> Any:
    """Press the sign-in button on ``page``, choose at the broker, and follow the way back."""
    started = await post_form(client, page, action)
    assert started.status_code == 303, started.text
    back = await asyncio.to_thread(broker_answer, started.headers["location"],
                                   **{"kvk": "20000001", "level": "EH3", "person": "a", **choices})
    assert back.startswith(BASE + "/")
    return await client.get(back.removeprefix(BASE), follow_redirects=False)


async def apply_with_eherkenning(client: Any, **choices: str) -> Any:
    form = "/regelingen/test-scheme/aanvragen"
    signed = await through_broker(client, form, "/regelingen/test-scheme/eherkenning", **choices)
    assert signed.status_code == 303 and signed.headers["location"] == form
    page = await client.get(form)
    return await client.post(form, data={**FORM, "_csrf_token": csrf(page.text)}, follow_redirects=False)


async def stored(rt: Any) -> list[Application]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(Application).order_by(Application.id)))


async def test_the_kvk_number_comes_from_the_login_and_cannot_be_changed(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning", eherkenning_level="EH2+")
    form = await client.get("/regelingen/test-scheme/aanvragen")
    assert "Eerst inloggen met eHerkenning" in form.text
    assert 'name="kvk_number"' not in form.text and 'action="/regelingen/test-scheme/eherkenning"' in form.text

    signed = await through_broker(client, "/regelingen/test-scheme/aanvragen", "/regelingen/test-scheme/eherkenning",
                                  kvk="20000001", branch="000012345678")
    assert signed.headers["location"] == "/regelingen/test-scheme/aanvragen"
    form = await client.get("/regelingen/test-scheme/aanvragen?lang=en")
    assert "20000001" in form.text and "From your eHerkenning login (level EH3)" in form.text
    assert 'name="kvk_number"' not in form.text

    # A KvK number typed into the request anyway is ignored: the login's is used.
    answer = await client.post("/regelingen/test-scheme/aanvragen", follow_redirects=False,
                               data={**FORM, "kvk_number": "20000006", "_csrf_token": csrf(form.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/mijn-voucher"
    (application,) = await stored(rt)
    assert application.kvk_number == "20000001" and application.status == "granted"
    assert application.assurance_level == "EH3" and application.branch_number == "000012345678"
    assert application.acting_person is not None and len(application.acting_person) == 32
    assert application.email_confirmed_at is None  # no mail to confirm: the login proved who applied
    async with rt.sessionmaker() as session:
        templates = list(await session.scalars(select(OutboxMessage.template)))
    assert "application_confirm" not in templates and "voucher_issued" in templates
    mine = await client.get("/mijn-voucher")
    assert mine.status_code == 200 and "Inloggen met eHerkenning" not in mine.text
    # The proof was used up: the form asks for a login again.
    again = await client.get("/regelingen/test-scheme/aanvragen?lang=nl")
    assert "Eerst inloggen met eHerkenning" in again.text


async def test_without_a_login_nothing_is_taken(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    refused = await post_form(client, "/regelingen/test-scheme/aanvragen", **FORM)
    assert refused.status_code == 403 and "Eerst inloggen met eHerkenning" in refused.text
    token = await admin_token(rt)
    api = await client.post("/api/v1/admin/schemes/test-scheme/applications", headers={"Authorization": f"Bearer {token}"},
                            json={k: (int(v) if k == "employees" else v) for k, v in FORM.items()})
    assert api.status_code == 422 and api.json()["type"] == "urn:vouchers:problem:eherkenning-required"
    assert await stored(rt) == []


async def test_a_login_below_the_schemes_level(client, rt, caplog: pytest.LogCaptureFixture) -> None:
    await make_scheme(rt, proof="eherkenning", eherkenning_level="EH3")
    with caplog.at_level(logging.WARNING, logger="service.oidc"):
        page = await through_broker(client, "/regelingen/test-scheme/aanvragen",
                                    "/regelingen/test-scheme/eherkenning", level="EH2+")
    assert page.status_code == 403
    assert "eHerkenning-niveau EH2+" in page.text and "EH3 of hoger" in page.text
    assert "20000001" not in caplog.text and '"reason":"level"' in caplog.text
    form = await client.get("/regelingen/test-scheme/aanvragen")
    assert "Eerst inloggen met eHerkenning" in form.text
    assert await stored(rt) == []


@pytest.mark.parametrize(("fault", "status", "says"), [
    ("wrong-issuer", 502, "We konden het antwoord van eHerkenning niet controleren"),
    ("wrong-audience", 502, "We konden het antwoord van eHerkenning niet controleren"),
    ("wrong-nonce", 502, "We konden het antwoord van eHerkenning niet controleren"),
    ("wrong-state", 400, "in een ander venster begonnen"),
    ("expired", 502, "We konden het antwoord van eHerkenning niet controleren"),
    ("unsigned", 502, "We konden het antwoord van eHerkenning niet controleren"),
    ("unknown-key", 502, "We konden het antwoord van eHerkenning niet controleren"),
    ("no-kvk", 502, "voor welk bedrijf u optreedt"),
    ("slow", 503, "niet bereikbaar"),
    ("error", 400, "gestopt voordat het klaar was"),
])
async def test_a_bad_answer_from_the_broker(client, rt, caplog: pytest.LogCaptureFixture, fault: str, status: int,
                                            says: str) -> None:
    await make_scheme(rt, proof="eherkenning")
    with caplog.at_level(logging.WARNING, logger="service.oidc"):
        page = await through_broker(client, "/regelingen/test-scheme/aanvragen",
                                    "/regelingen/test-scheme/eherkenning", fault=fault)
    assert page.status_code == status
    assert says in page.text and "Er is niets vastgelegd" in page.text
    assert 'href="/regelingen/test-scheme/aanvragen"' in page.text  # try again
    reference = page.headers["x-request-id"]
    (line,) = [r.getMessage() for r in caplog.records if "eherkenning_refused" in r.getMessage()]
    assert reference in line and "20000001" not in line
    # Nothing was kept: the form still asks for a login, and no application exists.
    form = await client.get("/regelingen/test-scheme/aanvragen")
    assert "Eerst inloggen met eHerkenning" in form.text
    assert await stored(rt) == []


async def test_the_page_in_english(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    await client.get("/?lang=en")
    page = await through_broker(client, "/regelingen/test-scheme/aanvragen",
                                "/regelingen/test-scheme/eherkenning", fault="no-kvk")
    assert "did not tell us for which company you act" in page.text and "Nothing has been recorded" in page.text


async def test_a_broker_that_is_down(rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    down = msgspec.structs.replace(rt.settings, eherkenning_issuer=f"http://127.0.0.1:{free_port()}")
    async with AsyncTestClient(app=create_app(down), base_url=BASE) as client:
        page = await post_form(client, "/regelingen/test-scheme/aanvragen", "/regelingen/test-scheme/eherkenning")
    assert page.status_code == 503 and "niet bereikbaar" in page.text


async def test_my_voucher_through_the_same_login_and_for_a_colleague(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    assert (await apply_with_eherkenning(client, person="a")).headers["location"] == "/mijn-voucher"
    await client.post("/mijn-voucher/uitloggen", data={"_csrf_token": csrf((await client.get("/mijn-voucher")).text)})
    signin = await client.get("/mijn-voucher")
    assert "Inloggen met eHerkenning" in signin.text

    # A colleague of the same firm (another pseudonym) signs in and sees the firm's voucher.
    opened = await through_broker(client, "/mijn-voucher", "/mijn-voucher/eherkenning", person="b")
    assert opened.status_code == 303 and opened.headers["location"] == "/mijn-voucher"
    mine = await client.get("/mijn-voucher")
    assert "Testregeling" in mine.text
    assert "/mijn-voucher/qr.svg" in mine.text

    # Signing out ends the broker's session too, and comes back here.
    out = await client.post("/mijn-voucher/uitloggen", follow_redirects=False,
                            data={"_csrf_token": csrf(mine.text)})
    assert out.status_code == 303 and out.headers["location"].startswith(rt.settings.eherkenning_issuer + "/logout?")
    back = await asyncio.to_thread(httpx.get, out.headers["location"])
    assert back.status_code == 303 and back.headers["location"] == BASE + "/mijn-voucher?uit=1"
    assert "U bent uitgelogd" in (await client.get("/mijn-voucher?uit=1")).text

    # A firm without a voucher is told so; the mailed link is not for eHerkenning vouchers.
    other = await through_broker(client, "/mijn-voucher", "/mijn-voucher/eherkenning", kvk="20000006")
    assert other.status_code == 404 and "Geen voucher voor dit bedrijf" in other.text
    async with rt.sessionmaker() as session:
        before = await session.scalar(select(func.count()).select_from(OutboxMessage))
    await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email=FORM["email"])
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxMessage)) == before


async def test_my_voucher_needs_the_configured_level(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    await apply_with_eherkenning(client)
    await client.post("/mijn-voucher/uitloggen", data={"_csrf_token": csrf((await client.get("/mijn-voucher")).text)})
    page = await through_broker(client, "/mijn-voucher", "/mijn-voucher/eherkenning", level="EH1")
    assert page.status_code == 403 and "EH2+ of hoger" in page.text
    assert "Inloggen met eHerkenning" in (await client.get("/mijn-voucher")).text


async def test_the_pseudonym_is_erased_by_the_purge_and_never_in_the_audit_log(client, rt) -> None:
    import datetime as dt

    from service import privacy
    from service.db import run_in_transaction
    from service.models import utcnow
    from service.models_admin import AuditEntry

    await make_scheme(rt, proof="eherkenning")
    await apply_with_eherkenning(client)
    (application,) = await stored(rt)
    pseudonym = application.acting_person
    assert pseudonym
    async with rt.sessionmaker() as session:
        logged = [str(e.after) for e in await session.scalars(select(AuditEntry).where(
            AuditEntry.table_name == "application"))]
    assert logged and not any(pseudonym in entry for entry in logged)
    later = utcnow() + dt.timedelta(days=3 * 365)
    await run_in_transaction(rt.sessionmaker, lambda s: privacy.purge(s, rt, now=later))
    (application,) = await stored(rt)
    assert application.acting_person is None and application.assurance_level == "EH3"


async def test_staff_see_how_the_firm_applied(client, rt) -> None:
    from tests.admin_helpers import staff_client_sign_in

    await make_scheme(rt, proof="eherkenning")
    await apply_with_eherkenning(client, branch="000012345678")
    await client.post("/mijn-voucher/uitloggen", data={"_csrf_token": csrf((await client.get("/mijn-voucher")).text)})
    await staff_client_sign_in(client, rt, "beheerder")
    async with rt.sessionmaker() as session:
        voucher = await session.scalar(select(Voucher))
    assert voucher is not None
    page = await client.get(f"/beheer/vouchers/{voucher.id}?lang=nl")
    assert "eHerkenning, niveau EH3, vestiging 000012345678" in page.text


async def test_the_start_page_says_what_is_needed_and_the_page_may_send_the_browser_to_the_broker(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning", eherkenning_level="EH3")
    page = await client.get("/regelingen/test-scheme")
    assert "eHerkenning op niveau EH3 of hoger" in page.text
    # The sign-in button's answer redirects to the broker: the policy allows that form target.
    policy = page.headers["content-security-policy"]
    assert f"form-action 'self' {rt.settings.eherkenning_issuer}" in policy


async def test_the_public_site_says_eherkenning_is_needed(rt, tmp_path: Path) -> None:
    from service.sitegen.collect import collect_snapshot
    from service.sitegen.pages import write_sources

    await make_scheme(rt, proof="eherkenning", eherkenning_level="EH3")
    async with rt.sessionmaker() as session:
        snapshot = await collect_snapshot(session, service_url=BASE)
    write_sources(snapshot, tmp_path / "src")
    assert "U logt eerst in met eHerkenning (niveau EH3 of hoger)" in (
        tmp_path / "src" / "regelingen" / "test-scheme.md").read_text(encoding="utf-8")
    assert "You first sign in with eHerkenning (level EH3 or higher)" in (
        tmp_path / "src" / "regelingen" / "test-scheme.en.md").read_text(encoding="utf-8")


async def test_a_firm_with_vouchers_of_two_schemes_chooses_one(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    await make_scheme(rt, proof="eherkenning", slug="tweede-regeling", name="Tweede regeling", name_en="Second scheme")
    await apply_with_eherkenning(client)
    form = "/regelingen/tweede-regeling/aanvragen"
    await through_broker(client, form, "/regelingen/tweede-regeling/eherkenning")
    page = await client.get(form)
    second = await client.post(form, data={**FORM, "_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert second.headers["location"] == "/mijn-voucher"
    async with rt.sessionmaker() as session:
        first_id, second_id = list(await session.scalars(select(Voucher.id).order_by(Voucher.id)))
    await client.post("/mijn-voucher/uitloggen", data={"_csrf_token": csrf((await client.get("/mijn-voucher")).text)})

    choice = await through_broker(client, "/mijn-voucher", "/mijn-voucher/eherkenning", person="b")
    assert choice.status_code == 200 and "Welke voucher wilt u zien?" in choice.text
    assert "Testregeling" in choice.text and "Tweede regeling" in choice.text
    # Only a voucher of the firm the login proved can be chosen.
    forged = await client.post("/mijn-voucher/eherkenning/kies", follow_redirects=False,
                               data={"voucher": str(second_id + 100), "_csrf_token": csrf(choice.text)})
    assert forged.headers["location"] == "/mijn-voucher"
    assert "Inloggen met eHerkenning" in (await client.get("/mijn-voucher")).text
    choice = await through_broker(client, "/mijn-voucher", "/mijn-voucher/eherkenning", person="b")
    chosen = await client.post("/mijn-voucher/eherkenning/kies", follow_redirects=False,
                               data={"voucher": str(first_id), "_csrf_token": csrf(choice.text)})
    assert chosen.headers["location"] == "/mijn-voucher"
    assert "Testregeling" in (await client.get("/mijn-voucher")).text


async def test_a_failed_login_leaves_no_earlier_proof_behind(client, rt) -> None:
    await make_scheme(rt, proof="eherkenning")
    form = "/regelingen/test-scheme/aanvragen"
    await through_broker(client, form, "/regelingen/test-scheme/eherkenning", kvk="20000001")
    assert "20000001" in (await client.get(form)).text
    refused = await through_broker(client, form, "/regelingen/test-scheme/eherkenning", kvk="20000006",
                                   fault="wrong-nonce")
    assert refused.status_code == 502
    again = await client.get(form)
    assert "Eerst inloggen met eHerkenning" in again.text and "20000001" not in again.text


def set_cookies(answer: Any, name: str) -> list[str]:
    return [value for value in answer.headers.get_list("set-cookie") if value.startswith(name + "=")]


async def test_the_login_waits_in_signed_cookies_and_the_session_remembers_it(client, rt) -> None:
    """Nobody is signed in before the application is in, so the pending login and then its proof
    are short-lived cookies signed by the server: HttpOnly, SameSite=Lax, under a narrow path,
    removed when used; an altered proof is no proof. The session that follows knows it came
    through eHerkenning."""
    await make_scheme(rt, proof="eherkenning")
    form = "/regelingen/test-scheme/aanvragen"
    started = await post_form(client, form, "/regelingen/test-scheme/eherkenning")
    (pending,) = set_cookies(started, "vouchers_eherkenning_pending")
    assert "Path=/eherkenning" in pending and "HttpOnly" in pending and "samesite=lax" in pending.lower()
    assert not set_cookies(started, rt.settings.session_cookie)  # no session before anyone is signed in
    location = await asyncio.to_thread(broker_answer, started.headers["location"], kvk="20000001", level="EH3",
                                       person="a")
    back = await client.get(location.removeprefix(BASE), follow_redirects=False)
    assert back.status_code == 303
    (used,) = set_cookies(back, "vouchers_eherkenning_pending")
    assert "Max-Age=0" in used  # used once
    (proof,) = set_cookies(back, "vouchers_eherkenning_proof")
    assert "Path=/regelingen" in proof and "HttpOnly" in proof and "samesite=lax" in proof.lower()
    # The way back once more finds no pending login.
    again = await client.get(location.removeprefix(BASE), follow_redirects=False)
    assert again.status_code == 400 and "in een ander venster begonnen" in again.text

    # Another KvK number written into the cookie breaks its signature: the form asks for a login.
    token = client.cookies.get("vouchers_eherkenning_proof")
    encoded, _, signature = token.partition(".")
    proven = msgspec.json.decode(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    altered = base64.urlsafe_b64encode(msgspec.json.encode({**proven, "kvk_number": "20000006"})).decode().rstrip("=")
    client.cookies.delete("vouchers_eherkenning_proof")
    client.cookies.set("vouchers_eherkenning_proof", f"{altered}.{signature}", domain="testserver.local",
                       path="/regelingen")
    assert "Eerst inloggen met eHerkenning" in (await client.get(form)).text
    client.cookies.delete("vouchers_eherkenning_proof")
    client.cookies.set("vouchers_eherkenning_proof", token, domain="testserver.local", path="/regelingen")

    page = await client.get(form)
    assert "20000001" in page.text
    answer = await client.post(form, data={**FORM, "_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert answer.headers["location"] == "/mijn-voucher"
    (gone,) = set_cookies(answer, "vouchers_eherkenning_proof")
    assert "Max-Age=0" in gone and "Path=/regelingen" in gone  # used up with the application
    async with rt.sessionmaker() as session:
        (row,) = (await session.execute(select(UserSession.kind, UserSession.via, UserSession.sso_token))).all()
    assert tuple(row) == ("entrepreneur", "eherkenning", None)
