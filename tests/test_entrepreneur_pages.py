"""The entrepreneur's journey through the pages: apply, confirm, result, my voucher."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import select, update

from service import registry, sweep
from service.models import Application, SignInToken, Voucher
from service.settings import Settings
from tests.entrepreneur_journey import REGISTER, apply, body, csrf, deliver, link, post_form
from tests.helpers import make_scheme, make_voucher


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    extract = tmp_path / "kvk.csv"
    extract.write_text(REGISTER, encoding="utf-8")
    return msgspec.structs.replace(settings, registry_file=str(extract), limit_per_address=3, failed_lookup_limit=4)


async def applications_in(rt) -> list[Application]:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(Application).order_by(Application.id)))


async def test_start_page_and_home_link_to_the_form(client, rt) -> None:
    await make_scheme(rt)
    home = await client.get("/")
    assert 'href="/regelingen/test-scheme"' in home.text
    page = await client.get("/regelingen/test-scheme")
    assert page.status_code == 200
    assert "Vraag de voucher aan" in page.text and 'href="/regelingen/test-scheme/aanvragen"' in page.text
    assert "300 van de 300" in page.text
    english = await client.get("/regelingen/test-scheme?lang=en")
    assert "Apply for the voucher" in english.text and '<html lang="en">' in english.text


async def test_form_errors_are_shown_next_to_fields_and_nothing_is_stored(client, rt) -> None:
    await make_scheme(rt)
    response = await apply(client, kvk_number="1234", postcode="ABCD", email="not-an-address", company_name="")
    assert response.status_code == 422
    html = response.text
    assert 'id="kvk_number-error"' in html and "8 cijfers" in html
    assert 'id="postcode-error"' in html and 'id="email-error"' in html and 'id="company_name-error"' in html
    assert 'aria-describedby="kvk_number-hint kvk_number-error"' in html
    # What was typed stays in the form.
    assert 'value="1234"' in html and 'value="not-an-address"' in html and "Coaching om nieuwe klanten" in html
    assert await applications_in(rt) == []
    english = await apply(client, kvk_number="1234", **{"lang": "en"})
    assert english.status_code == 422


async def test_errors_in_english(client, rt) -> None:
    await make_scheme(rt)
    await client.get("/?lang=en")  # sets the language cookie
    response = await apply(client, kvk_number="12")
    assert "A KvK number has 8 digits" in response.text


async def test_post_without_csrf_token_is_refused(client, rt) -> None:
    await make_scheme(rt)
    response = await client.post("/regelingen/test-scheme/aanvragen", data={"kvk_number": "20000001"})
    assert response.status_code == 403
    assert await applications_in(rt) == []


async def test_confirmation_is_required_before_a_voucher_is_issued(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    response = await apply(client)
    assert response.status_code == 303
    status_path = response.headers["location"]
    (application,) = await applications_in(rt)
    assert application.status == "unconfirmed" and application.postcode == "6811 AB"
    (mail,) = await deliver(rt, smtp_server)
    assert mail["To"] == "jan@example.org" and "Bevestig uw e-mailadres" in mail["Subject"]
    status = await client.get(status_path)
    assert "Kijk in uw e-mail" in status.text
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(Voucher.id)) is None

    # Opening the link (as a mail scanner would) changes nothing; the button confirms.
    confirm_path = link(mail, "/aanvraag/bevestigen/")
    page = await client.get(confirm_path)
    assert page.status_code == 200 and (await applications_in(rt))[0].status == "unconfirmed"
    done = await client.post(confirm_path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/mijn-voucher"
    (application,) = await applications_in(rt)
    assert application.status == "granted" and application.email_confirmed_at is not None
    assert application.registry_employees == 3

    mine = await client.get("/mijn-voucher")
    assert mine.status_code == 200 and "Uw vouchercode" in mine.text
    assert mine.headers["cache-control"] == "no-store" and mine.headers["referrer-policy"] == "no-referrer"
    (issued,) = await deliver(rt, smtp_server)
    assert "/mijn-voucher" in body(issued)
    code = body(issued).split("Uw vouchercode: ")[1].split()[0] if "Uw vouchercode: " in body(issued) else None
    assert code and code in mine.text
    qr = await client.get("/mijn-voucher/qr.png?download=1")
    assert qr.status_code == 200 and qr.content.startswith(b"\x89PNG")
    assert qr.headers["cache-control"] == "no-store" and "attachment" in qr.headers["content-disposition"]
    svg = await client.get("/mijn-voucher/qr.svg")
    assert svg.status_code == 200 and b"<svg" in svg.content
    printable = await client.get("/mijn-voucher/afdrukken")
    assert code in printable.text and printable.headers["cache-control"] == "no-store"

    # The confirmation link works once.
    again = await client.post(confirm_path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert again.headers["location"].startswith("/aanvraag/")
    async with rt.sessionmaker() as session:
        assert len(list(await session.scalars(select(Voucher.id)))) == 1


async def test_register_figures_decide_not_the_applicants_word(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    for kvk, expected in [("20000002", "too-many-employees"), ("20000003", "outside-area"),
                          ("20000004", "not-active"), ("29999999", "not-in-register")]:
        await apply(client, kvk_number=kvk, employees="2", postcode="6811 AB", email=f"a{kvk}@example.org")
        confirm_mail = (await deliver(rt, smtp_server))[-1]
        path = link(confirm_mail, "/aanvraag/bevestigen/")
        page = await client.get(path)
        done = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
        status = await client.get(done.headers["location"])
        assert "U kunt geen voucher krijgen" in status.text
        application = [a for a in await applications_in(rt) if a.kvk_number == kvk][0]
        assert application.status == "rejected" and application.reasons == [expected], kvk
        (rejection,) = await deliver(rt, smtp_server)
        assert rejection["To"] == f"a{kvk}@example.org"


async def test_registry_down_keeps_the_application_and_decides_it_later(client, rt, settings, smtp_server) -> None:
    await make_scheme(rt)
    extract = Path(settings.registry_file)
    extract.rename(extract.with_suffix(".away"))  # the register cannot be read
    await apply(client)
    path = link((await deliver(rt, smtp_server))[0], "/aanvraag/bevestigen/")
    page = await client.get(path)
    done = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    status = await client.get(done.headers["location"])
    assert "We controleren uw aanvraag" in status.text
    (application,) = await applications_in(rt)
    assert application.status == "registry_pending"
    (waiting_mail,) = await deliver(rt, smtp_server)
    assert "controleren" in waiting_mail["Subject"]
    # Still down: still waiting, and no second mail.
    assert (await registry.retry_pending(rt)).still_pending == 1
    assert await deliver(rt, smtp_server) == []
    extract.with_suffix(".away").rename(extract)
    report = await sweep.sweep(rt)  # the server's background sweep retries the register
    assert report.registry_decided == 1
    (application,) = await applications_in(rt)
    assert application.status == "granted"
    (issued,) = await deliver(rt, smtp_server)
    assert "voucher" in issued["Subject"].lower()


async def test_unconfirmed_application_gives_way_to_a_new_one(client, rt) -> None:
    await make_scheme(rt)
    await apply(client, email="typo@exmaple.org")
    response = await apply(client, email="jan@example.org")
    assert response.status_code == 303
    statuses = sorted(a.status for a in await applications_in(rt))
    assert statuses == ["unconfirmed", "withdrawn"]


async def test_applying_is_rate_limited_per_address(client, rt) -> None:
    await make_scheme(rt)
    for n in range(3):
        assert (await apply(client, kvk_number=f"2000000{n + 1}")).status_code in (303, 422)
    response = await apply(client, kvk_number="20000005")
    assert response.status_code == 429
    assert "Te veel pogingen" in response.text or "Too many" in response.text


async def test_waiting_list_position_on_the_status_page(client, rt, smtp_server) -> None:
    await make_scheme(rt, max_places=1, budget_cents=1_350_00)
    for kvk, email in [("20000001", "one@example.org"), ("20000005", "two@example.org")]:
        await apply(client, kvk_number=kvk, email=email)
        path = link((await deliver(rt, smtp_server))[-1], "/aanvraag/bevestigen/")
        page = await client.get(path)
        done = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    status = await client.get(done.headers["location"])
    assert "wachtlijst" in status.text and "1" in status.text


async def test_status_lookups_of_unknown_numbers_are_limited(client, rt) -> None:
    await make_scheme(rt)
    for _ in range(rt.settings.failed_lookup_limit):
        assert (await client.get("/aanvraag/AXXXXXXXXXXXX")).status_code == 404
    assert (await client.get("/aanvraag/AXXXXXXXXXXXX")).status_code == 429


async def sign_in_link(client, rt, smtp_server, email: str) -> str:  # type: ignore[no-untyped-def]
    response = await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email=email)
    assert response.status_code == 200
    mails = await deliver(rt, smtp_server)
    return link(mails[-1], "/mijn-voucher/inloggen/") if mails else ""


async def test_magic_link_signs_in_once(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, email="piet@example.org")
    await deliver(rt, smtp_server)
    path = await sign_in_link(client, rt, smtp_server, "Piet@Example.org")
    page = await client.get(path)
    assert (await client.get("/mijn-voucher")).text.count(code) == 0
    done = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert done.headers["location"] == "/mijn-voucher"
    assert code in (await client.get("/mijn-voucher")).text
    async with rt.sessionmaker() as session:
        token = await session.scalar(select(SignInToken))
        assert token.used_at is not None and len(token.token_hash) == 32
        assert path.rsplit("/", 1)[1].encode() not in token.token_hash
    await post_form(client, "/mijn-voucher", "/mijn-voucher/uitloggen")
    second = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert second.status_code == 400 and "werkt niet meer" in second.text
    assert code not in (await client.get("/mijn-voucher")).text


async def test_magic_link_expires(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email="piet@example.org")
    await deliver(rt, smtp_server)
    path = await sign_in_link(client, rt, smtp_server, "piet@example.org")
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(SignInToken).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    page = await client.get(path)
    response = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
    assert response.status_code == 400


async def test_same_answer_for_unknown_addresses_and_limits(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email="piet@example.org")
    await deliver(rt, smtp_server)
    known = await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email="piet@example.org")
    unknown = await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email="nobody@example.org")
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("piet@example.org", "X") == unknown.text.replace("nobody@example.org", "X")
    assert [m["To"] for m in await deliver(rt, smtp_server)] == ["piet@example.org"]
    for _ in range(2):
        await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email="piet@example.org")
    limited = await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email="piet@example.org")
    assert limited.status_code == 429


async def test_an_entrepreneur_sees_only_their_own_voucher(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    _, mine = await make_voucher(rt, scheme, email="mine@example.org")
    _, theirs = await make_voucher(rt, scheme, email="theirs@example.org")
    await deliver(rt, smtp_server)
    assert (await client.get("/mijn-voucher/qr.png")).status_code == 401
    assert (await client.get("/mijn-voucher/afdrukken")).status_code == 401
    path = await sign_in_link(client, rt, smtp_server, "mine@example.org")
    page = await client.get(path)
    await client.post(path, data={"_csrf_token": csrf(page.text)})
    text = (await client.get("/mijn-voucher")).text + (await client.get("/mijn-voucher/afdrukken")).text
    assert mine in text and theirs not in text


async def test_unconfirmed_applications_are_withdrawn_after_the_link_expires(client, rt) -> None:
    await make_scheme(rt)
    await apply(client)
    assert await registry.withdraw_unconfirmed(rt) == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=rt.settings.confirm_link_hours, minutes=1)
    assert await registry.withdraw_unconfirmed(rt, now=later) == 1
    (application,) = await applications_in(rt)
    assert application.status == "withdrawn"
    # The KvK number is free again.
    assert (await apply(client)).status_code == 303


async def test_a_forged_confirmation_link_does_nothing(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    await apply(client)
    path = link((await deliver(rt, smtp_server))[0], "/aanvraag/bevestigen/")
    forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    page = await client.get(forged)
    assert page.status_code == 400 and "werkt niet meer" in page.text
    response = await post_form(client, "/mijn-voucher", forged)
    assert response.status_code == 400
    assert [a.status for a in await applications_in(rt)] == ["unconfirmed"]


async def test_an_english_applicant_gets_english_mail(client, rt, smtp_server) -> None:
    await make_scheme(rt)
    await client.get("/?lang=en")
    await apply(client)
    (mail,) = await deliver(rt, smtp_server)
    assert mail["Subject"] == "Confirm your e-mail address for Test scheme"
    path = link(mail, "/aanvraag/bevestigen/")
    await post_form(client, path)
    (issued,) = await deliver(rt, smtp_server)
    assert issued["Subject"] == "Your voucher for Test scheme"
    assert "Your voucher code" in (await client.get("/mijn-voucher")).text


async def test_a_refusal_shows_what_the_register_said(client, rt, settings, smtp_server) -> None:
    await make_scheme(rt)
    extract_day = dt.date(2026, 11, 30)
    moment = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC).timestamp()
    os.utime(settings.registry_file, (moment, moment))
    cases = {
        "20000002": ("5", "6811 AB", ["40", "u vulde in: 5", "6811 AB", "actief", "ten hoogste 10 mensen"]),
        "20000003": ("2", "6811 AB", ["6701 AB", "u vulde in: 6811 AB", "actief"]),
        "20000004": ("1", "6811 AB", ["beëindigd"]),
        "29999999": ("1", "6811 AB", ["niet gevonden in het register"]),
    }
    for kvk, (employees, postcode, facts) in cases.items():
        await apply(client, kvk_number=kvk, employees=employees, postcode=postcode, email=f"a{kvk}@example.org")
        path = link((await deliver(rt, smtp_server))[-1], "/aanvraag/bevestigen/")
        page = await client.get(path)
        done = await client.post(path, data={"_csrf_token": csrf(page.text)}, follow_redirects=False)
        status = (await client.get(done.headers["location"])).text
        (rejection,) = await deliver(rt, smtp_server)
        for text in (status, body(rejection)):
            register = text.split("Wat het Handelsregister zegt" if text is status else "Deze gegevens hebben")[1]
            assert "30 november 2026" in register, kvk
            for fact in facts:
                assert fact in text, (kvk, fact)
            assert "bezwaar" in register
    (application,) = [a for a in await applications_in(rt) if a.kvk_number == "20000002"]
    assert (application.registry_employees, application.registry_active,
            application.registry_extracted_on) == (40, True, extract_day)
