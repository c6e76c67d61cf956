"""The JSON API: every bad input gets a clear 4xx problem that names the field, and leaves
nothing half-written; idempotency keys; roles; rate limits; public figures without personal data."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select, update

from service.check import reconcile
from service.models import Scheme, Voucher, utcnow
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher, reload

REDEEM = {"amount_cents": 10000, "category": "coaching", "reference": "F-2026-001"}


@pytest.fixture
async def world(rt):
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, company_name="Bakkerij De Korenbloem",
                                       contact_name="Jan Jansen", email="jan@example.org")
    provider, token = await make_provider(rt, scheme)
    return {"scheme": scheme, "voucher": voucher, "code": code, "provider": provider, "token": token}


def problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"]
    if code:
        assert body["type"] == f"urn:vouchers:problem:{code}"
    return body


async def test_lookup_shows_what_a_coach_needs_and_no_contact_details(client, world) -> None:
    r = await client.get(f"/api/v1/vouchers/{world['code'].lower()}", headers=bearer(world["token"]))
    assert r.status_code == 200
    body = r.json()
    assert body["valid"] and body["company_name"] == "Bakkerij De Korenbloem"
    assert "jan@example.org" not in r.text and "Jan Jansen" not in r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"


async def test_no_token_no_lookup(client, world) -> None:
    problem(await client.get(f"/api/v1/vouchers/{world['code']}"), 401)
    problem(await client.get(f"/api/v1/vouchers/{world['code']}", headers=bearer("vt_forged")), 401)


async def test_coach_may_not_use_admin_endpoints(client, world) -> None:
    r = await client.post(f"/api/v1/admin/vouchers/{world['voucher'].id}/revocation",
                          headers=bearer(world["token"]), json={"reason": "because"})
    problem(r, 403)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**REDEEM, "amount_cents": -5}, "amount_cents"),
        ({**REDEEM, "amount_cents": 0}, "amount_cents"),
        ({**REDEEM, "amount_cents": "10"}, "amount_cents"),
        ({**REDEEM, "category": "holiday"}, "category"),
        ({**REDEEM, "reference": ""}, "reference"),
        ({**REDEEM, "surprise": 1}, "surprise"),
        ({"category": "coaching", "reference": "x"}, "amount_cents"),
    ],
)
async def test_bad_redemption_bodies_name_the_field(client, world, rt, body, field) -> None:
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions", headers=bearer(world["token"]), json=body)
    assert r.status_code == 400, r.text
    assert field in r.text
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 135000


async def test_malformed_json(client, world) -> None:
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions", headers={
        **bearer(world["token"]), "content-type": "application/json"}, content=b'{"amount_cents": ')
    problem(r, 400)


async def test_oversized_body_is_refused(client, world) -> None:
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions", headers=bearer(world["token"]),
                          json={**REDEEM, "reference": "x" * 200_000})
    assert r.status_code == 413


async def test_amount_past_the_balance(client, world, rt) -> None:
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions", headers=bearer(world["token"]),
                          json={**REDEEM, "amount_cents": 135001})
    body = problem(r, 422, "insufficient-balance")
    assert body["invalid_params"][0]["name"] == "amount_cents"
    assert "1.350,00" in body["title"]  # Dutch by default


async def test_errors_speak_the_users_language(client, world) -> None:
    r = await client.post(f"/api/v1/vouchers/{world['code']}/redemptions",
                          headers={**bearer(world["token"]), "accept-language": "en-GB,en;q=0.9"},
                          json={**REDEEM, "amount_cents": 135001})
    assert "balance of €1,350.00" in r.json()["title"]


async def test_mistyped_and_unknown_codes(client, world) -> None:
    code = world["code"]
    typo = ("B" if code[0] != "B" else "C") + code[1:]
    problem(await client.get(f"/api/v1/vouchers/{typo}", headers=bearer(world["token"])), 422, "code-mistyped")
    from service.codes import CodeKeys
    from service.settings import Settings

    stranger = CodeKeys.from_settings(Settings(environment="test", secret_key="other" * 8))
    unknown = stranger.code_for(stranger.new_salt())
    problem(await client.get(f"/api/v1/vouchers/{unknown}", headers=bearer(world["token"])), 404, "voucher-not-found")


async def test_failed_lookups_are_rate_limited_in_the_database(client, world, rt) -> None:
    headers = bearer(world["token"])
    for _ in range(rt.settings.failed_lookup_limit):
        assert (await client.get("/api/v1/vouchers/0000-0000", headers=headers)).status_code == 422
    problem(await client.get(f"/api/v1/vouchers/{world['code']}", headers=headers), 429, "too-many-attempts")
    # Another client is not affected.
    _, other = await make_provider(rt, world["scheme"], name="Ander")
    assert (await client.get(f"/api/v1/vouchers/{world['code']}", headers=bearer(other))).status_code == 200


async def test_expired_revoked_and_closed(client, world, rt) -> None:
    url, headers = f"/api/v1/vouchers/{world['code']}/redemptions", bearer(world["token"])
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    problem(await client.post(url, headers=headers, json=REDEEM), 422, "voucher-expired")
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).values(expires_at=utcnow() + dt.timedelta(days=1)))
        await session.execute(update(Scheme).values(closed_at=utcnow()))
    problem(await client.post(url, headers=headers, json=REDEEM), 422, "scheme-closed")
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Scheme).values(closed_at=None))
    admin = await admin_token(rt)
    r = await client.post(f"/api/v1/admin/vouchers/{world['voucher'].id}/revocation", headers=bearer(admin),
                          json={"reason": "misuse reported"})
    assert r.status_code == 200 and r.json()["returned_cents"] == 135000
    problem(await client.post(url, headers=headers, json=REDEEM), 422, "voucher-revoked")
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def test_idempotency_key_replays_the_first_answer(client, world, rt) -> None:
    url = f"/api/v1/vouchers/{world['code']}/redemptions"
    headers = {**bearer(world["token"]), "Idempotency-Key": str(uuid.uuid4())}
    first = await client.post(url, headers=headers, json=REDEEM)
    second = await client.post(url, headers=headers, json=REDEEM)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert (await reload(rt, Voucher, world["voucher"].id)).balance_cents == 125000
    problem(await client.post(url, headers=headers, json={**REDEEM, "amount_cents": 20000}), 422,
            "idempotency-key-reused")


async def test_idempotency_key_replays_refusals_too(client, world, rt) -> None:
    url = f"/api/v1/vouchers/{world['code']}/redemptions"
    headers = {**bearer(world["token"]), "Idempotency-Key": "k-1"}
    first = await client.post(url, headers=headers, json={**REDEEM, "amount_cents": 999999})
    second = await client.post(url, headers=headers, json={**REDEEM, "amount_cents": 999999})
    assert first.status_code == second.status_code == 422
    assert first.json() == second.json()


async def test_key_in_flight_gets_409(client, world, rt) -> None:
    from service import idempotency

    url = f"/api/v1/vouchers/{world['code']}/redemptions"
    body = b'{"amount_cents":10000,"category":"coaching","reference":"F-2026-001"}'
    fingerprint = idempotency.request_fingerprint("POST", url, body)
    await idempotency.claim(rt.sessionmaker, scope=f"token:{await _token_id(rt, world['token'])}", key="busy",
                            fingerprint=fingerprint)
    r = await client.post(url, headers={**bearer(world["token"]), "Idempotency-Key": "busy",
                                        "content-type": "application/json"}, content=body)
    problem(r, 409, "request-in-flight")


async def _token_id(rt, token: str) -> int:
    from service.providers import authenticate_token

    async with rt.sessionmaker() as session:
        return (await authenticate_token(session, rt, token)).id


async def test_public_summary_has_figures_and_no_personal_data(client, world) -> None:
    r = await client.get("/api/v1/schemes/test-scheme")
    assert r.status_code == 200
    body = r.json()
    assert (body["places_used"], body["committed_cents"], body["places_left"]) == (1, 135000, 299)
    for private in ("Korenbloem", "Jansen", "jan@example.org", world["voucher"].kvk_number):
        assert private not in r.text


async def test_apply_through_the_admin_api(client, rt, world) -> None:
    admin = await admin_token(rt)
    application = {"kvk_number": "87654321", "company_name": "Fietsmaker", "employees": 2, "postcode": "6822 AB",
                   "contact_name": "Sara de Vries", "email": "sara@example.org"}
    r = await client.post("/api/v1/admin/schemes/test-scheme/applications", headers=bearer(admin), json=application)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "granted"
    again = await client.post("/api/v1/admin/schemes/test-scheme/applications", headers=bearer(admin), json=application)
    problem(again, 409, "already-applied")
    bad = await client.post("/api/v1/admin/schemes/test-scheme/applications", headers=bearer(admin),
                            json={**application, "kvk_number": "1234"})
    assert bad.status_code == 400 and "kvk_number" in bad.text
    status = await client.get(f"/api/v1/applications/{r.json()['application_id']}")
    assert status.json()["status"] == "granted" and "Sara" not in status.text


async def test_openapi_schema_documents_the_api(client) -> None:
    r = await client.get("/api/schema/openapi.json")
    assert r.status_code == 200
    assert "/api/v1/vouchers/{code}/redemptions" in r.json()["paths"]


async def test_a_revoked_token_is_refused(client, rt, world) -> None:
    from service import providers
    from service.db import run_in_transaction

    admin = await admin_token(rt)
    token_id = await _token_id(rt, admin)
    await run_in_transaction(rt.sessionmaker, lambda s: providers.revoke_token(s, token_id))
    problem(await client.get("/api/v1/admin/redemptions/flagged", headers=bearer(admin)), 401)


async def test_driver_redemption_writes_what_the_session_path_writes(client, world, rt) -> None:
    """A redemption without an Idempotency-Key goes straight through the driver (service.fastwrite);
    with a key it runs through the session and ``vouchers.redeem``. Both must leave the same rows:
    redemption, ledger entry, mail and audit entries, apart from ids and times."""
    from sqlalchemy import select

    from service.models import LedgerEntry, OutboxMessage, Redemption
    from service.models_admin import AuditEntry

    _, second_code = await make_voucher(rt, world["scheme"], contact_name="Jan Jansen", email="jan@example.org")
    url = "/api/v1/vouchers/{}/redemptions"
    fast = await client.post(url.format(world["code"]), headers=bearer(world["token"]), json=REDEEM)
    session_path = await client.post(url.format(second_code), json=REDEEM,
                                     headers={**bearer(world["token"]), "Idempotency-Key": str(uuid.uuid4())})
    assert fast.status_code == session_path.status_code == 201, (fast.text, session_path.text)
    ids = {"redemption_id", "voucher_id", "created_at"}
    assert {k: v for k, v in fast.json().items() if k not in ids} == \
        {k: v for k, v in session_path.json().items() if k not in ids}

    volatile = {"id", "voucher_id", "redemption_id", "from_id", "created_at", "report_redemption_id"}

    def same_shape(row: dict) -> dict:
        return {k: ("…" if k in volatile else v) for k, v in row.items()}

    async with rt.sessionmaker() as session:
        made = {}
        for answer in (fast, session_path):
            redemption = await session.get_one(Redemption, answer.json()["redemption_id"])
            entry = await session.scalar(select(LedgerEntry).where(LedgerEntry.redemption_id == redemption.id))
            mail = await session.scalar(select(OutboxMessage).where(OutboxMessage.template == "redemption_recorded")
                                        .order_by(OutboxMessage.id).offset(len(made)))
            audit_rows = list(await session.scalars(select(AuditEntry).where(
                ((AuditEntry.table_name == "redemption") & (AuditEntry.row_id == str(redemption.id)))
                | ((AuditEntry.table_name == "ledger_entry") & (AuditEntry.row_id == str(entry.id)))
                | ((AuditEntry.table_name == "voucher") & (AuditEntry.row_id == str(redemption.voucher_id))
                   & (AuditEntry.action == "update")))))
            made[answer] = {
                "redemption": same_shape({c: getattr(redemption, c) for c in Redemption.__table__.c.keys()}),
                "entry": same_shape({c: getattr(entry, c) for c in LedgerEntry.__table__.c.keys()}),
                "mail": (mail.to_address, mail.template, mail.locale, mail.status, same_shape(mail.params)),
                "audit": sorted((a.action, a.table_name, a.actor, same_shape(a.before), same_shape(a.after))
                                for a in audit_rows),
            }
        assert "report_url" not in mail.params  # the link is made when the mail is sent, never stored
        assert made[fast] == made[session_path]
        assert len(made[fast]["audit"]) == 3
        assert await reconcile(session) == []


async def test_driver_application_writes_what_the_session_path_writes(client, rt, monkeypatch) -> None:
    """An application to a first-come scheme without an Idempotency-Key goes straight through the
    driver (service.fastwrite); with a key it runs through ``submit`` and ``decide``. Granted or
    waiting, both must leave the same rows, apart from ids, codes and times."""
    from sqlalchemy import select

    from service import fastwrite
    from service.models import Application, LedgerEntry, OutboxMessage
    from service.models_admin import AuditEntry
    from tests.helpers import next_kvk

    await make_scheme(rt, max_places=3)
    token = await admin_token(rt)
    url = "/api/v1/admin/schemes/test-scheme/applications"
    volatile = {"id", "public_id", "kvk_number", "application_id", "voucher_id", "to_id", "created_at", "decided_at",
                "issued_at", "expires_at", "code_hash", "code_salt", "waitlist_number", "waitlist_seq",
                "waiting_count", "places_used", "committed_cents", "message_id"}

    def same_shape(row: dict) -> dict:
        return {k: ("…" if k in volatile else v) for k, v in row.items()}

    async def apply(with_key: bool) -> dict:
        body = {"kvk_number": next_kvk(), "company_name": "Firma", "employees": 2, "postcode": "6811 AB",
                "contact_name": "Naam", "email": "firma@example.org", "locale": "en"}
        headers = {**bearer(token), **({"Idempotency-Key": str(uuid.uuid4())} if with_key else {})}
        answer = await client.post(url, headers=headers, json=body)
        assert answer.status_code == 201, answer.text
        async with rt.sessionmaker() as session:
            application = await session.scalar(select(Application).where(Application.public_id
                                                                         == answer.json()["application_id"]))
            voucher = await session.scalar(select(Voucher).where(Voucher.application_id == application.id))
            entries = list(await session.scalars(select(LedgerEntry).where(
                LedgerEntry.voucher_id == (voucher.id if voucher else -1))))
            mail = await session.scalar(select(OutboxMessage).where(OutboxMessage.to_address == "firma@example.org")
                                        .order_by(OutboxMessage.id.desc()).limit(1))
            rows = [("application", str(application.id)), ("scheme", str(application.scheme_id))]
            rows += [("voucher", str(voucher.id))] if voucher else []
            rows += [("ledger_entry", str(e.id)) for e in entries]
            audit_rows = [a for a in await session.scalars(select(AuditEntry).order_by(AuditEntry.seq))
                          if (a.table_name, a.row_id) in rows and a.at >= application.created_at]
            return {
                "answer": same_shape({**answer.json(), "waiting_list_position": "…"}),
                "application": same_shape({c: getattr(application, c) for c in Application.__table__.c.keys()}),
                "voucher": voucher and same_shape({c: getattr(voucher, c) for c in Voucher.__table__.c.keys()}),
                "entries": [same_shape({c: getattr(e, c) for c in LedgerEntry.__table__.c.keys()}) for e in entries],
                "mail": (mail.template, mail.locale, mail.status, same_shape(mail.params)),
                "audit": sorted((a.action, a.table_name, same_shape(a.before), same_shape(a.after))
                                for a in audit_rows),
            }

    granted = [await apply(with_key=False), await apply(with_key=True)]
    # The driver makes what a place needs only when its read saw a free place. A read that saw
    # none, with a place free by the time of the write (one freed in between), must still get it.
    tried: list[bool] = []
    on_postgres = fastwrite._Applying.on_postgres

    async def recorded(job, *ids, may_place):
        tried.append(may_place)
        return await on_postgres(job, *ids, may_place=may_place)

    with monkeypatch.context() as patch:
        patch.setattr(fastwrite, "_place_free", lambda scheme: False)
        patch.setattr(fastwrite._Applying, "on_postgres", recorded)
        granted.append(await apply(with_key=False))
    assert tried == ([] if rt.settings.is_sqlite else [False, True])
    waiting = [await apply(with_key=False), await apply(with_key=True)]
    assert granted[0]["answer"]["status"] == "granted" and granted[0]["voucher"] is not None
    assert waiting[0]["answer"]["status"] == "waiting" and waiting[0]["voucher"] is None
    assert len(granted[0]["audit"]) == 5 and len(waiting[0]["audit"]) == 3
    assert granted[0] == granted[1] == granted[2]
    assert waiting[0] == waiting[1]
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def _behind_one(rt, monkeypatch, start: list) -> tuple[list, int]:
    """Start the first write of ``start`` (functions that start a task each) and, while the driver
    writes it, the rest; returns their answers (or refusals) in that order and how many were
    written one by one. The rest queue as one group."""
    import asyncio

    from service import groups

    alone: list[object] = []
    release = asyncio.Event()

    async def held(_key, size: int) -> None:
        if size == 1:
            alone.append(size)
            if len(alone) == 1:
                await release.wait()

    async def until(condition, what: str) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(what)

    with groups.watching(held):
        tasks = [start[0]()]
        await until(lambda: len(alone) == 1, "the first write did not start")
        for n, begin in enumerate(start[1:], 1):  # one after the other, so the group's order is theirs
            tasks.append(begin())
            await until(lambda n=n: groups.queued() == n, "the writes did not queue behind the first")
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True), len(alone)


async def _applications_behind_one(rt, monkeypatch, kvks: list[str]) -> tuple[list, int]:
    """``_behind_one`` with applications to the test scheme by these KvK numbers."""
    import asyncio

    from service import applications, fastwrite

    def apply(kvk: str):
        return lambda: asyncio.create_task(fastwrite.apply(rt, "test-scheme", applications.ApplicantDetails(
            kvk_number=kvk, company_name="Firma", employees=2, postcode="6811 AB", contact_name="Naam",
            email="firma@example.org")))

    return await _behind_one(rt, monkeypatch, [apply(kvk) for kvk in kvks])


async def test_applications_arriving_together_are_written_in_one_transaction(rt, monkeypatch) -> None:
    """The applications to a scheme that arrive while the driver writes another are written
    together, in one transaction, so the scheme's row is locked (on SQLite, the database) once for
    them."""
    from sqlalchemy import select

    from service.models import Application
    from tests.helpers import next_kvk

    await make_scheme(rt, max_places=2)
    answers, alone = await _applications_behind_one(rt, monkeypatch, [next_kvk() for _ in range(6)])
    assert alone == 1
    assert sorted(a.status for a in answers) == ["granted"] * 2 + ["waiting"] * 4
    assert sorted(a.waiting_list_position for a in answers if a.status == "waiting") == [1, 2, 3, 4]
    async with rt.sessionmaker() as session:
        numbers = sorted(n for n in await session.scalars(select(Application.waitlist_number)) if n is not None)
        scheme = await session.scalar(select(Scheme))
        assert numbers == [1, 2, 3, 4] and (scheme.places_used, scheme.waiting_count) == (2, 4)
        assert await reconcile(session) == []


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])  # groups are written on PostgreSQL only
async def test_a_group_whose_commit_was_made_but_not_acknowledged_keeps_its_answers(rt, monkeypatch) -> None:
    """The connection is cut off just after the database committed a group (its statements and
    their commit are one message): the applicants get the places and positions the group gave
    them, not a refusal from writing them again."""
    from asyncpg import Connection

    from tests.helpers import next_kvk

    fetchmany = Connection.fetchmany
    cut: list[int] = []

    async def committed_then_cut_off(self, query, args, **kw):
        await fetchmany(self, query, args, **kw)
        cut.append(len(args))
        raise ConnectionResetError("connection lost after the commit")

    monkeypatch.setattr(Connection, "fetchmany", committed_then_cut_off)
    await make_scheme(rt, max_places=2)
    answers, alone = await _applications_behind_one(rt, monkeypatch, [next_kvk() for _ in range(5)])
    assert alone == 1 and cut == [4]
    assert sorted(a.status for a in answers) == ["granted"] * 2 + ["waiting"] * 3, answers
    assert sorted(a.waiting_list_position for a in answers if a.status == "waiting") == [1, 2, 3]
    async with rt.sessionmaker() as session:
        scheme = await session.scalar(select(Scheme))
        assert (scheme.places_used, scheme.waiting_count) == (2, 3)
        assert await reconcile(session) == []


async def _redemptions_behind_one(rt, monkeypatch, provider, redemptions: list[tuple]) -> tuple[list, int]:
    """``_behind_one`` with redemptions, each (code, invoice in cents) by ``provider``, or (code,
    invoice in cents, provider); their references are F-0, F-1, …"""
    import asyncio

    from service import fastwrite

    def redeem(n: int, code: str, cents: int, by=provider):
        return lambda: asyncio.create_task(fastwrite.redeem(
            rt, code, attempts_key="lookup:test", provider_id=by.id, category="coaching",
            invoice_cents=cents, reference=f"F-{n}", session_date=None, recorded_by="test"))

    return await _behind_one(rt, monkeypatch, [redeem(n, *r) for n, r in enumerate(redemptions)])


async def test_redemptions_arriving_together_are_written_in_one_transaction(rt, monkeypatch) -> None:
    """The redemptions of a scheme that arrive while the driver writes another are written
    together, in one transaction, whichever provider's. Each answer is the one it would
    get alone: the voucher's balance just after it (one voucher twice in the group), or the
    voucher's refusal, which does not stop the others."""
    from service.errors import Refused
    from service.models import Enrolment, Redemption

    scheme = await make_scheme(rt)
    (v1, c1), (v2, c2) = await make_voucher(rt, scheme), await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    other, _ = await make_provider(rt, scheme, name="Andere Coach")
    value = scheme.value_cents
    answers, alone = await _redemptions_behind_one(rt, monkeypatch, provider, [
        (c1, 10_000), (c1, 20_000, other), (c2, 30_000), (c1, 40_000, other), (c1, value), (c2, 5_000)])
    assert alone == 1
    refused = answers.pop(4)
    assert isinstance(refused, Refused) and refused.code == "insufficient-balance"
    assert [(r.reference, balance) for r, balance in answers] == [
        ("F-0", value - 10_000), ("F-1", value - 30_000), ("F-2", value - 30_000), ("F-3", value - 70_000),
        ("F-5", value - 35_000)]
    async with rt.sessionmaker() as session:
        stored = {r.id: r.reference for r in await session.scalars(select(Redemption))}
        assert {r.id: r.reference for r, _ in answers} == stored
        assert [(await session.get(Voucher, v.id)).balance_cents for v in (v1, v2)] == [value - 70_000,
                                                                                         value - 35_000]
        received = {e.provider_id: e.received_cents for e in await session.scalars(select(Enrolment))}
        assert received == {provider.id: 45_000, other.id: 60_000}
        assert await reconcile(session) == []


async def test_a_provider_cap_reached_in_a_group_writes_the_group_again_one_by_one(rt, monkeypatch) -> None:
    """The enrolment refuses a redemption of a group (the provider's cap): the group is rolled
    back and written one by one, so the redemptions before it are made and it is refused."""
    from service.errors import Refused
    from service.models import Enrolment

    scheme = await make_scheme(rt, provider_cap_cents=50_000)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(3)]
    provider, _ = await make_provider(rt, scheme)
    answers, alone = await _redemptions_behind_one(rt, monkeypatch, provider, [
        (codes[0], 10_000), (codes[1], 20_000), (codes[2], 20_000), (codes[0], 10_000), (codes[1], 5_000)])
    assert alone == 1 + 4
    assert [a[0].reference for a in answers[:3]] == ["F-0", "F-1", "F-2"]
    assert all(isinstance(a, Refused) and a.code == "provider-cap-reached" for a in answers[3:]), answers
    async with rt.sessionmaker() as session:
        assert (await session.scalar(select(Enrolment))).received_cents == 50_000
        assert await reconcile(session) == []


async def _until_one_waits_for_a_lock(rt, task) -> None:
    import asyncio

    from sqlalchemy import text

    # A deadline, not a number of rounds: on a busy machine the group can take seconds to get there.
    deadline = asyncio.get_running_loop().time() + 60
    async with rt.sessionmaker() as watcher:
        while True:
            waiting = await watcher.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"))
            if waiting or task.done() or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
    assert waiting == 1, "the group did not wait for the row"


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])  # groups are written on PostgreSQL only
async def test_a_group_of_redemptions_waits_for_its_vouchers_before_the_enrolment(rt, monkeypatch) -> None:
    """A transaction holds a voucher of a group, then updates the enrolment, as every redemption
    does: the group waits for that voucher without holding the enrolment, so neither deadlocks
    (a deadlock would roll the group back and write it one by one)."""
    import asyncio

    from service.models import Enrolment

    scheme = await make_scheme(rt)
    made = [await make_voucher(rt, scheme) for _ in range(3)]
    provider, _ = await make_provider(rt, scheme)
    async with rt.sessionmaker() as other, other.begin():
        await other.execute(select(Voucher.id).where(Voucher.id == made[2][0].id).with_for_update())
        group = asyncio.create_task(_redemptions_behind_one(
            rt, monkeypatch, provider, [(code, 10_000) for _, code in made]))
        await _until_one_waits_for_a_lock(rt, group)
        await other.execute(update(Enrolment).values(received_cents=Enrolment.received_cents))
    answers, alone = await group
    assert alone == 1 and [balance for _, balance in answers] == [scheme.value_cents - 10_000] * 3, answers


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])  # groups are written on PostgreSQL only
async def test_a_group_of_redemptions_locks_the_enrolments_in_the_order_a_close_does(rt, monkeypatch) -> None:
    """Closing a scheme locks its enrolments in the order of their ids; a group with redemptions
    of two providers, the later enrolment's first, waits for the earlier one before it locks the
    later, so the two do not deadlock. (The first redemption, written alone while the group
    forms, is a third provider's.)"""
    import asyncio

    from service.models import Enrolment

    scheme = await make_scheme(rt)
    made = [await make_voucher(rt, scheme) for _ in range(3)]
    first, _ = await make_provider(rt, scheme)
    second, _ = await make_provider(rt, scheme, name="Andere Coach")
    third, _ = await make_provider(rt, scheme, name="Derde Coach")
    async with rt.sessionmaker() as session:
        enrolments = list(await session.scalars(select(Enrolment.id).order_by(Enrolment.id)))
    async with rt.sessionmaker() as closing, closing.begin():
        await closing.execute(select(Enrolment.id).where(Enrolment.id == enrolments[0]).with_for_update())
        group = asyncio.create_task(_redemptions_behind_one(rt, monkeypatch, third, [
            (made[0][1], 10_000), (made[1][1], 10_000, second), (made[2][1], 10_000, first)]))
        await _until_one_waits_for_a_lock(rt, group)
        await closing.execute(select(Enrolment.id).where(Enrolment.id == enrolments[1]).with_for_update())
    answers, alone = await group
    assert alone == 1 and [balance for _, balance in answers] == [scheme.value_cents - 10_000] * 3, answers


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])  # groups are written on PostgreSQL only
async def test_a_group_of_redemptions_committed_but_not_acknowledged_keeps_its_answers(rt, monkeypatch) -> None:
    """The connection is cut off just after the database committed a group of redemptions: the
    coaches get their redemptions; written again they would fail on their ids, a 500 inviting a
    second redemption."""
    from asyncpg import Connection

    from service.models import Redemption

    execute = Connection.execute
    cut: list[str] = []

    async def committed_then_cut_off(self, query, *args, **kw):
        answer = await execute(self, query, *args, **kw)
        if query == "COMMIT":
            cut.append(query)
            raise ConnectionResetError("connection lost after the commit")
        return answer

    scheme = await make_scheme(rt)
    codes = [(await make_voucher(rt, scheme))[1] for _ in range(2)]
    provider, _ = await make_provider(rt, scheme)
    monkeypatch.setattr(Connection, "execute", committed_then_cut_off)
    answers, alone = await _redemptions_behind_one(rt, monkeypatch, provider, [
        (codes[0], 10_000), (codes[1], 10_000), (codes[0], 10_000), (codes[1], 10_000)])
    assert alone == 1 and cut == ["COMMIT"]
    value = scheme.value_cents
    assert [balance for _, balance in answers] == [value - 10_000, value - 10_000, value - 20_000, value - 20_000]
    async with rt.sessionmaker() as session:
        assert sorted(await session.scalars(select(Redemption.reference))) == ["F-0", "F-1", "F-2", "F-3"]
        assert await reconcile(session) == []


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])  # the driver's statements run in autocommit there
async def test_a_statement_committed_but_not_acknowledged_gets_its_answer(rt, monkeypatch) -> None:
    """The connection is cut off just after the database committed a redemption or an application:
    the coach gets the redemption (a 500 would invite a second one) and the applicant their place.
    Cut off before the database had the statement, the error stands and nothing is written."""
    from sqlalchemy import func

    from service import fastwrite
    from service.fastpath import FastPath
    from service.models import Application, Redemption
    from tests.helpers import applicant

    fetchrow = FastPath.fetchrow
    cut = {"when": "after"}

    async def cut_off(self, sql, *args):
        if "INSERT INTO redemption" not in sql and "INSERT INTO application" not in sql:  # not a write
            return await fetchrow(self, sql, *args)
        if cut["when"] == "after":
            await fetchrow(self, sql, *args)
        raise ConnectionResetError(f"connection lost {cut['when']} the statement")

    scheme = await make_scheme(rt, max_places=2)
    voucher, code = await make_voucher(rt, scheme)
    provider, _ = await make_provider(rt, scheme)
    monkeypatch.setattr(FastPath, "fetchrow", cut_off)

    def redeem(reference: str):
        return fastwrite.redeem(rt, code, attempts_key="lookup:test", provider_id=provider.id, category="coaching",
                                invoice_cents=10000, reference=reference, session_date=None, recorded_by="test")

    redemption, balance = await redeem("F-1")
    assert (redemption.reference, balance) == ("F-1", voucher.value_cents - 10000)
    granted = await fastwrite.apply(rt, "test-scheme", applicant())
    waiting = await fastwrite.apply(rt, "test-scheme", applicant())
    assert (granted.status, waiting.status, waiting.waiting_list_position) == ("granted", "waiting", 1)

    cut["when"] = "before"
    with pytest.raises(ConnectionResetError):
        await redeem("F-2")
    with pytest.raises(ConnectionResetError):
        await fastwrite.apply(rt, "test-scheme", applicant())
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(Redemption.reference))) == ["F-1"]
        assert await session.scalar(select(func.count()).select_from(Application)) == 3
        assert await reconcile(session) == []


async def test_a_refusal_in_a_group_writes_the_group_again_one_by_one(rt, monkeypatch) -> None:
    """A KvK number that applies twice in one group: the group is rolled back and written one by
    one, so the second gets the refusal it would get alone and the others their places."""
    from service.errors import Conflict
    from tests.helpers import next_kvk

    await make_scheme(rt, max_places=2)
    kvks = [next_kvk() for _ in range(5)]
    answers, alone = await _applications_behind_one(rt, monkeypatch, [*kvks[:3], kvks[1], *kvks[3:]])
    assert alone == 1 + 5
    refused = [a for a in answers if isinstance(a, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], Conflict) and refused[0].code == "already-applied"
    assert sorted(a.status for a in answers if a not in refused) == ["granted"] * 2 + ["waiting"] * 3
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []

