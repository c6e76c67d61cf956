"""Redeem online: choose an offer, hold part of the balance, cancel or have it confirmed."""

from __future__ import annotations

import re

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from service import history, i18n, offers
from service.app import create_app
from service.db import run_in_transaction
from service.models import Hold, Voucher
from tests.coach_helpers import make_staff
from tests.coach_helpers import sign_in as coach_sign_in
from tests.entrepreneur_journey import body, deliver, post_form, sign_in_as
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher, reload


async def publish(rt, scheme, provider, **overrides):  # type: ignore[no-untyped-def]
    data = offers.OfferIn(**{"scheme": scheme.slug, "title": "Loopbaancoaching", "category": "coaching",
                             "price_cents": 500_00, "duration": "3 gesprekken van 1 uur", **overrides})
    return await run_in_transaction(rt.sessionmaker, lambda s: offers.publish_offer(s, provider.id, data))


async def test_reserve_cancel_and_confirm(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt, own_contribution_percent=10)
    voucher, _ = await make_voucher(rt, scheme, email="jan@example.org")
    provider, _ = await make_provider(rt, scheme, name="Coach & Co")
    offer = await publish(rt, scheme, provider)
    await deliver(rt, smtp_server)
    await sign_in_as(client, rt, smtp_server, "jan@example.org")

    listing = await client.get("/mijn-voucher/aanbod")
    assert listing.status_code == 200 and "Loopbaancoaching" in listing.text and "Coach &amp; Co" in listing.text
    detail = await client.get(f"/mijn-voucher/aanbod/{offer.id}")
    # The own contribution is shown before confirming: 10% of € 500 is € 50; the voucher pays € 450.
    assert "€\xa050,00" in detail.text and "€\xa0450,00" in detail.text and "Reserveer €\xa0450,00" in detail.text

    reserved = await post_form(client, f"/mijn-voucher/aanbod/{offer.id}")
    assert reserved.status_code == 303
    hold_path = reserved.headers["location"]
    page = await client.get(hold_path)
    assert "Wacht op de aanbieder" in page.text
    voucher = await reload(rt, Voucher, voucher.id)
    assert (voucher.balance_cents, voucher.held_cents) == (1_350_00 - 450_00, 450_00)
    mails = await deliver(rt, smtp_server)
    assert sorted(m["To"] for m in mails) == ["coach@example.org", "jan@example.org"]
    # The coach's mail leads to this reservation on the reservations page, where it can be confirmed.
    [coach_mail] = [m for m in mails if m["To"] == "coach@example.org"]
    hold_id = int(hold_path.rsplit("/", 1)[1])
    link = f"{rt.settings.base_url.rstrip('/')}/coach/reservations#hold-{hold_id}"
    assert link in body(coach_mail).split()
    await make_staff(rt, provider.id, "coach@example.org")
    async with AsyncTestClient(app=create_app(rt.settings), base_url="http://testserver.local") as coach:
        await coach_sign_in(coach, "coach@example.org")
        page = await coach.get(link.split("#")[0].removeprefix(rt.settings.base_url.rstrip("/")))
        assert f'id="hold-{hold_id}"' in page.text and f"/coach/reservations/{hold_id}/confirm" in page.text

    cancelled = await post_form(client, hold_path, f"{hold_path}/annuleren")
    assert cancelled.status_code == 303
    assert "U heeft uw reservering geannuleerd" in (await client.get(hold_path)).text
    voucher = await reload(rt, Voucher, voucher.id)
    assert (voucher.balance_cents, voucher.held_cents) == (1_350_00, 0)
    mails = await deliver(rt, smtp_server)
    assert sorted(m["To"] for m in mails) == ["coach@example.org", "jan@example.org"]
    # A released reservation cannot be cancelled twice.
    assert (await post_form(client, "/mijn-voucher", f"{hold_path}/annuleren")).status_code == 422

    second = await post_form(client, f"/mijn-voucher/aanbod/{offer.id}")
    hold_id = int(second.headers["location"].rsplit("/", 1)[1])
    await run_in_transaction(rt.sessionmaker, lambda s: offers.confirm_reservation(
        s, rt, hold_id, provider_id=provider.id, recorded_by="test"))
    assert "Bevestigd" in (await client.get(second.headers["location"])).text
    history = (await client.get("/mijn-voucher")).text
    assert "Gebruikt" in history and "Reservering door u geannuleerd" in history
    mails = await deliver(rt, smtp_server)
    entrepreneur_mail = [m for m in mails if m["To"] == "jan@example.org"]
    assert entrepreneur_mail and "€\xa0450,00" in body(entrepreneur_mail[-1])


async def test_nobody_else_can_see_or_cancel_a_reservation(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email="jan@example.org")
    await make_voucher(rt, scheme, email="piet@example.org")
    provider, _ = await make_provider(rt, scheme)
    offer = await publish(rt, scheme, provider)
    await deliver(rt, smtp_server)
    await sign_in_as(client, rt, smtp_server, "jan@example.org")
    hold_path = (await post_form(client, f"/mijn-voucher/aanbod/{offer.id}")).headers["location"]

    async with AsyncTestClient(app=create_app(rt.settings), base_url="http://testserver.local") as other:
        assert (await other.get(hold_path)).status_code == 401
        await sign_in_as(other, rt, smtp_server, "piet@example.org")
        assert (await other.get(hold_path)).status_code == 404
        assert (await post_form(other, "/mijn-voucher", f"{hold_path}/annuleren")).status_code == 404
    async with rt.sessionmaker() as session:
        assert (await session.scalar(select(Hold.status))) == "open"


async def test_hidden_offer_cannot_be_reserved(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email="jan@example.org")
    provider, _ = await make_provider(rt, scheme)
    offer = await publish(rt, scheme, provider)
    await run_in_transaction(rt.sessionmaker, lambda s: offers.hide_offer(s, offer.id, by="municipality", reason="x"))
    await deliver(rt, smtp_server)
    await sign_in_as(client, rt, smtp_server, "jan@example.org")
    assert (await client.get(f"/mijn-voucher/aanbod/{offer.id}")).status_code == 404
    assert (await post_form(client, "/mijn-voucher", f"/mijn-voucher/aanbod/{offer.id}")).status_code == 404


def history_rows(html: str) -> list[str]:
    table = html.split("Wat er met uw voucher is gebeurd")[2].split("</tbody>")[0]
    return [row.split("</tr>")[0] for row in table.split("<tr>")[2:]]


async def test_a_confirmed_reservation_is_one_row_and_the_rows_add_up(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt, own_contribution_percent=10)
    voucher, _ = await make_voucher(rt, scheme, email="jan@example.org")
    provider, _ = await make_provider(rt, scheme, name="Coach & Co")
    offer = await publish(rt, scheme, provider)
    await sign_in_as(client, rt, smtp_server, "jan@example.org")
    reserved = await post_form(client, f"/mijn-voucher/aanbod/{offer.id}")
    hold_id = int(reserved.headers["location"].rsplit("/", 1)[1])
    await run_in_transaction(rt.sessionmaker, lambda s: offers.confirm_reservation(
        s, rt, hold_id, provider_id=provider.id, recorded_by="test"))
    # A second reservation, cancelled: two rows (money out, money back).
    second = await post_form(client, f"/mijn-voucher/aanbod/{offer.id}")
    await post_form(client, second.headers["location"], f"{second.headers['location']}/annuleren")

    page = (await client.get("/mijn-voucher")).text
    rows = history_rows(page)
    assert len(rows) == 4  # received, used, reserved, cancelled
    confirmed = [row for row in rows if "bevestigd" in row]
    assert len(confirmed) == 1 and "-450,00" in confirmed[0].replace("\xa0", "")
    assert sum("450,00" in row for row in rows) == 3

    async with rt.sessionmaker() as session:
        rows_from_ledger = await history.voucher_history(session, voucher.id)
    voucher = await reload(rt, Voucher, voucher.id)
    assert sum(row.amount_cents for row in rows_from_ledger) == voucher.balance_cents == 900_00
    assert [row.kind for row in rows_from_ledger] == ["issued", "reserved", "reserved", "released"]
    api = await client.get(f"/api/v1/admin/vouchers/{voucher.id}/history", headers=bearer(await admin_token(rt)))
    assert api.status_code == 200
    assert [(r["kind"], r["amount_cents"]) for r in api.json()] == [
        ("issued", 1_350_00), ("reserved", -450_00), ("reserved", -450_00), ("released", 450_00)]


async def test_reservation_mails_say_reserved_and_use_the_readers_dates(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt, own_contribution_percent=10)
    await make_voucher(rt, scheme, email="jan@example.org")
    provider, _ = await make_provider(rt, scheme, name="Coach & Co")
    offer = await publish(rt, scheme, provider)
    await sign_in_as(client, rt, smtp_server, "jan@example.org")
    detail = (await client.get(f"/mijn-voucher/aanbod/{offer.id}")).text
    assert "laten wij Coach &amp; Co weten" in detail
    reserved = await post_form(client, f"/mijn-voucher/aanbod/{offer.id}")
    page = (await client.get(reserved.headers["location"])).text
    assert "Wij hebben Coach &amp; Co laten weten" in page and "het Coach" not in page
    assert "Gereserveerd op uw voucher" in page
    hold = await reload(rt, Hold, int(reserved.headers["location"].rsplit("/", 1)[1]))
    with i18n.use_locale("nl"):
        day = i18n.format_day(hold.expires_at)
    mails = {m["To"]: body(m) for m in await deliver(rt, smtp_server)}
    mine = mails["jan@example.org"]
    assert "Gereserveerd op uw voucher: €\xa0450,00." in mine and "Betaald" not in mine
    assert f"niet voor {day}?" in mine
    assert f"vóór {day}" in mails["coach@example.org"]
    for text in mails.values():
        assert not re.search(r"\d{4}-\d{2}-\d{2}", text)
