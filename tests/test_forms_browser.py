"""Forms in a real browser: an application sent after the CSRF cookie was lost comes back filled in
(on a phone), and sending it again works; a coach's phone shows the voucher near the top, with a
compact menu, and every mistake of the redemption form at once; staff pages with wide tables work
on a phone too. axe-core checks each page (WCAG 2.1 A and AA)."""

from __future__ import annotations

import asyncio
import time

import pytest

import pyotp

from service import vouchers
from service.db import run_in_transaction
from service.models import Voucher
from service.runtime import Runtime
from service.settings import Settings
from tests import admin_helpers, coach_helpers
from tests.browser import DESKTOP, PHONE, assert_accessible, chromium, guarded_page, require_browser
from tests.helpers import make_provider, make_scheme, make_voucher

pytestmark = pytest.mark.browser


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _scheme(settings: Settings) -> None:
    async def main() -> None:
        rt = Runtime.create(settings)
        try:
            await make_scheme(rt)
        finally:
            await rt.close()

    asyncio.run(main())


def test_an_application_survives_a_lost_cookie_on_a_phone(rt, live_server_factory) -> None:
    require_browser()
    _scheme(rt.settings)
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.set_default_timeout(10_000)
        page.goto(f"{server.url}/regelingen/test-scheme/aanvragen?lang=nl")
        page.get_by_label("KvK-nummer").fill("20000001")
        page.get_by_label("Bedrijfsnaam").fill("Bakkerij De Test")
        page.get_by_label("Waarvoor wilt u de voucher gebruiken?", exact=False).fill("Coaching")
        context.clear_cookies(name="csrftoken")  # as a restarted browser drops a cookie without an expiry
        page.get_by_role("button", name="Aanvraag versturen").click()
        page.locator("#form-again").wait_for()
        assert page.get_by_label("KvK-nummer").input_value() == "20000001"
        assert page.get_by_label("Bedrijfsnaam").input_value() == "Bakkerij De Test"
        assert_accessible(page, "forms/apply-again-phone")
        page.get_by_role("button", name="Aanvraag versturen").click()  # the fresh token is accepted
        page.locator("#kvk_number-error, #postcode-error").first.wait_for()
        assert "Uw formulier is niet verstuurd" not in page.content()


def _voucher_staff_and_coach(settings: Settings) -> tuple[str, int, str, str, str]:
    async def main() -> tuple[str, int, str, str, str]:
        rt = Runtime.create(settings)
        try:
            scheme = await make_scheme(rt)
            voucher, code = await make_voucher(rt, scheme, company_name="Fietsenmaker Velp")
            provider, _token = await make_provider(rt, scheme)

            async def redeem(session):  # type: ignore[no-untyped-def]
                fresh = await session.get_one(Voucher, voucher.id)
                await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name=provider.name,
                                      category="coaching", invoice_cents=40000, reference="F-1",
                                      session_date=None, recorded_by="test")

            await run_in_transaction(rt.sessionmaker, redeem)
            coach = await coach_helpers.make_staff(rt, provider.id)
            email, secret = await admin_helpers.make_staff(rt, "beheerder")
            return code, voucher.id, coach, email, secret
        finally:
            await rt.close()

    return asyncio.run(main())


def test_a_coach_phone_shows_the_voucher_first_and_every_mistake_at_once(rt, live_server_factory) -> None:
    require_browser()
    code, _voucher_id, coach, _email, _secret = _voucher_staff_and_coach(rt.settings)
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.set_default_timeout(10_000)
        page.goto(f"{server.url}/coach/login?lang=nl&next=/v/{code}")
        page.get_by_label("E-mailadres").fill(coach)
        page.get_by_label("Wachtwoord").fill(coach_helpers.PASSWORD)
        page.get_by_role("button", name="Inloggen").click()
        page.wait_for_url(f"**/v/{code}")
        # The menu is one line until opened; the voucher starts in the top quarter of the screen.
        heading = page.get_by_role("heading", name="Fietsenmaker Velp").bounding_box()
        assert heading and heading["y"] < PHONE[1] / 4, heading
        assert not page.get_by_role("link", name="Verzilveringen").is_visible()
        page.get_by_text("Menu", exact=True).click()
        assert page.get_by_role("link", name="Verzilveringen").is_visible()
        assert_accessible(page, "forms/coach-voucher-menu-open-phone")
        page.get_by_text("Menu", exact=True).click()
        page.get_by_label("Bedrag van de factuur").fill("12,3,4")
        page.get_by_role("button", name="Vastleggen en betalen met voucher").click()
        page.locator("#error-summary-title").wait_for()
        for name in ("amount", "category", "reference"):
            assert page.locator(f"#{name}-error").is_visible()
        summary = page.locator(".error-summary").bounding_box()
        assert summary and summary["y"] < PHONE[1] / 4, summary
        page.locator('.error-summary a[href="#reference"]').click()  # the link takes the coach to the field
        assert page.evaluate("document.activeElement.id") == "reference"
        assert_accessible(page, "forms/coach-voucher-errors-phone")


def test_staff_pages_with_wide_tables_on_a_phone_and_a_desktop(rt, live_server_factory) -> None:
    require_browser()
    _code, voucher_id, _coach, email, secret = _voucher_staff_and_coach(rt.settings)
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.set_default_timeout(10_000)
        page.goto(f"{server.url}/beheer/inloggen?lang=nl")
        page.get_by_label("E-mailadres").fill(email)
        page.get_by_label("Wachtwoord").fill(admin_helpers.PASSWORD)
        page.get_by_role("button", name="Volgende").click()
        page.wait_for_url("**/beheer/inloggen/code")
        page.get_by_label("Code van 6 cijfers").fill(pyotp.TOTP(secret).at(time.time() + 30))
        page.get_by_role("button", name="Inloggen").click()
        page.wait_for_url("**/beheer")
        for width, height, device in (PHONE + ("phone",), DESKTOP + ("desktop",)):
            page.set_viewport_size({"width": width, "height": height})
            for path, name in ((f"/beheer/vouchers/{voucher_id}", "voucher"), ("/beheer/audit", "audit"),
                               ("/beheer", "home"), ("/beheer/vouchers?q=Fietsenmaker", "vouchers")):
                page.goto(server.url + path)
                assert_accessible(page, f"forms/admin-{name}-{device}")
