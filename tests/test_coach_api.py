"""API for providers: applying, offers (and the municipality hiding one), reservations answered
with mail to both sides, statements, flagged redemptions."""

from __future__ import annotations

from sqlalchemy import select

from service import offers, vouchers
from service.check import reconcile
from service.db import run_in_transaction
from service.models import OutboxMessage, Voucher
from tests.helpers import admin_token, bearer, confirm_providers, make_provider, make_scheme, make_voucher


async def test_provider_applies_and_is_approved(client, rt) -> None:
    await make_scheme(rt)
    body = {"scheme": "test-scheme", "name": "Leer & Groei", "kvk_number": "87654321", "email": "info@leer.nl",
            "iban": "NL91 ABNA 0417 1643 00", "categories": ["coaching"], "website": "https://leer.nl"}
    r = await client.post("/api/v1/provider-applications", json={**body, "iban": "NL00 ABNA 0000 0000 00"})
    assert r.status_code == 422 and r.json()["code"] == "iban-invalid"
    r = await client.post("/api/v1/provider-applications", json={**body, "kvk_number": "123"})
    assert r.status_code == 400
    r = await client.post("/api/v1/provider-applications", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending"
    enrolment_id = r.json()["enrolment_id"]
    r = await client.post("/api/v1/provider-applications", json=body)
    assert r.status_code == 409
    admin = await admin_token(rt)
    r = await client.post(f"/api/v1/admin/enrolments/{enrolment_id}/approval", headers=bearer(admin))
    assert r.status_code == 422 and r.json()["code"] == "provider-unconfirmed"
    await confirm_providers(rt)
    r = await client.post(f"/api/v1/admin/enrolments/{enrolment_id}/approval", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["status"] == "approved"


async def test_offers_holds_statement_and_flags(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    provider, token = await make_provider(rt, scheme, categories=["coaching"])
    offer = {"scheme": "test-scheme", "title": "Startgesprek", "category": "coaching", "price_cents": 45000,
             "duration": "3 sessies"}
    r = await client.post("/api/v1/provider/offers", headers=bearer(token), json={**offer, "category": "retraining"})
    assert r.status_code == 403 and r.json()["code"] == "category-not-allowed"
    r = await client.post("/api/v1/provider/offers", headers=bearer(token), json=offer)
    assert r.status_code == 201, r.text
    offer_id = r.json()["offer_id"]
    assert [o["title"] for o in (await client.get("/api/v1/offers?scheme=test-scheme")).json()] == ["Startgesprek"]
    admin = await admin_token(rt)
    r = await client.post(f"/api/v1/admin/offers/{offer_id}/hidden", headers=bearer(admin),
                          json={"reason": "misleading"})
    assert r.status_code == 200 and r.json()["hidden"] is True
    assert (await client.get("/api/v1/offers")).json() == []
    r = await client.post(f"/api/v1/admin/offers/{offer_id}/hidden", headers=bearer(token), json={"reason": "x" * 5})
    assert r.status_code == 403

    # Two reservations: one confirmed, one declined; both sides are mailed.
    async def hold(session):  # type: ignore[no-untyped-def]
        v = await session.get_one(Voucher, voucher.id)
        return (await vouchers.create_hold(session, rt, v, provider_id=provider.id, category="coaching",
                                           invoice_cents=200_00, reference="H", created_by="entrepreneur")).id

    h1 = await run_in_transaction(rt.sessionmaker, hold)
    h2 = await run_in_transaction(rt.sessionmaker, hold)
    listed = (await client.get("/api/v1/provider/holds", headers=bearer(token))).json()
    assert {h["hold_id"] for h in listed} == {h1, h2}
    await run_in_transaction(rt.sessionmaker, lambda s: offers.confirm_reservation(
        s, rt, h1, provider_id=provider.id, recorded_by="test"))
    await run_in_transaction(rt.sessionmaker, lambda s: offers.decline_reservation(s, h2, provider_id=provider.id))
    async with rt.sessionmaker() as session:
        templates = [m.template for m in await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
        assert {"redemption_recorded", "reservation_confirmed", "hold_released", "reservation_declined"} <= set(templates)
        assert await reconcile(session) == []
    assert (await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))).json()["balance_cents"] == 115000

    st = (await client.get("/api/v1/provider/statement", headers=bearer(token))).json()
    assert st["net_cents"] == 200_00 and st["totals"][0]["category"] == "coaching"
    assert (await client.get("/api/v1/provider/statement?month=2026-13", headers=bearer(token))).status_code == 422
    assert (await client.get("/api/v1/provider/statement")).status_code == 401

    flagged = (await client.get("/api/v1/admin/redemptions/flagged", headers=bearer(admin))).json()
    assert flagged == []
