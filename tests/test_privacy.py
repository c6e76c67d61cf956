"""Privacy (AVG): the purge erases or pseudonymises applicants' personal data after the retention
period, keeps every figure and the ledger, and is idempotent; the data-subject export."""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy import select

from service import audit, privacy, schemes, vouchers
from service import reports
from service.check import reconcile
from service.db import run_in_transaction
from service.models import Application, Scheme, Voucher, utcnow
from tests.helpers import make_provider, make_scheme, make_voucher


async def _scheme_with_use(rt):  # type: ignore[no-untyped-def]
    scheme = await make_scheme(rt)
    v1, _ = await make_voucher(rt, scheme, company_name="Kapsalon Els", contact_name="Els de Vries",
                               email="els@example.org", purpose="boekhouding leren", postcode="6811 AB")
    v2, _ = await make_voucher(rt, scheme, company_name="Studio Noor")
    provider, _token = await make_provider(rt, scheme)

    async def redeem(session):  # type: ignore[no-untyped-def]
        voucher = await session.get_one(Voucher, v1.id)
        await vouchers.redeem(session, rt, voucher, provider_id=provider.id, provider_name=provider.name,
                              category="coaching", invoice_cents=50000, reference="F-9", session_date=None,
                              recorded_by="test")

    await run_in_transaction(rt.sessionmaker, redeem)
    return scheme, v1, v2


async def _figures(rt, scheme_id):  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        scheme = await session.get_one(Scheme, scheme_id)
        summary = msgspec.to_builtins(await schemes.summary(session, scheme))
        summary.pop("taken_at")
        report = msgspec.to_builtins(await reports.council_report(session, scheme))
        report.pop("taken_at")
        return summary, report, await reconcile(session)


async def test_purge_erases_personal_data_keeps_figures_and_is_idempotent(rt) -> None:
    scheme, v1, _v2 = await _scheme_with_use(rt)
    kvk = v1.kvk_number
    before = await _figures(rt, scheme.id)
    # Not yet: the scheme has not ended long enough ago.
    report = await run_in_transaction(rt.sessionmaker, lambda s: privacy.purge(s, rt, after_days=30))
    assert report.applications == 0
    later = utcnow() + dt.timedelta(days=30 + 90 + 31)  # window (30 days) + validity (90) + retention (30)
    report = await run_in_transaction(rt.sessionmaker, lambda s: privacy.purge(s, rt, after_days=30, now=later))
    assert report.applications == 2 and report.vouchers == 2 and report.schemes == ["test-scheme"]
    async with rt.sessionmaker() as session:
        for application in await session.scalars(select(Application)):
            assert application.company_name == application.contact_name == application.email == ""
            assert application.purpose == "" and len(application.postcode) == 4
            assert application.kvk_number.startswith("P") and len(application.kvk_number) == 8
        voucher = await session.get_one(Voucher, v1.id)
        assert voucher.kvk_number == privacy.pseudonym(rt, kvk)
        assert (await audit.verify(session)).ok
    after = await _figures(rt, scheme.id)
    assert after == before and after[2] == []
    # Again: nothing left to do, nothing changes.
    again = await run_in_transaction(rt.sessionmaker, lambda s: privacy.purge(s, rt, after_days=30, now=later))
    assert again.applications == 0
    assert await _figures(rt, scheme.id) == before
    # The pseudonym still finds the records, without the number itself.
    exported = await run_in_transaction(rt.sessionmaker, lambda s: privacy.export_subject(s, rt, kvk))
    assert len(exported["as_applicant"]["vouchers"]) == 1
    assert exported["as_applicant"]["applications"][0]["email"] == ""


async def test_export_holds_everything_about_one_kvk_number_and_no_secrets(rt) -> None:
    _scheme, v1, _v2 = await _scheme_with_use(rt)
    exported = await run_in_transaction(rt.sessionmaker, lambda s: privacy.export_subject(s, rt, v1.kvk_number))
    applicant = exported["as_applicant"]
    assert [a["company_name"] for a in applicant["applications"]] == ["Kapsalon Els"]
    assert applicant["applications"][0]["email"] == "els@example.org"
    assert [r["amount_cents"] for r in applicant["redemptions"]] == [50000]
    assert applicant["redemptions"][0]["provider"] == "Coach & Co"
    assert {m["template"] for m in applicant["mail"]} >= {"voucher_issued", "redemption_recorded"}
    assert applicant["ledger_entries"] and applicant["audit_log"]
    assert "code_hash" not in applicant["vouchers"][0] and "code_salt" not in applicant["vouchers"][0]
    body = msgspec.json.encode(exported).decode()
    assert "Studio Noor" not in body
    async with rt.sessionmaker() as session:
        logged = await audit.search(session, audit.AuditFilter(action="privacy-export"))
    assert len(logged) == 1
