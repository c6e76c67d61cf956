"""Municipality staff in a browser: sign in with password and TOTP code, read the dashboard
(SVG charts and tables), revoke a voucher; axe-core finds no WCAG 2.1 A/AA violation."""

from __future__ import annotations

import asyncio
import time

import pyotp
import pytest

from service import vouchers
from service.db import run_in_transaction
from service.models import Voucher
from service.runtime import Runtime
from service.settings import Settings
from tests.admin_helpers import PASSWORD, make_staff
from tests.browser import DESKTOP, assert_accessible, chromium, guarded_page, require_browser
from tests.helpers import make_provider, make_scheme, make_voucher, reload

pytestmark = pytest.mark.browser


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _prepare(settings: Settings) -> tuple[str, str, int]:
    async def main() -> tuple[str, str, int]:
        rt = Runtime.create(settings)
        try:
            scheme = await make_scheme(rt)
            voucher, _ = await make_voucher(rt, scheme, company_name="Schilder Oosterbeek")
            await make_voucher(rt, scheme, company_name="Bureau Presikhaaf")
            provider, _token = await make_provider(rt, scheme)

            async def redeem(session):  # type: ignore[no-untyped-def]
                fresh = await session.get_one(Voucher, voucher.id)
                await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name=provider.name,
                                      category="coaching", invoice_cents=40000, reference="F-1",
                                      session_date=None, recorded_by="test")

            await run_in_transaction(rt.sessionmaker, redeem)
            email, secret = await make_staff(rt, "beheerder")
            return email, secret, voucher.id
        finally:
            await rt.close()

    return asyncio.run(main())


def test_dashboard_and_revoking_a_voucher(rt, live_server_factory) -> None:
    require_browser()
    email, secret, voucher_id = _prepare(rt.settings)
    server = live_server_factory()
    with chromium() as context, guarded_page(context, viewport=DESKTOP) as page:
        page.set_default_timeout(10_000)
        page.goto(f"{server.url}/beheer?lang=nl")
        page.wait_for_url("**/beheer/inloggen**")
        assert_accessible(page, "admin/login")
        page.get_by_label("E-mailadres").fill(email)
        page.get_by_label("Wachtwoord").fill(PASSWORD)
        page.get_by_role("button", name="Volgende").click()
        page.wait_for_url("**/beheer/inloggen/code")
        assert_accessible(page, "admin/code")
        page.get_by_label("Code van 6 cijfers").fill(pyotp.TOTP(secret).at(time.time() + 30))
        page.get_by_role("button", name="Inloggen").click()
        page.wait_for_url("**/beheer")
        assert_accessible(page, "admin/home")
        page.get_by_role("link", name="Testregeling").click()
        page.wait_for_url("**/beheer/regelingen/test-scheme")
        assert page.locator("svg.chart").count() == 3
        assert "400,00" in page.content()
        assert_accessible(page, "admin/dashboard")
        page.goto(f"{server.url}/beheer/vouchers/{voucher_id}")
        assert "Schilder Oosterbeek" in page.content()
        assert_accessible(page, "admin/voucher")
        page.get_by_role("button", name="Intrekken").click()  # no reason: refused next to the field
        page.locator("#revoke_reason-error").wait_for()
        assert_accessible(page, "admin/voucher-refused")
        page.locator("#revoke_reason").fill("Bedrijf bestaat niet meer")
        page.get_by_role("button", name="Intrekken").click()
        # First what it will do, then only the confirm button does it.
        page.get_by_role("heading", name="Voucher intrekken?").wait_for()
        assert "gaat terug naar het budget" in page.content()
        assert_accessible(page, "admin/voucher-revoke-confirm")
        page.get_by_role("button", name="Ja, voucher intrekken").click()
        page.wait_for_url("**gedaan=revoked")
        assert "De voucher is ingetrokken" in page.content()
        assert_accessible(page, "admin/voucher-revoked")
        page.goto(f"{server.url}/beheer/audit")
        assert_accessible(page, "admin/audit")
        page.goto(f"{server.url}/beheer/rapportage/test-scheme?lang=en")
        assert "Report for the council" in page.content()
        assert_accessible(page, "admin/report-en")
    assert asyncio.run(_status(rt.settings, voucher_id)) == "revoked"


async def _status(settings: Settings, voucher_id: int) -> str:
    rt = Runtime.create(settings)
    try:
        return (await reload(rt, Voucher, voucher_id)).status
    finally:
        await rt.close()
