"""One rule for a voucher's end date: usable up to and including a day in Dutch time, stored as
the next day's 00:00 there, and shown as that day by every page, mail and API."""

from __future__ import annotations

import datetime as dt
import re

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from service import i18n, outbox, privacy, validity
from service.app import create_app
from service.models import OutboxMessage, Voucher
from tests.admin_helpers import staff_client_sign_in
from tests.entrepreneur_journey import body, deliver, sign_in_as
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher, reload

LAST = dt.date(2027, 12, 31)


def test_the_stored_end_is_the_next_midnight_in_amsterdam() -> None:
    winter = validity.end_after(LAST)
    assert winter == dt.datetime(2027, 12, 31, 23, 0, tzinfo=dt.UTC)
    assert validity.last_day(winter) == LAST
    summer = validity.end_after(dt.date(2027, 6, 30))
    assert summer == dt.datetime(2027, 6, 30, 22, 0, tzinfo=dt.UTC)
    assert validity.last_day(summer) == dt.date(2027, 6, 30)
    # Issued late in the evening Dutch time (already the next day in Amsterdam): days count from there.
    issued = dt.datetime(2027, 3, 1, 23, 30, tzinfo=dt.UTC)
    assert validity.last_day(validity.issued_expiry(issued, 90)) == dt.date(2027, 3, 2) + dt.timedelta(days=90)
    with i18n.use_locale("nl"):
        assert i18n.format_last_day(winter) == "31 december 2027"
        assert i18n.format_last_day(winter.isoformat()) == "31 december 2027"
        assert i18n.format_day("2027-12-31") == "31 december 2027"
    with i18n.use_locale("en"):
        assert i18n.format_last_day(winter) == "31 December 2027"


async def test_an_extension_shows_the_same_last_day_everywhere(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, email="jan@example.org")
    _provider, coach_token = await make_provider(rt, scheme)
    issued = await reload(rt, Voucher, voucher.id)
    assert issued.expires_at.astimezone(validity.ZONE).time() == dt.time()

    extended = await client.post(f"/api/v1/admin/vouchers/{voucher.id}/extension",
                                 json={"until": LAST.isoformat(), "reason": "ziekte"},
                                 headers={**bearer(await admin_token(rt)), "Idempotency-Key": "extend-1"})
    assert extended.status_code == 200, extended.text
    assert extended.json()["valid_until"] == "2027-12-31"
    assert dt.datetime.fromisoformat(extended.json()["expires_at"]) == validity.end_after(LAST)

    scanned = await client.get(f"/api/v1/vouchers/{code}", headers=bearer(coach_token))
    assert scanned.json()["valid_until"] == "2027-12-31"

    async with rt.sessionmaker() as session:
        (message,) = await session.scalars(select(OutboxMessage).where(
            OutboxMessage.template == "admin_voucher_extended"))
        _subject, text = await outbox.render(session, rt, message)
    assert "tot en met 31 december 2027" in text

    await deliver(rt, smtp_server)
    async with AsyncTestClient(app=create_app(rt.settings), base_url="http://testserver.local") as holder:
        await sign_in_as(holder, rt, smtp_server, "jan@example.org")
        mine = (await holder.get("/mijn-voucher")).text
        assert "Geldig tot en met" in mine and "31 december 2027" in mine and "januari 2028" not in mine

    async with rt.sessionmaker() as session:
        exported = await privacy.export_subject(session, rt, issued.kvk_number)
    assert [v["valid_until"] for v in exported["as_applicant"]["vouchers"]] == [LAST]

    await staff_client_sign_in(client, rt, "beheerder")
    staff_page = (await client.get(f"/beheer/vouchers/{voucher.id}")).text
    assert "31 december 2027" in staff_page and "2028" not in staff_page


async def test_the_issued_mail_names_the_last_day_in_the_readers_language(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme, email="jan@example.org")
    fresh = await reload(rt, Voucher, voucher.id)
    (issued,) = [m for m in await deliver(rt, smtp_server) if "Uw vouchercode" in body(m)]
    with i18n.use_locale("nl"):
        assert f"tot en met {i18n.format_last_day(fresh.expires_at)}." in body(issued)
    assert not re.search(r"\d{4}-\d{2}-\d{2}", body(issued))


async def test_mails_write_dates_in_the_readers_language(rt) -> None:
    closes = dt.datetime(2027, 12, 31, 16, 0, tzinfo=dt.UTC)
    texts = {}
    async with rt.sessionmaker() as session:
        for locale in ("nl", "en"):
            message = OutboxMessage(**outbox.message_values(
                "jan@example.org", "application_entered", locale,
                {"contact_name": "Jan", "application_id": "A1", "scheme_name": "Test", "closes_at": closes.isoformat()}))
            texts[locale] = (await outbox.render(session, rt, message))[1]
    assert "31 december 2027" in texts["nl"] and "31 December 2027" in texts["en"]
    assert not any(re.search(r"\d{4}-\d{2}-\d{2}", text) for text in texts.values())
