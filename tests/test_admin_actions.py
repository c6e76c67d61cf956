"""The municipality's decisions and interventions through the pages: each goes through the domain
functions, leaves a ledger entry, mails whom it concerns, and is in the audit log by name."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select

from service import audit, outbox, staff
from service.check import reconcile
from service.db import run_in_transaction
from service.models import Application, AuditEntry, Enrolment, LedgerEntry, OutboxMessage, Scheme, Voucher, utcnow
from tests.admin_helpers import post_form, staff_client_sign_in
from tests.helpers import applicant, confirm_providers, make_scheme, make_voucher


async def _mails(rt, template):  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(OutboxMessage).where(OutboxMessage.template == template)))


async def test_interventions_on_a_voucher_and_a_scheme(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme, company_name="Drukkerij Rijn")
    await staff_client_sign_in(client, rt, "beheerder")
    page = await client.get(f"/beheer/vouchers/{voucher.id}")
    assert "Drukkerij Rijn" in page.text
    # Extend: a later date, with a reason; an earlier one is refused next to the field.
    until = (utcnow() + dt.timedelta(days=200)).date()
    r = await post_form(client, f"/beheer/vouchers/{voucher.id}/verlengen",
                        {"until": "2000-01-01", "reason": "ziekte"})
    assert r.status_code == 422 and 'id="extend_until-error"' in r.text
    r = await post_form(client, f"/beheer/vouchers/{voucher.id}/verlengen",
                        {"until": until.isoformat(), "reason": "ziekte"}, follow_redirects=False)
    assert r.status_code == 303
    # Revoke needs a reason.
    r = await post_form(client, f"/beheer/vouchers/{voucher.id}/intrekken", {"reason": ""})
    assert r.status_code == 422 and 'id="revoke_reason-error"' in r.text
    r = await post_form(client, f"/beheer/vouchers/{voucher.id}/intrekken", {"reason": "fraude", "confirm": "yes"},
                        follow_redirects=False)
    assert r.status_code == 303
    # Money to the reserve and back, then close the scheme.
    r = await post_form(client, "/beheer/regelingen/test-scheme/reserve",
                        {"amount": "1.000", "direction": "to_reserve", "memo": "buffer", "confirm": "yes"},
                        follow_redirects=False)
    assert r.status_code == 303
    r = await post_form(client, "/beheer/regelingen/test-scheme/sluiten", {"reason": "budget op", "confirm": "yes"},
                        follow_redirects=False)
    assert r.status_code == 303
    async with rt.sessionmaker() as session:
        fresh = await session.get_one(Voucher, voucher.id)
        assert fresh.status == "revoked" and fresh.expires_at.date() >= until
        the_scheme = await session.get_one(Scheme, scheme.id)
        assert the_scheme.closed_at is not None and the_scheme.reserve_cents == 100000
        kinds = [e.kind for e in await session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]
        assert kinds[-4:] == ["extend", "revoked", "reserve", "close"]
        assert await reconcile(session) == []
        assert (await audit.verify(session)).ok
        by_staff = list(await session.scalars(select(AuditEntry).where(AuditEntry.actor.like("staff:%"),
                                                                      AuditEntry.table_name == "voucher")))
        assert by_staff and all(e.address for e in by_staff)
    assert await _mails(rt, "admin_voucher_extended") and await _mails(rt, "voucher_revoked")
    assert await outbox.send_due(rt) >= 2
    assert any("verlengd" in m.get_payload(decode=True).decode() for m in smtp_server.messages)


async def test_work_queues_decide_applications_and_providers(client, rt) -> None:
    scheme = await make_scheme(rt)
    from service import applications

    async def pending(session):  # type: ignore[no-untyped-def]
        fresh = await session.get_one(Scheme, scheme.id)
        one = await applications.submit(session, fresh, applicant(company_name="Wacht BV"))
        two = await applications.submit(session, fresh, applicant(company_name="Twijfel BV"))
        one.status = two.status = "registry_pending"
        enrolment = await staff.apply(session, staff.ProviderApplication(
            scheme="test-scheme", name="Nieuwe Coach", kvk_number="87654321", email="nieuw@coach.example",
            iban="NL91ABNA0417164300", categories=["coaching"]))
        return one.id, two.id, enrolment.id

    one, two, enrolment_id = await run_in_transaction(rt.sessionmaker, pending)
    await confirm_providers(rt)
    await staff_client_sign_in(client, rt, "beoordelaar")
    page = await client.get("/beheer/aanvragen")
    assert "Wacht BV" in page.text and "Twijfel BV" in page.text
    r = await post_form(client, f"/beheer/aanvragen/{two}/besluit", {"decision": "refuse", "reason": ""})
    assert r.status_code == 422 and f'id="reason-{two}-error"' in r.text
    assert (await post_form(client, f"/beheer/aanvragen/{one}/besluit", {"decision": "approve", "reason": "", "confirm": "yes"},
                            follow_redirects=False)).status_code == 303
    assert (await post_form(client, f"/beheer/aanvragen/{two}/besluit",
                            {"decision": "refuse", "reason": "Geen bedrijf in Arnhem", "confirm": "yes"},
                            follow_redirects=False)).status_code == 303
    r = await post_form(client, f"/beheer/aanbieders/{enrolment_id}/besluit",
                        {"decision": "approve", "reason": "", "confirm": "yes"}, follow_redirects=False)
    assert r.status_code == 303
    async with rt.sessionmaker() as session:
        assert (await session.get_one(Application, one)).status == "granted"
        refused = await session.get_one(Application, two)
        assert refused.status == "rejected" and refused.reasons == ["Geen bedrijf in Arnhem"]
        assert (await session.get_one(Enrolment, enrolment_id)).status == "approved"
    assert await _mails(rt, "voucher_issued") and await _mails(rt, "application_rejected")
    assert await _mails(rt, "admin_enrolment_decided")
    # Decided once only.
    r = await post_form(client, f"/beheer/aanvragen/{one}/besluit", {"decision": "approve", "reason": ""})
    assert r.status_code == 422


async def test_dashboard_and_report_in_both_languages_without_personal_data(client, rt) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, company_name="Geheim Atelier")
    await staff_client_sign_in(client, rt, "financieel")
    nl = await client.get("/beheer/regelingen/test-scheme")
    assert "Geld en plaatsen" in nl.text and "<svg" in nl.text and 'role="img"' in nl.text and "<script" not in nl.text
    en = await client.get("/beheer/regelingen/test-scheme?lang=en")
    assert "Money and places" in en.text
    report = await client.get("/beheer/rapportage/test-scheme")
    csv = await client.get("/beheer/rapportage/test-scheme/csv")
    assert csv.headers["content-type"].startswith("text/csv") and "vouchers_issued" in csv.text
    for text in (nl.text, report.text, csv.text):
        assert "Geheim Atelier" not in text and "example.org" not in text


async def _apply(rt, scheme, **overrides) -> None:  # type: ignore[no-untyped-def]
    from service import applications

    details = applicant(**overrides)

    async def work(session):  # type: ignore[no-untyped-def]
        fresh = await session.get_one(Scheme, scheme.id)
        application = await applications.submit(session, fresh, details)
        await applications.decide(session, rt, fresh, application, employees=details.employees,
                                  postcode=details.postcode)

    await run_in_transaction(rt.sessionmaker, work)


async def test_council_report_has_money_places_applications_and_refusals_in_the_readers_language(client, rt) -> None:
    scheme = await make_scheme(rt, max_places=1, budget_cents=2_000_00)
    await make_voucher(rt, scheme)
    await _apply(rt, scheme)  # no place left: waiting list
    await _apply(rt, scheme, employees=50)
    await _apply(rt, scheme, employees=50, postcode="1011 AB")
    await staff_client_sign_in(client, rt, "financieel")

    nl = (await client.get("/beheer/rapportage/test-scheme?lang=nl")).text
    assert "Testregeling" in nl
    # Dutch numbers: 0 of 1 voucher used in full is "0 (0,0%)".
    assert "0 (0,0%)" in nl and "0.0%" not in nl
    for label, figure in (("Vastgelegd in vouchers", "€\xa01.350,00"), ("Nog uit te geven", "€\xa0650,00"),
                          ("Op de wachtlijst", "1"), ("Aanvragen ontvangen", "4"),
                          ("Er werken te veel mensen bij het bedrijf", "2"), ("Niet gevestigd in het gebied", "1")):
        assert re.search(rf"{re.escape(label)}</(dt|th)>\s*<(dd|td)[^>]*>{re.escape(figure)}</", nl), label

    en = (await client.get("/beheer/rapportage/test-scheme?lang=en")).text
    assert "Test scheme" in en and "Testregeling" not in en
    assert "0 (0.0%)" in en and "Too many people work at the firm" in en

    for url in ("/beheer/rapportage/test-scheme/csv", "/beheer/rapportage/test-scheme/csv?lang=en"):
        csv = await client.get(url)
        assert csv.headers["content-type"] == "text/csv; charset=utf-8"
        assert csv.content.startswith(b"\xef\xbb\xbf")
        lines = csv.content.decode("utf-8-sig").split("\r\n")
        assert "totals;committed;1350,00;" in lines and "totals;left;650,00;" in lines
        assert "totals;waiting_list;;1" in lines and "totals;used_in_full_percent;;0,0" in lines
        assert "refusal_reason;too-many-employees;;2" in lines and "refusal_reason;outside-area;;1" in lines


async def test_voucher_detail_names_the_scheme_in_english_for_english_readers(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme)
    await staff_client_sign_in(client, rt, "beheerder")
    en = (await client.get(f"/beheer/vouchers/{voucher.id}?lang=en")).text
    assert "<dd>Test scheme</dd>" in en and "Testregeling" not in en
    assert "<dd>Testregeling</dd>" in (await client.get(f"/beheer/vouchers/{voucher.id}?lang=nl")).text
