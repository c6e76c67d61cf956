"""A coach on a phone: signs in, opens the voucher's URL as the camera would, redeems, and sees
the new balance; then the entrepreneur's own page shows it too. axe-core checks every coach page
(WCAG 2.1 A/AA)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select

from service import outbox, signin
from service.db import run_in_transaction
from service.models import OutboxMessage
from service.runtime import Runtime
from service.settings import Settings
from tests.browser import (
    PHONE,
    assert_accessible,
    chromium,
    guarded_page,
    require_browser,
)
from tests.coach_helpers import PASSWORD, make_staff
from tests.helpers import make_provider, make_scheme, make_voucher

pytestmark = pytest.mark.browser


@pytest.fixture
def backend() -> str:
    """One database is enough to test the browser side; the page tests cover both."""
    return "sqlite"


HOLDER = "holder@fietsenmaker.example"


def _sign_in_link(settings: Settings) -> str:
    """Ask for a sign-in link as the entrepreneur would, and take it from the outbox."""

    async def main() -> str:
        rt = Runtime.create(settings)
        try:
            await run_in_transaction(rt.sessionmaker, lambda s: signin.request_sign_in(s, rt, HOLDER, locale="nl"))
            async with rt.sessionmaker() as session:
                message = await session.scalar(select(OutboxMessage).where(OutboxMessage.template == "sign_in_link")
                                               .order_by(OutboxMessage.id.desc()))
                _subject, body = await outbox.render(session, rt, message)  # the link exists only in the mail
            return next(word for word in body.split() if "/mijn-voucher/inloggen/" in word)
        finally:
            await rt.close()

    return asyncio.run(main())


def _prepare(settings: Settings) -> tuple[str, str, str]:
    async def main() -> tuple[str, str, str]:
        rt = Runtime.create(settings)
        try:
            scheme = await make_scheme(rt)
            _voucher, code = await make_voucher(rt, scheme, company_name="Fietsenmaker Velp", email=HOLDER)
            provider, token = await make_provider(rt, scheme)
            email = await make_staff(rt, provider.id)
            return code, token, email
        finally:
            await rt.close()

    return asyncio.run(main())


def test_coach_redeems_on_a_phone(rt, live_server_factory) -> None:
    require_browser()
    code, token, email = _prepare(rt.settings)
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        # The camera opens the QR code's URL: not signed in, nothing about the holder.
        page.set_default_timeout(10_000)
        page.goto(f"{server.url}/v/{code}?lang=nl")  # Dutch first; the cookie keeps it
        assert "Fietsenmaker" not in page.content()
        assert_accessible(page, "coach/voucher-public-phone")
        page.get_by_role("link", name="Log in om deze voucher te controleren").click()
        assert_accessible(page, "coach/login-phone")
        page.get_by_label("E-mailadres").fill(email)
        page.get_by_label("Wachtwoord").fill(PASSWORD)
        page.get_by_role("button", name="Inloggen").click()
        # Back on the voucher, signed in.
        page.wait_for_url(f"**/v/{code}")
        assert "Fietsenmaker Velp" in page.content()
        assert_accessible(page, "coach/voucher-phone")
        page.get_by_label("Bedrag van de factuur").fill("125,50")
        page.get_by_label("Wat hebt u geleverd?").select_option("coaching")
        page.get_by_label("Factuurnummer of kenmerk").fill("F-2026-001")
        page.get_by_role("button", name="Vastleggen en betalen met voucher").click()
        page.wait_for_url("**done=*")
        assert page.locator("#balance").inner_text().replace("\u00a0", " ") == "€ 1.224,50"
        assert_accessible(page, "coach/voucher-done-phone")
        # A refusal is shown next to its field.
        page.get_by_label("Bedrag van de factuur").fill("9999")
        page.get_by_label("Wat hebt u geleverd?").select_option("coaching")
        page.get_by_label("Factuurnummer of kenmerk").fill("F-2026-002")
        page.get_by_role("button", name="Vastleggen en betalen met voucher").click()
        page.locator("#amount-error").wait_for()  # the POST answers with the form and the error
        assert_accessible(page, "coach/voucher-refused-phone")
        for path, name in [("/coach", "home"), ("/coach/redemptions", "redemptions"),
                           ("/coach/reservations", "reservations"), ("/coach/offers", "offers"),
                           ("/coach/statement", "statement"), ("/coach/settings", "settings"),
                           ("/coach/apply", "apply")]:
            page.goto(server.url + path)
            assert_accessible(page, f"coach/{name}-phone")
        # The settings form with its error, as a phone shows it.
        page.goto(server.url + "/coach/settings")
        page.get_by_label("Taal van de e-mails", exact=False).select_option("")
        page.get_by_role("button", name="Opslaan").click()
        page.locator("#locale-error").wait_for()
        assert_accessible(page, "coach/settings-refused-phone")
    balance = httpx.get(f"{server.url}/api/v1/vouchers/{code}", headers={"Authorization": f"Bearer {token}"})
    assert balance.json()["balance_cents"] == 135000 - 12550
    # The entrepreneur signs in with the mailed link and sees the same balance and the redemption.
    link = _sign_in_link(rt.settings).replace(rt.settings.base_url.rstrip("/"), server.url)
    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.goto(link + "?lang=nl")
        page.get_by_role("button", name="Inloggen").click()
        page.wait_for_url("**/mijn-voucher")
        text = page.inner_text("main").replace("\u00a0", " ")
        assert "€ 1.224,50" in text and "€ 125,50" in text
