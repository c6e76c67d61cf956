"""A provider joins from the web: signs up, confirms the contact's address, is approved or refused
by staff on /beheer/aanbieders, sets a password from a mailed one-time link, invites and removes
colleagues, and resets a forgotten password (which ends the sessions that were open)."""

from __future__ import annotations

import re
from email.header import decode_header, make_header
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from service import outbox, providers, staff
from service.app import create_app
from service.db import run_in_transaction
from service.models import Provider, ProviderUser, utcnow
from tests import admin_helpers, coach_helpers
from tests.coach_helpers import post_form, sign_in
from tests.helpers import make_scheme

BASE = "http://testserver.local"
CONTACT = "anna@leergroei.example"
COLLEAGUE = "bram@leergroei.example"
FIRST = "een eerste lang wachtwoord"
SECOND = "een tweede lang wachtwoord"


def _body(message: Any) -> str:
    return message.get_payload(decode=True).decode()


def _subject(message: Any) -> str:
    return str(make_header(decode_header(message["Subject"])))


async def _last_link(rt: Any, smtp_server: Any, address: str, path: str) -> str:
    await outbox.send_due(rt)
    bodies = [_body(m) for m in smtp_server.to(address)]
    links = [m.group(1) for body in bodies for m in re.finditer(re.escape(BASE) + "(" + path + r"\S+)", body)]
    assert links, f"no {path} link mailed to {address}: {bodies}"
    return links[-1]


async def _sign_up(client: Any, email: str = CONTACT, kvk: str = "87654321") -> None:
    await coach_helpers.csrf(client, "/coach/apply")
    form = {"scheme": "test-scheme", "name": "Leer & Groei", "contact_name": "Anna de Vries", "kvk_number": kvk,
            "email": email, "iban": "NL91 ABNA 0417 1643 00", "cat_coaching": "on"}
    missing = await post_form(client, "/coach/apply", {**form, "contact_name": ""})
    assert missing.status_code == 422 and 'id="contact_name-error"' in missing.text
    done = await post_form(client, "/coach/apply", form)
    assert done.status_code == 200 and email in done.text


async def _decide(rt: Any, approve: bool, reason: str = "") -> None:
    async with AsyncTestClient(app=create_app(rt.settings), base_url=BASE) as office:
        await admin_helpers.staff_client_sign_in(office, rt, "beoordelaar")
        waiting = await office.get("/beheer/aanbieders")
        assert waiting.status_code == 200 and "Leer &amp; Groei" in waiting.text
        enrolment_id = re.search(r'/beheer/aanbieders/(\d+)/besluit', waiting.text).group(1)
        r = await admin_helpers.post_form(office, f"/beheer/aanbieders/{enrolment_id}/besluit",
                                          {"decision": "approve" if approve else "refuse", "reason": reason,
                                           "confirm": "yes"},
                                          follow_redirects=False)
        assert r.status_code == 303, r.text


async def _confirm(client: Any, rt: Any, smtp_server: Any, email: str = CONTACT) -> None:
    path = await _last_link(rt, smtp_server, email, "/coach/bevestigen/")
    # Opening the link (as a mail scanner would) confirms nothing: only the button does.
    shown = await client.get(path)
    assert shown.status_code == 200 and f'action="{path}"' in shown.text
    async with rt.sessionmaker() as session:
        assert (await session.scalar(select(Provider).where(Provider.email == email))).email_confirmed_at is None
    confirmed = await post_form(client, path, {})
    assert confirmed.status_code == 200 and "bevestigd" in confirmed.text


async def _signed_in(client: Any) -> bool:
    return (await client.get("/coach/team", follow_redirects=False)).status_code == 200


async def test_waiting_provider_is_listed_for_staff(client, rt) -> None:
    await make_scheme(rt)

    async def waiting(session):  # type: ignore[no-untyped-def]
        enrolment = await staff.apply(session, staff.ProviderApplication(
            scheme="test-scheme", name="Wachtende Coach", kvk_number="87654321", email="wacht@coach.example",
            iban="NL91ABNA0417164300", categories=["coaching", "financial_advice"]))
        (await session.get_one(Provider, enrolment.provider_id)).email_confirmed_at = utcnow()

    await run_in_transaction(rt.sessionmaker, waiting)
    await admin_helpers.staff_client_sign_in(client, rt, "beoordelaar")
    page = await client.get("/beheer/aanbieders")
    assert page.status_code == 200, page.text
    assert "Wachtende Coach" in page.text and "Coaching" in page.text and "Financieel advies" in page.text


async def test_a_provider_joins_and_manages_its_team(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    await _sign_up(client)
    # Not yet confirmed: staff do not see it, and cannot decide it.
    async with AsyncTestClient(app=create_app(rt.settings), base_url=BASE) as office:
        await admin_helpers.staff_client_sign_in(office, rt, "beoordelaar")
        assert "Leer &amp; Groei" not in (await office.get("/beheer/aanbieders")).text
    await _confirm(client, rt, smtp_server)
    async with rt.sessionmaker() as session:
        contact = await session.scalar(select(ProviderUser).where(ProviderUser.email == CONTACT))
        assert contact is not None and contact.name == "Anna de Vries" and contact.password_hash is None
    # No password yet: signing in fails like a wrong password.
    assert (await sign_in(client, CONTACT, "")).status_code == 422

    await _decide(rt, approve=True)
    path = await _last_link(rt, smtp_server, CONTACT, "/coach/wachtwoord/")
    assert _subject(smtp_server.to(CONTACT)[-1]) == "U kunt meedoen aan Testregeling"
    assert (await client.get(path)).status_code == 200
    short = await post_form(client, path, {"password": "kort", "repeat": "kort"})
    assert short.status_code == 422 and 'id="password-error"' in short.text
    saved = await post_form(client, path, {"password": FIRST, "repeat": FIRST}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/coach/login?klaar=wachtwoord"
    assert (await client.get(path)).status_code == 404, "the link works once"
    r = await sign_in(client, CONTACT, FIRST)
    assert r.status_code == 200 and str(r.url).endswith("/coach"), r.text

    # Inviting a colleague, who chooses a password from the mail and signs in.
    await post_form(client, "/coach/team", {"name": "", "email": COLLEAGUE})
    bad = await post_form(client, "/coach/team", {"name": "Bram", "email": "geen-adres"})
    assert bad.status_code == 422 and 'id="email-error"' in bad.text
    invited = await post_form(client, "/coach/team", {"name": "Bram Jansen", "email": COLLEAGUE},
                              follow_redirects=False)
    assert invited.status_code == 303
    team = await client.get("/coach/team")
    assert "Bram Jansen" in team.text and "Anna de Vries" in team.text
    async with AsyncTestClient(app=create_app(rt.settings), base_url=BASE) as colleague:
        link = await _last_link(rt, smtp_server, COLLEAGUE, "/coach/wachtwoord/")
        await coach_helpers.csrf(colleague, link)
        assert (await post_form(colleague, link, {"password": SECOND, "repeat": SECOND},
                                follow_redirects=False)).status_code == 303
        assert (await sign_in(colleague, COLLEAGUE, SECOND)).status_code == 200
        assert await _signed_in(colleague)
        async with rt.sessionmaker() as session:
            bram = await session.scalar(select(ProviderUser.id).where(ProviderUser.email == COLLEAGUE))
            anna = await session.scalar(select(ProviderUser.id).where(ProviderUser.email == CONTACT))
        # Nobody removes themselves; the contact removes the colleague, whose session ends at once.
        own = await post_form(client, f"/coach/team/{anna}/remove", {})
        assert own.status_code == 422
        assert (await post_form(client, f"/coach/team/{bram}/remove", {}, follow_redirects=False)).status_code == 303
        assert not await _signed_in(colleague)
        assert (await sign_in(colleague, COLLEAGUE, SECOND)).status_code == 422
    assert "Bram Jansen" not in (await client.get("/coach/team")).text
    # An API token of the provider manages no accounts.
    async with rt.sessionmaker() as session:
        provider_id = await session.scalar(select(Provider.id).where(Provider.email == CONTACT))
    token = await run_in_transaction(rt.sessionmaker, lambda s: providers.create_token(
        s, rt, role="coach", name="kassa", provider_id=provider_id))
    async with AsyncTestClient(app=create_app(rt.settings), base_url=BASE) as system:
        r = await system.get("/coach/team", headers={"Authorization": f"Bearer {token}"}, follow_redirects=False)
        assert r.status_code in (302, 303) and "/coach/login" in r.headers["location"]

    # Forgotten password: a mailed reset link; the reset ends the session that was open.
    async with AsyncTestClient(app=create_app(rt.settings), base_url=BASE) as elsewhere:
        await coach_helpers.csrf(elsewhere, "/coach/wachtwoord-vergeten")
        assert "/coach/wachtwoord-vergeten" in (await elsewhere.get("/coach/login")).text
        asked = await post_form(elsewhere, "/coach/wachtwoord-vergeten", {"email": CONTACT})
        assert asked.status_code == 200
        reset = await _last_link(rt, smtp_server, CONTACT, "/coach/wachtwoord/")
        assert _subject(smtp_server.to(CONTACT)[-1]) == "Kies een nieuw wachtwoord"
        assert await _signed_in(client)
        assert (await post_form(elsewhere, reset, {"password": SECOND, "repeat": SECOND},
                                follow_redirects=False)).status_code == 303
        assert not await _signed_in(client), "the reset ends the old session"
        assert (await sign_in(elsewhere, CONTACT, FIRST)).status_code == 422
        assert (await sign_in(elsewhere, CONTACT, SECOND)).status_code == 200
        assert await _signed_in(elsewhere)


async def test_refusal_is_mailed_with_its_reason(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    await _sign_up(client)
    await _confirm(client, rt, smtp_server)
    await _decide(rt, approve=False, reason="Geen erkende opleiding gevonden")
    await outbox.send_due(rt)
    refusal = smtp_server.to(CONTACT)[-1]
    assert _subject(refusal) == "Uw aanmelding als aanbieder voor Testregeling"
    body = _body(refusal)
    assert "Reden: Geen erkende opleiding gevonden" in body and "/coach/wachtwoord/" not in body
    async with rt.sessionmaker() as session:
        assert (await session.scalar(select(ProviderUser).where(ProviderUser.email == CONTACT))).password_hash is None
    # Nor can the refused contact get a password another way.
    await coach_helpers.csrf(client, "/coach/wachtwoord-vergeten")
    assert (await post_form(client, "/coach/wachtwoord-vergeten", {"email": CONTACT})).status_code == 200
    await outbox.send_due(rt)
    assert not [m for m in smtp_server.to(CONTACT) if "/coach/wachtwoord/" in _body(m)]


async def test_forgotten_password_does_not_tell_which_addresses_have_accounts(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    await _sign_up(client)
    await _confirm(client, rt, smtp_server)
    await _decide(rt, approve=True)
    await coach_helpers.csrf(client, "/coach/wachtwoord-vergeten")
    known = await post_form(client, "/coach/wachtwoord-vergeten", {"email": CONTACT})
    unknown = await post_form(client, "/coach/wachtwoord-vergeten", {"email": "niemand@leergroei.example"})
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace(CONTACT, "X") == unknown.text.replace("niemand@leergroei.example", "X")
    await outbox.send_due(rt)
    assert not smtp_server.to("niemand@leergroei.example")
    assert [_subject(m) for m in smtp_server.to(CONTACT)][-1] == "Kies een nieuw wachtwoord"
    # One address gets a few reset mails an hour at most; one client may ask a few times only.
    for _ in range(staff.RESET_MAILS_PER_HOUR + 2):
        await post_form(client, "/coach/wachtwoord-vergeten", {"email": CONTACT})
    await outbox.send_due(rt)
    resets = [m for m in smtp_server.to(CONTACT) if _subject(m) == "Kies een nieuw wachtwoord"]
    assert len(resets) == staff.RESET_MAILS_PER_HOUR
    for _ in range(10):
        last = await post_form(client, "/coach/wachtwoord-vergeten", {"email": "iemand@leergroei.example"})
    assert last.status_code == 429


async def test_account_links_are_stored_hashed_expire_and_replace_each_other(rt) -> None:
    """One mechanism for municipality and provider accounts: only a hash of the token is kept, a
    link works until it expires, and a new link for an account ends the earlier one."""
    import datetime as dt

    from service import account_links, municipality
    from service.models import AccountLink, OutboxMessage

    scheme = await make_scheme(rt)
    from tests.helpers import make_provider

    provider, _token = await make_provider(rt, scheme)

    async def work(session):  # type: ignore[no-untyped-def]
        person = await staff.invite(session, rt, provider_id=provider.id, email="c@leergroei.example", name="C",
                                    invited_by="Anna")
        official = await municipality.create_staff(session, rt, email="m@arnhem.example", name="M", role="lezer")
        staff_url = await municipality.setup_link(session, rt, official)
        return person.id, staff_url

    person_id, staff_url = await run_in_transaction(rt.sessionmaker, work)
    assert "/beheer/instellen/" in staff_url
    async with rt.sessionmaker() as session:
        link = await session.scalar(select(AccountLink).where(AccountLink.provider_user_id == person_id))
        token = account_links.token_of(rt, link)
        message = await session.scalar(select(OutboxMessage).where(OutboxMessage.template == "provider_invite"))
        assert token.encode() not in bytes(link.token_hash) and token not in str(message.params)
        _subject, body = await outbox.render(session, rt, message)
        assert f"/coach/wachtwoord/{token}" in body
        assert await account_links.find(session, rt, token, kind="staff") is None, "each kind has its own links"
        later = link.created_at + dt.timedelta(hours=staff.SETUP_HOURS)
        assert await account_links.find(session, rt, token, kind="provider", now=later - dt.timedelta(minutes=1))
        assert await account_links.find(session, rt, token, kind="provider", now=later) is None
        staff_token = staff_url.rpartition("/")[2]
        assert await account_links.find(session, rt, staff_token, kind="staff") is not None

    async def again(session):  # type: ignore[no-untyped-def]
        return await staff.setup_link(session, rt, await session.get_one(ProviderUser, person_id))

    await run_in_transaction(rt.sessionmaker, again)
    async with rt.sessionmaker() as session:
        assert await account_links.find(session, rt, token, kind="provider") is None, "replaced by the new link"
