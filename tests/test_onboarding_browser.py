"""A provider joins on a phone (390 px): signs up, confirms the address with the button behind the
mailed link, is approved by staff on /beheer/aanbieders, chooses a password from the mail, signs in,
invites a colleague, and resets a forgotten password. axe-core checks every page on the way."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service import outbox
from service.runtime import Runtime
from service.settings import Settings
from tests.admin_helpers import make_staff, next_code
from tests.admin_helpers import PASSWORD as STAFF_PASSWORD
from tests.browser import PHONE, assert_accessible, chromium, guarded_page, require_browser
from tests.helpers import make_scheme

pytestmark = pytest.mark.browser

CONTACT = "anna@leergroei.example"
FIRST = "een eerste lang wachtwoord"
SECOND = "een tweede lang wachtwoord"


@pytest.fixture
def backend() -> str:
    """One database is enough to test the browser side; the page tests cover both."""
    return "sqlite"


def _run(settings: Settings, work: Any) -> Any:
    """Run domain work on its own event loop, in a thread: Playwright's sync API holds one here."""

    async def main() -> Any:
        rt = Runtime.create(settings)
        try:
            return await work(rt)
        finally:
            await rt.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _mailed_link(settings: Settings, smtp_server: Any, address: str, path: str, server_url: str) -> str:
    """Send what is due (the live server's background work is off) and take the newest link."""
    _run(settings, outbox.send_due)
    base = settings.base_url.rstrip("/")
    links = [m.group(0) for message in smtp_server.to(address)
             for m in re.finditer(re.escape(base + path) + r"\S+", message.get_payload(decode=True).decode())]
    assert links, f"no {path} link mailed to {address}"
    return links[-1].replace(base, server_url)


def test_a_provider_joins_on_a_phone(rt, live_server_factory, smtp_server) -> None:
    require_browser()
    _run(rt.settings, make_scheme)
    staff_email, secret = _run(rt.settings, lambda r: make_staff(r, "beoordelaar"))
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.set_default_timeout(10_000)
        page.goto(f"{server.url}/coach/apply?lang=nl")
        page.select_option("#scheme", "test-scheme")
        page.fill("#name", "Leer & Groei")
        page.fill("#contact_name", "Anna de Vries")
        page.fill("#kvk_number", "87654321")
        page.fill("#email", CONTACT)
        page.check("#cat_coaching")
        page.fill("#iban", "NL91 ABNA 0417 1643 00")
        assert_accessible(page, "onboarding/apply-phone")
        page.locator("main button[type=submit]").click()
        page.get_by_text(CONTACT).wait_for()
        assert_accessible(page, "onboarding/apply-done-phone")

        page.goto(_mailed_link(rt.settings, smtp_server, CONTACT, "/coach/bevestigen/", server.url))
        assert_accessible(page, "onboarding/confirm-phone")
        page.locator("main button[type=submit]").click()
        page.locator(".notice").wait_for()
        assert_accessible(page, "onboarding/confirmed-phone")

        page.goto(f"{server.url}/beheer/inloggen")
        page.fill("#email", staff_email)
        page.fill("#password", STAFF_PASSWORD)
        page.locator("main button[type=submit]").click()
        page.fill("#code", next_code(secret))
        page.locator("main button[type=submit]").click()
        page.wait_for_url("**/beheer")
        page.goto(f"{server.url}/beheer/aanbieders")
        assert "Leer &amp; Groei" in page.content()
        assert_accessible(page, "onboarding/admin-providers-phone")
        page.locator("input[type=radio][value=approve]").check()
        page.locator("main form button[type=submit]").first.click()
        page.get_by_role("heading", name="Aanbieder goedkeuren?").wait_for()
        assert_accessible(page, "onboarding/admin-confirm-provider-phone")
        page.get_by_role("button", name="Ja, goedkeuren").click()
        page.wait_for_url("**/beheer/aanbieders?*")

        page.goto(_mailed_link(rt.settings, smtp_server, CONTACT, "/coach/wachtwoord/", server.url))
        assert_accessible(page, "onboarding/password-phone")
        page.fill("#password", "kort")
        page.fill("#repeat", "kort")
        page.locator("main button[type=submit]").click()
        page.locator("#password-error").wait_for()
        assert_accessible(page, "onboarding/password-refused-phone")
        page.fill("#password", FIRST)
        page.fill("#repeat", FIRST)
        page.locator("main button[type=submit]").click()
        page.wait_for_url("**/coach/login?klaar=wachtwoord")
        assert_accessible(page, "onboarding/login-after-password-phone")
        page.fill("#email", CONTACT)
        page.fill("#password", FIRST)
        page.locator("main button[type=submit]").click()
        page.wait_for_url("**/coach")

        page.goto(f"{server.url}/coach/team")
        assert_accessible(page, "onboarding/team-phone")
        page.fill("#name", "Bram Jansen")
        page.fill("#email", "bram@leergroei.example")
        page.locator("form[action='/coach/team'] button").click()
        page.wait_for_url("**/coach/team?done=invited")
        assert "Bram Jansen" in page.content()
        assert_accessible(page, "onboarding/team-invited-phone")
        _mailed_link(rt.settings, smtp_server, "bram@leergroei.example", "/coach/wachtwoord/", server.url)

        page.locator("details summary").click()  # the menu is folded on a phone
        page.locator("form[action='/coach/logout'] button").click()
        page.wait_for_url("**/coach/login")
        page.locator("a[href='/coach/wachtwoord-vergeten']").click()
        assert_accessible(page, "onboarding/forgot-phone")
        page.fill("#email", CONTACT)
        page.locator("main button[type=submit]").click()
        page.locator(".notice").wait_for()
        assert_accessible(page, "onboarding/forgot-sent-phone")
        page.goto(_mailed_link(rt.settings, smtp_server, CONTACT, "/coach/wachtwoord/", server.url))
        page.fill("#password", SECOND)
        page.fill("#repeat", SECOND)
        page.locator("main button[type=submit]").click()
        page.wait_for_url("**/coach/login?klaar=wachtwoord")
        page.fill("#email", CONTACT)
        page.fill("#password", SECOND)
        page.locator("main button[type=submit]").click()
        page.wait_for_url("**/coach")
