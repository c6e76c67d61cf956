"""A voucher that can no longer be used says so on "my voucher": status, reason, date and how to
object, and shows neither its code nor its QR code (whose routes refuse)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from service import vouchers
from service import interventions
from service.db import run_in_transaction
from service.models import Voucher, utcnow
from tests.entrepreneur_journey import sign_in_as
from tests.helpers import make_provider, make_scheme, make_voucher

QR = ("/mijn-voucher/qr.svg", "/mijn-voucher/qr.png?download=1")


async def _ended(client, rt, smtp_server, how: str):  # type: ignore[no-untyped-def]
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, email="jan@example.org")
    await sign_in_as(client, rt, smtp_server, "jan@example.org")
    before = (await client.get("/mijn-voucher")).text
    assert code in before and "qr.svg" in before
    for path in QR:
        assert (await client.get(path)).status_code == 200
    if how == "revoked":
        await run_in_transaction(rt.sessionmaker, lambda s: interventions.revoke(
            s, rt, voucher.id, reason="De KvK-inschrijving klopt niet"))
    elif how == "expired":
        async with rt.sessionmaker() as session, session.begin():
            await session.execute(update(Voucher).where(Voucher.id == voucher.id).values(
                expires_at=utcnow() - dt.timedelta(days=2)))
    else:
        provider, _ = await make_provider(rt, scheme)

        async def spend(session):  # type: ignore[no-untyped-def]
            fresh = await session.get_one(Voucher, voucher.id)
            await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name="Coach",
                                  category="coaching", invoice_cents=fresh.balance_cents, reference="F-1",
                                  session_date=None, recorded_by="test")

        await run_in_transaction(rt.sessionmaker, spend)
    return code


@pytest.mark.parametrize("how", ["revoked", "expired", "used_up"])
async def test_an_ended_voucher_shows_why_and_no_code(client, rt, smtp_server, how: str) -> None:
    code = await _ended(client, rt, smtp_server, how)
    page = (await client.get("/mijn-voucher")).text
    assert code not in page and "qr.svg" not in page and "qr.png" not in page
    assert "Zo gebruikt u uw voucher" not in page and "Uw voucher kan gebruikt worden" not in page
    assert "bezwaar maken" in page
    today = utcnow().astimezone(dt.UTC)
    if how == "revoked":
        assert "Uw voucher is ingetrokken" in page and "De KvK-inschrijving klopt niet" in page
    elif how == "expired":
        assert "Uw voucher is verlopen" in page
    else:
        assert "Uw voucher is helemaal gebruikt" in page
    assert str(today.year) in page.split("bezwaar maken")[0]
    for path in QR:
        assert (await client.get(path)).status_code == 422
    printable = (await client.get("/mijn-voucher/afdrukken")).text
    assert code not in printable and "qr.svg" not in printable and "bezwaar maken" in printable
