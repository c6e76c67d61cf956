"""The municipality's operations in the JSON API (``/api/v1/admin/…``): the same domain functions as
the staff pages, for an admin token only; refusals are problem details; the council report and the
data-subject export carry exactly what they should."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select, update

from service import applications, audit, staff, vouchers
from service.check import reconcile
from service.db import run_in_transaction
from service.models import (
    LedgerEntry,
    OutboxMessage,
    Redemption,
    Scheme,
    Voucher,
    utcnow,
)
from service.models_admin import FlagReview
from tests.helpers import (
    admin_token,
    applicant,
    bearer,
    confirm_providers,
    make_provider,
    make_scheme,
    make_voucher,
    reload,
)

API = "/api/v1/admin"


def problem(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"]
    if code:
        assert body["type"] == f"urn:vouchers:problem:{code}"
    return body


async def _mails(rt, template: str) -> list[OutboxMessage]:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(OutboxMessage).where(OutboxMessage.template == template)))


async def _clean(rt) -> None:  # type: ignore[no-untyped-def]
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []
        assert (await audit.verify(session)).ok


@pytest.fixture
async def world(rt):  # type: ignore[no-untyped-def]
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, kvk_number="11112222", company_name="Bakkerij De Korenbloem",
                                       contact_name="Jan Jansen", email="jan@example.org")
    other, _ = await make_voucher(rt, scheme, kvk_number="33334444", company_name="Fietsenmaker Velo",
                                  contact_name="Sara de Vries", email="sara@example.org")
    provider, coach = await make_provider(rt, scheme, name="Coach & Co")

    async def redeem(session):  # type: ignore[no-untyped-def]
        v = await session.get_one(Voucher, voucher.id)
        return (await vouchers.redeem(session, rt, v, provider_id=provider.id, provider_name=provider.name,
                                      category="coaching", invoice_cents=200_00, reference="F-1", session_date=None,
                                      recorded_by="test")).id

    redemption_id = await run_in_transaction(rt.sessionmaker, redeem)
    return {"scheme": scheme, "voucher": voucher, "other": other, "code": code, "provider": provider,
            "coach": coach, "admin": await admin_token(rt), "redemption_id": redemption_id}


def _endpoints(w: dict) -> list[tuple[str, str, dict | None]]:
    voucher_id = w["voucher"].id
    return [
        ("GET", f"{API}/schemes/test-scheme/dashboard", None),
        ("GET", f"{API}/schemes/test-scheme/report", None),
        ("GET", f"{API}/schemes/test-scheme/report.csv", None),
        ("GET", f"{API}/applications/undecided", None),
        ("GET", f"{API}/enrolments/pending", None),
        ("GET", f"{API}/redemptions/flagged", None),
        ("POST", f"{API}/applications/1/decision", {"decision": "approve"}),
        ("POST", f"{API}/redemptions/{w['redemption_id']}/review", {"decision": "keep", "reason": "klopt"}),
        ("POST", f"{API}/enrolments/1/approval", None),
        ("POST", f"{API}/enrolments/1/refusal", {"reason": "geen erkenning"}),
        ("POST", f"{API}/vouchers/{voucher_id}/extension", {"until": "2099-01-01", "reason": "ziekte"}),
        ("POST", f"{API}/schemes/test-scheme/closure", {"reason": "budget op"}),
        ("POST", f"{API}/schemes/test-scheme/reserve-moves", {"amount_cents": 100, "reason": "buffer"}),
        ("GET", f"{API}/audit", None),
        ("GET", f"{API}/audit/verification", None),
        ("GET", f"{API}/data-subjects/11112222", None),
    ]


async def test_every_endpoint_is_for_admin_tokens_only(client, world, rt) -> None:
    for method, url, body in _endpoints(world):
        for headers, status in ((bearer(world["coach"]), 403), ({}, 401)):
            r = await client.request(method, url, headers=headers, json=body)
            problem(r, status)
    # Nothing was changed by the refused requests.
    async with rt.sessionmaker() as session:
        scheme = await session.get_one(Scheme, world["scheme"].id)
        assert scheme.closed_at is None and scheme.reserve_cents == 0
        assert await session.scalar(select(FlagReview)) is None


async def test_dashboard_report_and_csv_without_personal_data(client, world) -> None:
    headers = bearer(world["admin"])
    board = await client.get(f"{API}/schemes/test-scheme/dashboard", headers=headers)
    assert board.status_code == 200, board.text
    body = board.json()
    assert body["summary"]["places_used"] == 2 and body["summary"]["committed_cents"] == 2 * 135000
    assert {"key": "coaching", "cents": 20000, "count": 1} in body["redeemed_by_category"]
    assert body["queues"] == {"applications": 0, "reports": 0, "providers": 0}
    report = await client.get(f"{API}/schemes/test-scheme/report", headers=headers)
    assert report.status_code == 200, report.text
    figures = report.json()
    assert (figures["vouchers_issued"], figures["entrepreneurs_helped"], figures["spent_cents"]) == (2, 1, 20000)
    assert figures["by_provider"] == [{"key": "Coach & Co", "cents": 20000, "count": 1}]
    csv = await client.get(f"{API}/schemes/test-scheme/report.csv", headers=headers)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "vouchers_issued" in csv.text and "onderdeel" in csv.text.splitlines()[0]
    assert "section" in (await client.get(f"{API}/schemes/test-scheme/report.csv?lang=en", headers=headers)).text
    for text in (board.text, report.text, csv.text):
        for private in ("Korenbloem", "Jan Jansen", "jan@example.org", "11112222", "Velo", "Sara", "sara@example.org",
                        "33334444"):
            assert private not in text
    problem(await client.get(f"{API}/schemes/no-such-scheme/report", headers=headers), 404, "scheme-not-found")


async def test_undecided_applications_are_decided_and_mailed(client, world, rt) -> None:
    headers = bearer(world["admin"])

    async def pending(session):  # type: ignore[no-untyped-def]
        scheme = await session.get_one(Scheme, world["scheme"].id)
        one = await applications.submit(session, scheme, applicant(company_name="Wacht BV"))
        two = await applications.submit(session, scheme, applicant(company_name="Twijfel BV"))
        one.status = two.status = "registry_pending"
        return one.id, two.id

    one, two = await run_in_transaction(rt.sessionmaker, pending)
    queue = await client.get(f"{API}/applications/undecided", headers=headers)
    assert queue.status_code == 200 and queue.headers["cache-control"] == "no-store"
    assert {(a["application_id"], a["company_name"]) for a in queue.json()} == {(one, "Wacht BV"), (two, "Twijfel BV")}
    # Refusing needs a reason; the body is decoded strictly.
    body = problem(await client.post(f"{API}/applications/{two}/decision", headers=headers,
                                     json={"decision": "refuse"}), 422, "reason-required")
    assert body["invalid_params"][0]["name"] == "reason"
    r = await client.post(f"{API}/applications/{two}/decision", headers=headers, json={"decision": "maybe"})
    assert r.status_code == 400 and "decision" in r.text
    r = await client.post(f"{API}/applications/{two}/decision", headers=headers,
                          json={"decision": "refuse", "reason": "x", "extra": 1})
    assert r.status_code == 400 and "extra" in r.text
    key = {**headers, "Idempotency-Key": str(uuid.uuid4())}
    first = await client.post(f"{API}/applications/{one}/decision", headers=key, json={"decision": "approve"})
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "granted" and first.json()["application_id"] == one
    again = await client.post(f"{API}/applications/{one}/decision", headers=key, json={"decision": "approve"})
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    r = await client.post(f"{API}/applications/{two}/decision", headers=headers,
                          json={"decision": "refuse", "reason": "Geen bedrijf in Arnhem"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert r.json()["reasons"] == ["Geen bedrijf in Arnhem"]
    problem(await client.post(f"{API}/applications/{one}/decision", headers=headers, json={"decision": "approve"}),
            422, "application-decided")
    problem(await client.post(f"{API}/applications/999999/decision", headers=headers, json={"decision": "approve"}),
            404, "application-not-found")
    assert (await client.get(f"{API}/applications/undecided", headers=headers)).json() == []
    assert await _mails(rt, "application_rejected")
    await _clean(rt)


async def test_provider_enrolments_are_decided_with_a_mail(client, world, rt) -> None:
    headers = bearer(world["admin"])

    async def apply(session, name: str, kvk: str, email: str):  # type: ignore[no-untyped-def]
        return (await staff.apply(session, staff.ProviderApplication(
            scheme="test-scheme", name=name, kvk_number=kvk, email=email, iban="NL91ABNA0417164300",
            categories=["coaching"]))).id

    yes = await run_in_transaction(rt.sessionmaker, lambda s: apply(s, "Nieuwe Coach", "87654321", "nieuw@coach.nl"))
    no = await run_in_transaction(rt.sessionmaker, lambda s: apply(s, "Twijfel Coach", "87654322", "twijfel@coach.nl"))
    await confirm_providers(rt)
    queue = (await client.get(f"{API}/enrolments/pending", headers=headers)).json()
    assert [(e["enrolment_id"], e["provider_name"]) for e in queue] == [(yes, "Nieuwe Coach"), (no, "Twijfel Coach")]
    r = await client.post(f"{API}/enrolments/{yes}/approval", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "approved"
    r = await client.post(f"{API}/enrolments/{no}/refusal", headers=headers, json={"reason": "geen erkenning"})
    assert r.status_code == 200 and r.json()["status"] == "refused"
    problem(await client.post(f"{API}/enrolments/{no}/approval", headers=headers), 422, "enrolment-decided")
    problem(await client.post(f"{API}/enrolments/999999/approval", headers=headers), 404, "enrolment-not-found")
    # The pages' path: the provider is mailed the decision.
    assert {m.to_address for m in await _mails(rt, "admin_enrolment_decided")} == {"nieuw@coach.nl",
                                                                                 "twijfel@coach.nl"}
    assert (await client.get(f"{API}/enrolments/pending", headers=headers)).json() == []


async def test_reported_redemption_is_reviewed(client, world, rt) -> None:
    headers = bearer(world["admin"])
    rid = world["redemption_id"]
    problem(await client.post(f"{API}/redemptions/{rid}/review", headers=headers,
                              json={"decision": "reverse", "reason": "niet geleverd"}), 404, "redemption-not-found")
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Redemption).where(Redemption.id == rid)
                              .values(flagged_at=utcnow(), flag_note="Ken ik niet"))
    flagged = (await client.get(f"{API}/redemptions/flagged", headers=headers)).json()
    assert [f["redemption_id"] for f in flagged] == [rid]
    r = await client.post(f"{API}/redemptions/{rid}/review", headers=headers,
                          json={"decision": "reverse", "reason": "niet geleverd"})
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "reversed" and r.json()["decided_by"].startswith("token:")
    problem(await client.post(f"{API}/redemptions/{rid}/review", headers=headers,
                              json={"decision": "keep", "reason": "toch wel"}), 422, "report-decided")
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 135000
    assert await _mails(rt, "admin_report_decided") and await _mails(rt, "admin_redemption_reversed")
    await _clean(rt)


async def test_extend_a_voucher(client, world, rt) -> None:
    headers = bearer(world["admin"])
    url = f"{API}/vouchers/{world['voucher'].id}/extension"
    body = problem(await client.post(url, headers=headers, json={"until": "2000-01-01", "reason": "ziekte"}),
                   422, "date-in-past")
    assert body["invalid_params"][0]["name"] == "until"
    r = await client.post(url, headers=headers, json={"until": "31-12-2099", "reason": "ziekte"})
    assert r.status_code == 400 and "until" in r.text
    r = await client.post(url, headers=headers, json={"until": "2099-12-31", "reason": "z"})
    assert r.status_code == 400 and "reason" in r.text
    until = (utcnow() + dt.timedelta(days=200)).date()
    r = await client.post(url, headers=headers, json={"until": until.isoformat(), "reason": "ziekte"})
    assert r.status_code == 200, r.text
    assert dt.datetime.fromisoformat(r.json()["expires_at"]).date() >= until
    problem(await client.post(url, headers=headers, json={"until": until.isoformat(), "reason": "ziekte"}),
            422, "date-not-later")
    problem(await client.post(f"{API}/vouchers/999999/extension", headers=headers,
                              json={"until": until.isoformat(), "reason": "ziekte"}), 404, "voucher-not-found")
    assert await _mails(rt, "admin_voucher_extended")
    async with rt.sessionmaker() as session:
        kinds = [e.kind for e in await session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]
        assert kinds[-1] == "extend"
    await _clean(rt)


async def test_money_to_the_reserve_and_back(client, world, rt) -> None:
    headers = bearer(world["admin"])
    url = f"{API}/schemes/test-scheme/reserve-moves"
    r = await client.post(url, headers=headers, json={"amount_cents": 100_000, "reason": "buffer"})
    assert r.status_code == 200, r.text
    assert (r.json()["budget_cents"], r.json()["reserve_cents"]) == (405_000_00 - 100_000, 100_000)
    r = await client.post(url, headers=headers, json={"amount_cents": -40_000, "reason": "terug"})
    assert r.status_code == 200 and r.json()["reserve_cents"] == 60_000
    # More than the uncommitted budget (two vouchers are committed), or more than the reserve holds back.
    uncommitted = 405_000_00 - 60_000 - 2 * 135000
    problem(await client.post(url, headers=headers, json={"amount_cents": uncommitted + 1, "reason": "te veel"}),
            422, "not-enough-money")
    problem(await client.post(url, headers=headers, json={"amount_cents": -60_001, "reason": "te veel"}),
            422, "not-enough-money")
    body = problem(await client.post(url, headers=headers, json={"amount_cents": 0, "reason": "niets"}), 422,
                   "amount-zero")
    assert body["invalid_params"][0]["name"] == "amount_cents"
    r = await client.post(url, headers=headers, json={"amount_cents": "100", "reason": "tekst"})
    assert r.status_code == 400 and "amount_cents" in r.text
    r = await client.post(url, headers=headers, json={"amount_cents": 100})
    assert r.status_code == 400 and "reason" in r.text
    async with rt.sessionmaker() as session:
        scheme = await session.get_one(Scheme, world["scheme"].id)
        assert scheme.reserve_cents == 60_000 and scheme.budget_cents == 405_000_00 - 60_000
    await _clean(rt)


async def test_close_a_scheme_once(client, world, rt) -> None:
    headers = bearer(world["admin"])
    url = f"{API}/schemes/test-scheme/closure"
    r = await client.post(url, headers=headers, json={"reason": "budget op"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "closed" and r.json()["closed_at"]
    problem(await client.post(url, headers=headers, json={"reason": "nog eens"}), 422, "scheme-already-closed")
    problem(await client.post(f"{API}/schemes/no-such-scheme/closure", headers=headers, json={"reason": "weg"}),
            404, "scheme-not-found")
    problem(await client.post(f"{API}/vouchers/{world['voucher'].id}/extension", headers=headers,
                              json={"until": "2099-12-31", "reason": "ziekte"}), 422, "scheme-closed")
    await _clean(rt)


async def test_audit_log_search_and_verification(client, world, rt) -> None:
    headers = bearer(world["admin"])
    r = await client.post(f"{API}/schemes/test-scheme/reserve-moves", headers=headers,
                          json={"amount_cents": 500, "reason": "buffer"})
    assert r.status_code == 200
    found = await client.get(f"{API}/audit", headers=headers, params={"actor": "token:", "table": "scheme"})
    assert found.status_code == 200, found.text
    entries = found.json()
    assert entries and all(e["table_name"] == "scheme" and e["actor"].startswith("token:") for e in entries)
    assert any(e["after"].get("reserve_cents") == 500 for e in entries)
    today = utcnow().date().isoformat()
    everything = (await client.get(f"{API}/audit", headers=headers, params={"since": today, "limit": 500})).json()
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) > 2
    older = (await client.get(f"{API}/audit", headers=headers, params={"before": seqs[1], "limit": 1})).json()
    assert [e["seq"] for e in older] == [seqs[2]]
    assert (await client.get(f"{API}/audit", headers=headers, params={"until": "2000-01-01"})).json() == []
    bad = await client.get(f"{API}/audit", headers=headers, params={"since": "gisteren"})
    assert bad.status_code == 400 and "since" in bad.text
    for private in ("Jan Jansen", "jan@example.org"):
        assert private not in (await client.get(f"{API}/audit", headers=headers, params={"limit": 500})).text
    verified = await client.get(f"{API}/audit/verification", headers=headers)
    assert verified.status_code == 200 and verified.json()["ok"] is True and verified.json()["problems"] == []


async def test_data_subject_export_has_everything_about_one_kvk_and_nothing_else(client, world, rt) -> None:
    headers = bearer(world["admin"])
    r = await client.get(f"{API}/data-subjects/11112222", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    mine = body["as_applicant"]
    assert body["kvk_number"] == "11112222"
    assert [a["company_name"] for a in mine["applications"]] == ["Bakkerij De Korenbloem"]
    assert mine["applications"][0]["email"] == "jan@example.org"
    assert [v["id"] for v in mine["vouchers"]] == [world["voucher"].id]
    assert [x["id"] for x in mine["redemptions"]] == [world["redemption_id"]]
    assert mine["ledger_entries"] and mine["mail"] and mine["audit_log"]
    assert all(m["to_address"] == "jan@example.org" for m in mine["mail"])
    assert "code_hash" not in mine["vouchers"][0] and "code_salt" not in mine["vouchers"][0]
    assert world["code"] not in r.text
    for other in ("Velo", "Sara", "sara@example.org", "33334444"):
        assert other not in r.text
    # Nobody with this number: an empty export. Not a KvK number: refused.
    empty = (await client.get(f"{API}/data-subjects/99998888", headers=headers)).json()
    assert empty["as_applicant"]["applications"] == [] and empty["as_provider"]["providers"] == []
    r = await client.get(f"{API}/data-subjects/1234", headers=headers)
    assert r.status_code == 400 and "kvk_number" in r.text
    # The export itself is in the audit log.
    async with rt.sessionmaker() as session:
        entries = await audit.search(session, audit.AuditFilter(action="privacy-export"))
        assert entries and entries[0].actor.startswith("token:")
    await _clean(rt)


async def test_new_endpoints_are_in_the_openapi_document(client) -> None:
    paths = (await client.get("/api/schema/openapi.json")).json()["paths"]
    for path in ("/api/v1/admin/schemes/{slug}/dashboard", "/api/v1/admin/vouchers/{voucher_id}/extension",
                 "/api/v1/admin/schemes/{slug}/reserve-moves", "/api/v1/admin/data-subjects/{kvk_number}",
                 "/api/v1/admin/audit"):
        assert path in paths


async def test_interventions_keep_the_books_right(client, world, rt) -> None:
    """All interventions one after another; the ledger and the stored figures still agree."""
    headers = bearer(world["admin"])
    until = (utcnow() + dt.timedelta(days=120)).date().isoformat()
    assert (await client.post(f"{API}/vouchers/{world['other'].id}/extension", headers=headers,
                              json={"until": until, "reason": "ziekte"})).status_code == 200
    assert (await client.post(f"{API}/vouchers/{world['other'].id}/revocation", headers=headers,
                              json={"reason": "fraude"})).status_code == 200
    assert (await client.post(f"{API}/schemes/test-scheme/reserve-moves", headers=headers,
                              json={"amount_cents": 250_000, "reason": "buffer"})).status_code == 200
    assert (await client.post(f"{API}/schemes/test-scheme/closure", headers=headers,
                              json={"reason": "klaar"})).status_code == 200
    async with rt.sessionmaker() as session:
        kinds = [e.kind for e in await session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]
        assert kinds[-4:] == ["extend", "revoked", "reserve", "close"]
    await _clean(rt)
