"""Forms in a real browser: an application sent after the CSRF cookie was lost comes back filled in
(on a phone), and sending it again works. axe-core checks each page (WCAG 2.1 A and AA)."""

from __future__ import annotations

import asyncio

import pytest

from service.runtime import Runtime
from service.settings import Settings
from tests.browser import PHONE, assert_accessible, chromium, guarded_page, require_browser
from tests.helpers import make_scheme

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
