"""The whole journey in a real browser against a live server: apply, read the mail, confirm, see
the voucher and its QR code, redeem online against an offer. axe-core checks every page (WCAG 2.1
A and AA) and screenshots go to build/test-artifacts/entrepreneur/."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from service import offers, outbox
from service.db import run_in_transaction
from service.runtime import Runtime
from service.settings import Settings
from tests.browser import PHONE, assert_accessible, chromium, guarded_page, require_browser
from tests.entrepreneur_journey import REGISTER, link
from tests.helpers import make_provider, make_scheme

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    extract = tmp_path / "kvk.csv"
    extract.write_text(REGISTER, encoding="utf-8")
    return msgspec.structs.replace(settings, registry_file=str(extract))


async def _prepare(settings: Settings) -> None:
    rt = Runtime.create(settings)
    try:
        scheme = await make_scheme(rt, own_contribution_percent=10)
        provider, _ = await make_provider(rt, scheme, name="Coach & Co")
        data = offers.OfferIn(scheme=scheme.slug, title="Loopbaancoaching", category="coaching", price_cents=300_00,
                              duration="3 gesprekken van 1 uur", description="Samen kijken naar uw volgende stap.")
        await run_in_transaction(rt.sessionmaker, lambda s: offers.publish_offer(s, provider.id, data))
    finally:
        await rt.close()


async def _send(settings: Settings) -> None:
    rt = Runtime.create(settings)
    try:
        await outbox.send_due(rt)
    finally:
        await rt.close()


def _send_mail(settings: Settings) -> None:
    """Deliver the outbox from another thread: Playwright's sync API owns this thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _send(settings)).result()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_whole_journey_in_a_browser(backend: str, settings: Settings, live_server_factory, smtp_server) -> None:
    require_browser()
    asyncio.run(_prepare(settings))
    server = live_server_factory()
    with chromium() as context, guarded_page(context) as page:
        page.goto(server.url + "/?lang=nl")  # headless Chromium asks for English; the choice is kept in a cookie
        assert_accessible(page, "entrepreneur/01-home")
        page.get_by_role("link", name="Lees wie kan aanvragen en vraag Testregeling aan").click()
        assert_accessible(page, "entrepreneur/02-start")
        page.get_by_role("link", name="Vraag de voucher aan").click()
        assert_accessible(page, "entrepreneur/03-form")

        page.get_by_label("KvK-nummer").fill("2000000")  # one digit short
        page.get_by_role("button", name="Aanvraag versturen").click()
        assert page.locator("#kvk_number-error").is_visible()
        assert_accessible(page, "entrepreneur/04-form-errors")

        page.get_by_label("KvK-nummer").fill("20000001")
        page.get_by_label("Bedrijfsnaam").fill("Bakkerij De Test")
        page.get_by_label("Hoeveel mensen werken er in uw bedrijf?").fill("3")
        page.get_by_label("Postcode van uw bedrijf").fill("6811 AB")
        page.get_by_label("Uw naam").fill("Jan Jansen")
        page.get_by_label("E-mailadres").fill("jan@example.org")
        page.get_by_label("Waarvoor wilt u de voucher gebruiken?").fill("Coaching om nieuwe klanten te vinden")
        page.get_by_role("button", name="Aanvraag versturen").click()
        page.get_by_role("heading", name="Kijk in uw e-mail").wait_for()
        assert_accessible(page, "entrepreneur/05-check-mail")

        _send_mail(settings)
        (confirm_mail,) = smtp_server.to("jan@example.org")
        page.goto(server.url + link(confirm_mail, "/aanvraag/bevestigen/"))
        assert_accessible(page, "entrepreneur/06-confirm")
        page.get_by_role("button", name="Mijn e-mailadres bevestigen").click()
        page.get_by_role("heading", name="Uw vouchercode").wait_for()
        page.wait_for_load_state("load")  # the heading can be there before the QR image has loaded
        qr = page.get_by_role("img", name="QR-code van uw voucher. Uw coach kan deze scannen.")
        assert qr.evaluate("img => img.complete && img.naturalWidth > 0")
        _send_mail(settings)
        issued = [m for m in smtp_server.to("jan@example.org") if "voucher" in m["Subject"].lower()][-1]
        code = page.locator(".code-large").inner_text().strip()
        assert code in issued.get_payload(decode=True).decode()
        assert_accessible(page, "entrepreneur/07-my-voucher")

        page.get_by_role("link", name="Kies een aanbod").click()
        assert_accessible(page, "entrepreneur/08-offers")
        page.get_by_role("link", name="Kies Loopbaancoaching").click()
        assert page.get_by_text("€\xa030,00").first.is_visible()  # the own contribution, before confirming
        assert_accessible(page, "entrepreneur/09-offer")
        page.get_by_role("button", name="Reserveer €\xa0270,00 voor dit aanbod").click()
        page.get_by_role("heading", name="Wacht op de aanbieder").wait_for()
        assert_accessible(page, "entrepreneur/10-reservation")
        _send_mail(settings)
        assert smtp_server.to("coach@example.org"), "the provider is told about the reservation"

        page.goto(server.url + "/mijn-voucher?lang=en")
        page.get_by_role("heading", name="Your voucher code").wait_for()
        assert_accessible(page, "entrepreneur/11-my-voucher-en")
        page.get_by_role("link", name="Print your voucher").click()
        assert_accessible(page, "entrepreneur/12-print-en")
        page.set_viewport_size({"width": PHONE[0], "height": PHONE[1]})
        page.goto(server.url + "/mijn-voucher?lang=nl")
        assert_accessible(page, "entrepreneur/13-my-voucher-phone")


async def _revoked_voucher(settings: Settings) -> None:
    from service import interventions
    from tests.helpers import make_voucher

    rt = Runtime.create(settings)
    try:
        scheme = await make_scheme(rt)
        voucher, _ = await make_voucher(rt, scheme, email="jan@example.org")
        await run_in_transaction(rt.sessionmaker, lambda s: interventions.revoke(
            s, rt, voucher.id, reason="De KvK-inschrijving klopt niet"))
        await outbox.send_due(rt)
    finally:
        await rt.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_revoked_voucher_on_a_phone(backend: str, settings: Settings, live_server_factory, smtp_server) -> None:
    require_browser()
    asyncio.run(_revoked_voucher(settings))
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.goto(server.url + "/mijn-voucher?lang=nl")
        page.get_by_label("E-mailadres").fill("jan@example.org")
        page.get_by_role("button", name="Stuur mij een inloglink").click()
        _send_mail(settings)
        page.goto(server.url + link(smtp_server.to("jan@example.org")[-1], "/mijn-voucher/inloggen/"))
        page.get_by_role("button", name="Inloggen").click()
        page.get_by_role("heading", name="Uw voucher is ingetrokken").wait_for()
        assert page.get_by_text("De KvK-inschrijving klopt niet").is_visible()
        assert page.get_by_role("heading", name="Bezwaar maken").is_visible()
        assert page.locator("img.qr").count() == 0
        assert_accessible(page, "entrepreneur/20-revoked-phone")


async def _refused_application(settings: Settings) -> str:
    from service import applications, registry
    from tests.helpers import applicant

    rt = Runtime.create(settings)
    try:
        scheme = await make_scheme(rt)

        async def work(session):  # type: ignore[no-untyped-def]
            application = await applications.submit(session, scheme, applicant(kvk_number="20000002", employees=5))
            application.status = "registry_pending"
            return application

        application = await run_in_transaction(rt.sessionmaker, work)
        assert await registry.check_application(rt, application.id) == "rejected"
        return application.public_id
    finally:
        await rt.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_refusal_with_the_registers_facts_on_a_phone(backend: str, settings: Settings, live_server_factory) -> None:
    require_browser()
    public_id = asyncio.run(_refused_application(settings))
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.goto(server.url + f"/aanvraag/{public_id}?lang=nl")
        page.get_by_role("heading", name="Wat het Handelsregister zegt").wait_for()
        assert page.get_by_text("u vulde in: 5").is_visible()
        assert_accessible(page, "entrepreneur/21-refused-phone")
        page.goto(server.url + f"/aanvraag/{public_id}?lang=en")
        page.get_by_role("heading", name="What the trade register says").wait_for()
        assert_accessible(page, "entrepreneur/22-refused-phone-en")
