"""Municipality staff sign in through the municipality's own OpenID Connect provider (the
development broker's staff client, in its own process): roles come from the group claim, an
account disabled at the provider is refused at its next request, and password + TOTP stays."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service import municipality
from service.db import run_in_transaction
from service.models import UserSession
from service.models_admin import StaffUser
from service.settings import Settings
from tests.conftest import BrokerProcess
from tests.entrepreneur_journey import csrf, post_form
from tests.oidc_helpers import broker_answer

BASE = "http://testserver.local"


@pytest.fixture(scope="module")
def broker_process() -> Iterator[BrokerProcess]:
    process = BrokerProcess(BASE)
    yield process
    process.stop()


@pytest.fixture
def settings(settings: Settings, broker_process: BrokerProcess) -> Settings:
    return broker_process.settings(settings)


async def sso(client: Any, **choices: str) -> Any:
    started = await post_form(client, "/beheer/inloggen", "/beheer/inloggen/sso", next="/beheer")
    assert started.status_code == 303, started.text
    back = await asyncio.to_thread(broker_answer, started.headers["location"], **{
        "email": "anna@arnhem.example", "name": "Anna de Vries", "groups": "vouchers-beheerders", **choices})
    return await client.get(back.removeprefix(BASE), follow_redirects=False)


async def accounts(rt: Any) -> list[StaffUser]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(StaffUser).order_by(StaffUser.id)))


async def test_the_first_sign_in_makes_the_account_with_the_groups_role(client, rt) -> None:
    page = await client.get("/beheer/inloggen")
    assert "Inloggen met uw account van de gemeente" in page.text and 'name="password"' in page.text
    signed = await sso(client)
    assert signed.status_code == 303 and signed.headers["location"] == "/beheer"
    assert (await client.get("/beheer", follow_redirects=False)).status_code == 200
    (user,) = await accounts(rt)
    assert (user.email, user.role, user.password_hash) == ("anna@arnhem.example", "beheerder", None)
    assert user.sso_subject


async def test_an_account_made_by_the_operator_is_linked_and_takes_the_groups_role(client, rt) -> None:
    await run_in_transaction(rt.sessionmaker, lambda s: municipality.create_staff(
        s, rt, email="anna@arnhem.example", name="Anna", role="beheerder"))
    await sso(client, groups="vouchers-lezers")
    (user,) = await accounts(rt)
    assert user.role == "lezer" and user.sso_subject
    assert (await client.get("/beheer", follow_redirects=False)).status_code == 200


async def test_without_a_mapped_group_nobody_gets_in(client, rt, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.oidc"):
        page = await sso(client, groups="iedereen")
    assert page.status_code == 403 and "geen rol in deze dienst" in page.text
    assert "anna@arnhem.example" not in caplog.text and '"reason":"not-allowed"' in caplog.text
    assert await accounts(rt) == []
    assert (await client.get("/beheer", follow_redirects=False)).status_code in (302, 303)


async def test_a_bad_answer_is_refused(client, rt) -> None:
    page = await sso(client, fault="wrong-audience")
    assert page.status_code == 502 and "niet controleren" in page.text
    assert await accounts(rt) == []


async def test_an_account_disabled_at_the_provider_is_refused_at_its_next_request(client, rt,
                                                                                 broker_process: BrokerProcess) -> None:
    email = f"piet.{secrets.token_hex(4)}@arnhem.example"  # the broker outlives one test
    await sso(client, email=email)
    assert (await client.get("/beheer", follow_redirects=False)).status_code == 200
    await asyncio.to_thread(httpx.post, broker_process.issuer + "/accounts/disable", data={"email": email})
    refused = await client.get("/beheer", follow_redirects=False)
    assert refused.status_code in (302, 303) and refused.headers["location"].startswith("/beheer/inloggen")


async def test_an_account_disabled_here_stays_refused(client, rt) -> None:
    await run_in_transaction(rt.sessionmaker, lambda s: municipality.create_staff(
        s, rt, email="kees@arnhem.example", name="Kees", role="lezer"))
    await run_in_transaction(rt.sessionmaker, lambda s: municipality.set_disabled(s, "kees@arnhem.example", True))
    page = await sso(client, email="kees@arnhem.example")
    assert page.status_code >= 400 and (await client.get("/beheer", follow_redirects=False)).status_code in (302, 303)


async def test_signing_out_ends_the_providers_session_too(client, rt, broker_process: BrokerProcess) -> None:
    await sso(client)
    home = await client.get("/beheer")
    out = await client.post("/beheer/uitloggen", data={"_csrf_token": csrf(home.text)}, follow_redirects=False)
    assert out.headers["location"].startswith(broker_process.issuer + "/logout?")
    back = await asyncio.to_thread(httpx.get, out.headers["location"])
    assert back.headers["location"] == BASE + "/beheer/inloggen"
    assert (await client.get("/beheer", follow_redirects=False)).status_code in (302, 303)


async def test_an_account_linked_to_the_provider_does_not_sign_in_with_its_old_password(client, rt) -> None:
    from tests.admin_helpers import PASSWORD, make_staff
    from tests.admin_helpers import post_form as post_staff_form

    email, secret = await make_staff(rt, "beheerder", email=f"jan.{secrets.token_hex(4)}@arnhem.example")
    await sso(client, email=email)
    home = await client.get("/beheer")
    await client.post("/beheer/uitloggen", data={"_csrf_token": csrf(home.text)})
    refused = await post_staff_form(client, "/beheer/inloggen", {"email": email, "password": PASSWORD,
                                                                 "next": "/beheer"}, follow_redirects=False)
    assert secret and refused.status_code >= 400 and "logt u in met uw account van de gemeente" in refused.text
    assert (await client.get("/beheer", follow_redirects=False)).status_code in (302, 303)


async def test_the_session_keeps_the_providers_token_and_the_pending_sign_in_is_a_signed_cookie(client, rt) -> None:
    """Before sign-in, state, nonce and verifier wait in a cookie signed by the server, only sent to
    the callback's path and used once; after it, the server-side session says it came through the
    provider and keeps the access token the provider is asked with at every request."""
    started = await post_form(client, "/beheer/inloggen", "/beheer/inloggen/sso", next="/beheer")
    (pending,) = [c for c in started.headers.get_list("set-cookie") if c.startswith("vouchers_staff_sso_pending=")]
    assert "Path=/beheer/inloggen/sso" in pending and "HttpOnly" in pending and "samesite=lax" in pending.lower()
    back = await asyncio.to_thread(broker_answer, started.headers["location"], email="anna@arnhem.example",
                                   name="Anna de Vries", groups="vouchers-beheerders")
    signed = await client.get(back.removeprefix(BASE), follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/beheer"
    (used,) = [c for c in signed.headers.get_list("set-cookie") if c.startswith("vouchers_staff_sso_pending=")]
    assert "Max-Age=0" in used
    async with rt.sessionmaker() as session:
        (row,) = (await session.execute(select(UserSession.kind, UserSession.via, UserSession.sso_token))).all()
    assert row.kind == "staff" and row.via == "sso" and row.sso_token
    # The same answer again signs nobody in: the pending sign-in was used.
    replay = await client.get(back.removeprefix(BASE), follow_redirects=False)
    assert replay.status_code == 400
