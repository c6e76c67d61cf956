"""A provider joins from the web: signs up, confirms the contact's address, is approved or refused
by staff on /beheer/aanbieders, sets a password from a mailed one-time link, invites and removes
colleagues, and resets a forgotten password (which ends the sessions that were open)."""

from __future__ import annotations

from service import staff
from service.db import run_in_transaction
from tests.admin_helpers import staff_client_sign_in
from tests.helpers import make_scheme


async def test_waiting_provider_is_listed_for_staff(client, rt) -> None:
    await make_scheme(rt)
    await run_in_transaction(rt.sessionmaker, lambda s: staff.apply(s, staff.ProviderApplication(
        scheme="test-scheme", name="Wachtende Coach", kvk_number="87654321", email="wacht@coach.example",
        iban="NL91ABNA0417164300", categories=["coaching", "financial_advice"])))
    await staff_client_sign_in(client, rt, "beoordelaar")
    page = await client.get("/beheer/aanbieders")
    assert page.status_code == 200, page.text
    assert "Wachtende Coach" in page.text and "Coaching" in page.text and "Financieel advies" in page.text
