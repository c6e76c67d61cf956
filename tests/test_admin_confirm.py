"""Actions that cannot be undone take two steps: the form's POST answers with what will happen
(amounts, who is affected), computed by the domain's preview functions, and only the same form
sent again with confirm=yes does it. Input mistakes are shown on the form before anything is asked."""

from __future__ import annotations

import re
from html import unescape

from sqlalchemy import select

from service import applications, staff, vouchers
from service.db import run_in_transaction
from service.models import Application, Enrolment, LedgerEntry, Redemption, Scheme, Voucher
from tests.admin_helpers import post_form, staff_client_sign_in
from tests.helpers import applicant, confirm_providers, make_provider, make_scheme, make_voucher, reload


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).replace("\u00a0", " ")


def _hidden(html: str) -> dict[str, str]:
    form = html[html.index('class="confirm-form"'):]
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))


async def _ledger_size(rt) -> int:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        return len(list(await session.scalars(select(LedgerEntry.id))))


async def _confirm(client, rt, path: str, form: dict[str, str], *expected: str):  # type: ignore[no-untyped-def]
    """The first POST changes nothing and states ``expected``; its confirm form does the action."""
    before = await _ledger_size(rt)
    r = await post_form(client, path, form, follow_redirects=False)
    assert r.status_code == 200, r.text[:500]
    text = _text(r.text)
    for words in expected:
        assert words in text, (words, text)
    assert "Dit kan niet ongedaan worden gemaakt" in text or "reserve" in path
    assert await _ledger_size(rt) == before
    hidden = _hidden(r.text)
    assert hidden["confirm"] == "yes" and {k: hidden[k] for k in form} == form
    assert f'action="{path}"' in r.text and "Nee, ga terug" in text
    done = await post_form(client, path, {k: v for k, v in hidden.items() if k != "_csrf_token"},
                           follow_redirects=False)
    assert done.status_code == 303, done.text[:500]
    return done


async def test_revoke_reverse_move_and_close_are_confirmed_first(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme, company_name="Drukkerij Rijn")
    other, _ = await make_voucher(rt, scheme, company_name="Bakkerij Zon")
    provider, _token = await make_provider(rt, scheme, name="Coach & Co")

    async def redeem(session):  # type: ignore[no-untyped-def]
        fresh = await session.get_one(Voucher, other.id)
        return (await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name=provider.name,
                                      category="coaching", invoice_cents=40000, reference="F-9",
                                      session_date=None, recorded_by="test")).id

    await run_in_transaction(rt.sessionmaker, redeem)
    async with rt.sessionmaker() as session:
        redemption_id = await session.scalar(select(Redemption.id))
    await staff_client_sign_in(client, rt, "beheerder")
    # A mistake is shown on the form, before any question.
    r = await post_form(client, f"/beheer/vouchers/{voucher.id}/intrekken", {"reason": ""})
    assert r.status_code == 422 and 'id="revoke_reason-error"' in r.text
    assert '<a href="#revoke_reason">' in r.text  # the summary at the top links to the field
    r = await post_form(client, f"/beheer/verzilveringen/{redemption_id}/terugdraaien", {"reason": ""})
    assert r.status_code == 422 and f'<a href="#reverse_reason-{redemption_id}">' in r.text
    assert f'id="reverse_reason-{redemption_id}-error"' in r.text
    await _confirm(client, rt, f"/beheer/vouchers/{voucher.id}/intrekken", {"reason": "fraude"},
                   "Voucher intrekken?", f"Voucher {voucher.id} van Drukkerij Rijn",
                   "€ 1.350,00 gaat terug naar het budget", "de plaats komt ook weer vrij",
                   "De ondernemer krijgt een e-mail met de reden", "Reden: fraude")
    assert (await reload(rt, Voucher, voucher.id)).status == "revoked"
    await _confirm(client, rt, f"/beheer/verzilveringen/{redemption_id}/terugdraaien", {"reason": "dubbel"},
                   "€ 400,00 die Coach & Co op", "(kenmerk F-9)", "voucher van Bakkerij Zon: het saldo wordt € 1.350,00",
                   "De aanbieder krijgt een e-mail")
    assert (await reload(rt, Voucher, other.id)).balance_cents == 135000
    await _confirm(client, rt, "/beheer/regelingen/test-scheme/reserve",
                   {"amount": "1.000", "direction": "to_reserve", "memo": "buffer"},
                   "€ 1.000,00 gaat van het budget naar de reserve", "Het budget wordt € 404.000,00 (nu € 405.000,00)",
                   "de reserve € 1.000,00")
    r = await post_form(client, "/beheer/regelingen/test-scheme/reserve",
                        {"amount": "1.000.000", "direction": "to_reserve", "memo": "te veel"})
    assert r.status_code == 422  # refused before the question, as the move itself would refuse it
    await _confirm(client, rt, "/beheer/regelingen/test-scheme/sluiten", {"reason": "budget op"},
                   "De regeling eerder sluiten?", "Vouchers die nu te gebruiken zijn: 1, met samen € 1.350,00",
                   "Deelnemende aanbieders: 1", "Ondernemers op de wachtlijst: 0")
    async with rt.sessionmaker() as session:
        fresh = await session.get_one(Scheme, scheme.id)
        assert fresh.closed_at is not None and fresh.reserve_cents == 100000


async def test_deciding_an_application_is_confirmed_first(client, rt) -> None:
    scheme = await make_scheme(rt)

    async def pending(session):  # type: ignore[no-untyped-def]
        fresh = await session.get_one(Scheme, scheme.id)
        one = await applications.submit(session, fresh, applicant(company_name="Wacht BV"))
        two = await applications.submit(session, fresh, applicant(company_name="Twijfel BV"))
        one.status = two.status = "registry_pending"
        return one.id, one.public_id, two.id

    one, public_id, two = await run_in_transaction(rt.sessionmaker, pending)
    await staff_client_sign_in(client, rt, "beoordelaar")
    await _confirm(client, rt, f"/beheer/aanvragen/{one}/besluit", {"decision": "approve", "reason": ""},
                   "Aanvraag goedkeuren?", f"Aanvraag {public_id} van Wacht BV wordt goedgekeurd",
                   "een voucher van € 1.350,00", "Plaatsen over: 300")
    await _confirm(client, rt, f"/beheer/aanvragen/{two}/besluit", {"decision": "refuse", "reason": "Buiten Arnhem"},
                   "Aanvraag afwijzen?", "wordt afgewezen", "met deze reden: Buiten Arnhem")
    async with rt.sessionmaker() as session:
        assert (await session.get_one(Application, one)).status == "granted"
        assert (await session.get_one(Application, two)).status == "rejected"


async def test_deciding_a_provider_is_confirmed_first(client, rt) -> None:
    await make_scheme(rt)

    async def pending(session):  # type: ignore[no-untyped-def]
        enrolments = []
        for name, kvk in (("Nieuwe Coach", "87654321"), ("Twijfel Coach", "87654322")):
            enrolments.append((await staff.apply(session, staff.ProviderApplication(
                scheme="test-scheme", name=name, kvk_number=kvk, email=f"{kvk}@coach.example",
                iban="NL91ABNA0417164300", categories=["coaching"]))).id)
        return enrolments

    one, two = await run_in_transaction(rt.sessionmaker, pending)
    await confirm_providers(rt)
    await staff_client_sign_in(client, rt, "beoordelaar")
    await _confirm(client, rt, f"/beheer/aanbieders/{one}/besluit", {"decision": "approve", "reason": ""},
                   "Aanbieder goedkeuren?", "Nieuwe Coach (KvK 87654321) doet mee aan Testregeling")
    await _confirm(client, rt, f"/beheer/aanbieders/{two}/besluit", {"decision": "refuse", "reason": "Geen KvK"},
                   "Aanbieder afwijzen?", "met deze reden: Geen KvK")
    async with rt.sessionmaker() as session:
        assert (await session.get_one(Enrolment, one)).status == "approved"
        assert (await session.get_one(Enrolment, two)).status == "refused"
