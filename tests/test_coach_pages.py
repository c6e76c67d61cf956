"""The coach pages: sign-in and lock-out, the voucher page behind the QR code, redeeming with a
form (every refusal shown next to its field), reversal, authorisation, CSRF, the report link."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select, update

from service import outbox, vouchers
from service.check import reconcile
from service.db import run_in_transaction
from service.models import Enrolment, Redemption, Scheme, Voucher
from tests.coach_helpers import csrf, form_key, make_staff, post_form, sign_in
from tests.helpers import Statements, make_provider, make_scheme, make_voucher, reload


async def _setup(rt, **scheme_overrides):  # type: ignore[no-untyped-def]
    scheme = await make_scheme(rt, **scheme_overrides)
    voucher, code = await make_voucher(rt, scheme, company_name="Bakkerij Zon")
    provider, _token = await make_provider(rt, scheme)
    email = await make_staff(rt, provider.id)
    return scheme, voucher, code, provider, email


async def test_anonymous_sees_only_that_it_is_a_voucher(client, rt) -> None:
    _scheme, _voucher, code, _provider, _email = await _setup(rt)
    r = await client.get(f"/v/{code}")
    assert r.status_code == 200
    assert "Bakkerij Zon" not in r.text and "1.350" not in r.text and "1,350" not in r.text
    assert f"/coach/login?next=/v/{code}" in r.text.replace("%2F", "/")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    # The coach-only pages send a stranger to the sign-in page.
    r = await client.get("/coach/redemptions", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/coach/login?next=")


async def test_coach_signs_in_redeems_once_and_sees_balance(client, rt) -> None:
    _scheme, voucher, code, provider, email = await _setup(rt)
    r = await sign_in(client, email.upper(), next_=f"/v/{code}")
    assert r.status_code == 200, r.text  # followed the redirect to the voucher
    assert "Bakkerij Zon" in r.text and "1.350,00" in r.text and r.headers["cache-control"] == "no-store"
    key = form_key(r.text)
    form = {"amount": "125,50", "category": "coaching", "session_date": dt.date.today().isoformat(),
            "reference": "F-2026-1", "idempotency_key": key}
    first = await post_form(client, f"/v/{code}", form, follow_redirects=False)
    assert first.status_code == 303, first.text
    # A double tap or a reload sends the same key: the same answer, no second debit.
    second = await post_form(client, f"/v/{code}", form, follow_redirects=False)
    assert second.status_code == 303 and second.headers["location"] == first.headers["location"]
    page = await client.get(first.headers["location"])
    assert "1.224,50" in page.text and "125,50" in page.text
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 135000 - 12550
    async with rt.sessionmaker() as session:
        assert len(list(await session.scalars(select(Redemption)))) == 1
        assert await reconcile(session) == []
    # The entrepreneur is mailed with a link to report it.
    assert await outbox.send_due(rt) >= 1


async def test_every_refusal_is_shown_next_to_its_field(client, rt) -> None:
    scheme, voucher, code, provider, email = await _setup(rt)
    await sign_in(client, email)

    async def attempt(**fields: str):  # type: ignore[no-untyped-def]
        page = await client.get(f"/v/{code}")
        form = {"amount": "100", "category": "coaching", "session_date": "", "reference": "R1",
                "idempotency_key": form_key(page.text) if "idempotency_key" in page.text else "k-" + str(fields)}
        form.update(fields)
        return await post_form(client, f"/v/{code}", form, follow_redirects=False)

    r = await attempt(amount="12,3,4")
    assert r.status_code == 422 and 'id="amount-error"' in r.text and "12,3,4" in r.text  # kept what was typed
    r = await attempt(amount="2000,00")
    assert r.status_code == 422 and 'id="amount-error"' in r.text and "1.350,00" in r.text
    r = await attempt(reference="")
    assert r.status_code == 422 and 'id="reference-error"' in r.text
    r = await attempt(category="retraining_x")
    assert r.status_code == 422 and 'id="category-error"' in r.text
    # Category the provider is not approved for.
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Enrolment).where(Enrolment.provider_id == provider.id)
                              .values(categories=["coaching"]))
    r = await attempt(category="financial_advice")
    assert r.status_code == 422 and 'id="category-error"' in r.text
    # Provider cap.
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Enrolment).where(Enrolment.provider_id == provider.id).values(cap_cents=50_00))
    r = await attempt(amount="60")
    assert r.status_code == 422 and "hoogste bedrag bereikt" in r.text
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Enrolment).where(Enrolment.provider_id == provider.id).values(cap_cents=None))
    # Used up, expired, revoked, scheme closed: the page says so and shows no form.
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).where(Voucher.id == voucher.id).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    page = await client.get(f"/v/{code}")
    assert "verlopen" in page.text and "idempotency_key" not in page.text
    r = await attempt()
    assert r.status_code == 422 and "verlopen" in r.text
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Voucher).where(Voucher.id == voucher.id).values(
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=5)))
        await session.execute(update(Scheme).where(Scheme.id == scheme.id).values(closed_at=dt.datetime.now(dt.UTC)))
    r = await attempt()
    assert r.status_code == 422 and "gesloten" in r.text
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Scheme).where(Scheme.id == scheme.id).values(closed_at=None))
    await run_in_transaction(rt.sessionmaker, lambda s: vouchers.end_voucher(s, rt, voucher.id, status="revoked",
                                                                             reason="test"))
    r = await attempt()
    assert r.status_code == 422 and "ingetrokken" in r.text
    # Mistyped and unknown codes, typed or scanned.
    bad = code[:-1] + ("0" if code[-1] != "0" else "1")
    r = await post_form(client, "/coach/code", {"code": bad})
    assert r.status_code == 422 and 'id="code-error"' in r.text and bad in r.text
    r = await client.get(f"/v/{bad}")
    assert r.status_code == 422 and "vergist" in r.text
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def test_used_up_and_too_many_attempts(client, rt) -> None:
    _scheme, voucher, code, provider, email = await _setup(rt)
    await sign_in(client, email)
    page = await client.get(f"/v/{code}")
    r = await post_form(client, f"/v/{code}", {"amount": "1.350", "category": "coaching", "reference": "all",
                                               "idempotency_key": form_key(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    page = await client.get(f"/v/{code}")
    assert "gebruikt" in page.text and "idempotency_key" not in page.text
    r = await post_form(client, f"/v/{code}", {"amount": "1", "category": "coaching", "reference": "x",
                                               "idempotency_key": "again"})
    assert r.status_code == 422 and "helemaal gebruikt" in r.text
    bad = code[:-1] + ("0" if code[-1] != "0" else "1")
    for _ in range(rt.settings.failed_lookup_limit):
        await post_form(client, "/coach/code", {"code": bad})
    r = await post_form(client, "/coach/code", {"code": code})
    assert r.status_code == 429 and 'id="code-error"' in r.text


async def test_lock_out_after_five_failures(client, rt) -> None:
    _scheme, _voucher, _code, _provider, email = await _setup(rt)
    for _ in range(4):
        r = await sign_in(client, email, password="wrong password!")
        assert r.status_code == 422 and 'id="password-error"' in r.text and email in r.text
    r = await sign_in(client, email, password="wrong password!")
    assert r.status_code == 422 and "15" in r.text
    r = await sign_in(client, email)  # the right password is refused while locked
    assert r.status_code == 422 and "15" in r.text
    assert "vouchers_session" not in r.headers.get("set-cookie", "") or "null" in r.headers.get("set-cookie", "")
    r = await sign_in(client, "nobody@example.org", password="whatever it is")
    assert r.status_code == 422 and 'id="password-error"' in r.text


async def test_csrf_is_required(client, rt) -> None:
    _scheme, _voucher, code, _provider, email = await _setup(rt)
    await csrf(client)
    r = await client.post("/coach/login", data={"email": email, "password": "x" * 20})
    assert r.status_code == 403
    await sign_in(client, email)
    r = await client.post(f"/v/{code}", data={"amount": "10", "category": "coaching", "reference": "x",
                                              "idempotency_key": "k"})
    assert r.status_code == 403
    assert (await reload(rt, Voucher, _voucher.id)).balance_cents == 135000


async def test_coach_of_other_provider_cannot_see_or_reverse(client, rt) -> None:
    scheme, voucher, code, provider_a, email_a = await _setup(rt)
    provider_b, _ = await make_provider(rt, scheme, name="Andere Coach")
    email_b = await make_staff(rt, provider_b.id)
    await sign_in(client, email_a)
    page = await client.get(f"/v/{code}")
    await post_form(client, f"/v/{code}", {"amount": "100", "category": "coaching", "reference": "A-1",
                                           "idempotency_key": form_key(page.text)})
    async with rt.sessionmaker() as session:
        redemption = await session.scalar(select(Redemption))
    await post_form(client, "/coach/logout", {})
    await sign_in(client, email_b)
    listing = await client.get("/coach/redemptions")
    assert "A-1" not in listing.text
    r = await post_form(client, f"/coach/redemptions/{redemption.id}/reversal", {"reason": "not mine"})
    assert r.status_code == 404
    done = await client.get(f"/v/{code}?done={redemption.id}")
    assert "A-1" not in done.text
    assert (await reload(rt, Redemption, redemption.id)).reversed_at is None
    # Provider A reverses its own, within the period; a second time is refused.
    await post_form(client, "/coach/logout", {})
    await sign_in(client, email_a)
    r = await post_form(client, f"/coach/redemptions/{redemption.id}/reversal", {"reason": "x"})
    assert r.status_code == 422 and f'id="reason-{redemption.id}-error"' in r.text
    r = await post_form(client, f"/coach/redemptions/{redemption.id}/reversal", {"reason": "wrong amount"},
                        follow_redirects=False)
    assert r.status_code == 303
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 135000
    r = await post_form(client, f"/coach/redemptions/{redemption.id}/reversal", {"reason": "again"})
    assert r.status_code == 422  # already reversed
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []


async def test_reversal_period_over(client, rt) -> None:
    _scheme, voucher, code, provider, email = await _setup(rt)
    await sign_in(client, email)
    page = await client.get(f"/v/{code}")
    await post_form(client, f"/v/{code}", {"amount": "100", "category": "coaching", "reference": "old",
                                           "idempotency_key": form_key(page.text)})
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(Redemption).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=60)))
        redemption_id = await session.scalar(select(Redemption.id))
    r = await post_form(client, f"/coach/redemptions/{redemption_id}/reversal", {"reason": "too late"})
    assert r.status_code == 422 and "voorbij" in r.text


async def test_report_link_flags_redemption(client, rt, smtp_server) -> None:
    _scheme, voucher, code, provider, email = await _setup(rt)
    await sign_in(client, email)
    page = await client.get(f"/v/{code}")
    await post_form(client, f"/v/{code}", {"amount": "100", "category": "coaching", "reference": "rep",
                                           "idempotency_key": form_key(page.text)})
    await post_form(client, "/coach/logout", {})
    async with rt.sessionmaker() as session:
        redemption = await session.scalar(select(Redemption))
    # The link as the entrepreneur's mail carries it: made when the mail is sent, not stored.
    await outbox.send_due(rt)
    [mail] = [m for m in smtp_server.messages if "/report/" in m.get_payload(decode=True).decode()]
    token = re.search(r"/report/(\S+)", mail.get_payload(decode=True).decode()).group(1)
    r = await client.get(f"/report/{token}")
    assert r.status_code == 200 and "Coach &amp; Co" in r.text and r.headers["cache-control"] == "no-store"
    await post_form(client, f"/report/{token}", {"note": "Ken ik niet"})
    await post_form(client, f"/report/{token}", {"note": "tweede keer"})
    flagged = await reload(rt, Redemption, redemption.id)
    assert flagged.flagged_at is not None and flagged.flag_note == "Ken ik niet"
    r = await client.get(f"/report/{token[:-3]}xyz")
    assert r.status_code == 404


async def test_a_provider_gets_its_mails_in_the_language_it_applied_in(client, rt, smtp_server) -> None:
    """The form sends the page's language; the API takes ``locale``; without it, Dutch."""
    from service.models import Provider
    from tests.helpers import admin_token, bearer, confirm_providers

    await make_scheme(rt)
    await csrf(client, "/coach/apply?lang=en")
    form = {"scheme": "test-scheme", "name": "Learn & Grow", "contact_name": "Lee", "kvk_number": "87654321",
            "email": "info@learn.example",
            "iban": "NL91 ABNA 0417 1643 00", "cat_coaching": "on"}
    done = await post_form(client, "/coach/apply?lang=en", form)
    assert done.status_code == 200 and "info@learn.example" in done.text
    api = {"scheme": "test-scheme", "name": "Leer & Groei", "kvk_number": "87654322", "email": "info@leer.example",
           "iban": "NL91 ABNA 0417 1643 00", "categories": ["coaching"]}
    r = await client.post("/api/v1/provider-applications", json=api)
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/provider-applications", json={**api, "kvk_number": "87654323", "locale": "de"})
    assert r.status_code == 400
    async with rt.sessionmaker() as session:
        assert dict((p.email, p.locale) for p in await session.scalars(select(Provider))) == {
            "info@learn.example": "en", "info@leer.example": "nl"}
        enrolments = list(await session.scalars(select(Enrolment).order_by(Enrolment.id)))
    admin = await admin_token(rt)
    await confirm_providers(rt)
    for enrolment in enrolments:
        r = await client.post(f"/api/v1/admin/enrolments/{enrolment.id}/approval", headers=bearer(admin))
        assert r.status_code == 200
    await outbox.send_due(rt)
    subjects = sorted((m["To"], str(m["Subject"])) for m in smtp_server.messages)
    assert subjects == [
        ("info@learn.example", "Confirm your e-mail address"),
        ("info@learn.example", "You can take part in Test scheme"),
        ("info@leer.example", "Bevestig uw e-mailadres"),
        ("info@leer.example", "U kunt meedoen aan Testregeling"),
    ], subjects


async def test_a_provider_changes_the_language_of_its_mails(client, rt) -> None:
    """A provider that applied in Dutch can have its mails in English from then on."""
    from service import offers
    from service.models import OutboxMessage, Provider
    from service.models_admin import AuditEntry

    _scheme, voucher, _code, provider, email = await _setup(rt)
    await sign_in(client, email)
    r = await client.get("/coach/settings")
    assert r.status_code == 200 and '<option value="nl" selected>' in r.text
    # Anything but Dutch or English is refused next to the field and changes nothing.
    r = await post_form(client, "/coach/settings", {"locale": "de"})
    assert r.status_code == 422 and 'id="locale-error"' in r.text and "Kies Nederlands of Engels." in r.text
    r = await post_form(client, "/coach/settings", {"locale": "x" * 100})
    assert r.status_code == 422 and 'id="locale-error"' in r.text
    assert (await reload(rt, Provider, provider.id)).locale == "nl"
    r = await post_form(client, "/coach/settings", {"locale": "en"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/coach/settings?done=true"
    r = await client.get(r.headers["location"])
    assert 'role="status"' in r.text and '<option value="en" selected>' in r.text
    assert (await reload(rt, Provider, provider.id)).locale == "en"
    async with rt.sessionmaker() as session:
        changes = [(e.before, e.after) for e in await session.scalars(
            select(AuditEntry).where(AuditEntry.table_name == "provider", AuditEntry.action == "update"))]
    assert changes == [({"locale": "nl"}, {"locale": "en"})], changes

    # The next mail to the provider is in English.
    async def hold(session):  # type: ignore[no-untyped-def]
        v = await session.get_one(Voucher, voucher.id)
        return (await vouchers.create_hold(session, rt, v, provider_id=provider.id, category="coaching",
                                           invoice_cents=200_00, reference="H", created_by="entrepreneur")).id

    hold_id = await run_in_transaction(rt.sessionmaker, hold)
    await run_in_transaction(rt.sessionmaker, lambda s: offers.decline_reservation(s, hold_id, provider_id=provider.id))
    async with rt.sessionmaker() as session:
        declined = await session.scalar(select(OutboxMessage).where(OutboxMessage.template == "reservation_declined"))
    assert declined is not None and declined.to_address == provider.email and declined.locale == "en"
    # Signed out, the page sends the visitor to the sign-in page.
    assert (await post_form(client, "/coach/logout", {}, follow_redirects=False)).status_code == 303
    r = await client.get("/coach/settings", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/coach/login")


async def test_statement_names_the_month_and_its_csv_is_the_one_spreadsheet_convention(client, rt) -> None:
    _scheme, voucher, code, provider, email = await _setup(rt)
    r = await sign_in(client, email, next_=f"/v/{code}")
    form = {"amount": "125,50", "category": "coaching", "session_date": dt.date.today().isoformat(),
            "reference": "F-2026-1", "idempotency_key": form_key(r.text)}
    assert (await post_form(client, f"/v/{code}", form, follow_redirects=False)).status_code == 303
    page = await client.get("/coach/statement?month=2026-12&lang=nl")
    assert "<h1>Overzicht van december 2026</h1>" in page.text
    assert "<h1>Statement for December 2026</h1>" in (await client.get("/coach/statement?month=2026-12&lang=en")).text
    month = dt.date.today().strftime("%Y-%m")
    # English readers get the same file: a spreadsheet must not read it differently for them.
    for lang in ("nl", "en"):
        csv = await client.get(f"/coach/statement.csv?month={month}&lang={lang}")
        assert csv.headers["content-type"] == "text/csv; charset=utf-8"
        assert csv.content.startswith(b"\xef\xbb\xbf") and csv.content.count(b"\r\n") == 2
        assert ";125,50;125,50;" in csv.content.decode("utf-8-sig")


async def test_every_mistake_in_the_redemption_form_at_once_with_a_summary_at_the_top(client, rt) -> None:
    _scheme, voucher, code, _provider, email = await _setup(rt)
    await sign_in(client, email)
    page = await client.get(f"/v/{code}")
    r = await post_form(client, f"/v/{code}", {"amount": "12,3,4", "category": "", "session_date": "23-11-2026",
                                               "reference": "", "idempotency_key": form_key(page.text)})
    assert r.status_code == 422
    html = r.text
    for name in ("amount", "category", "session_date", "reference"):
        assert f'id="{name}-error"' in html, name
        assert f'<a href="#{name}">' in html, name  # the summary links to the field
    summary = html.index('id="error-summary-title"')
    assert summary < html.index("<h1>")  # at the top, before the voucher
    assert "<title>Fout:" in html
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == voucher.balance_cents


async def test_scan_page_is_one_read_as_the_api_scan(client, rt) -> None:
    """The page behind the QR code reads its whole context in the API scan's one statement, in no
    transaction; besides it only the session check reads. The API scan is that one statement."""
    scheme, voucher, code, provider, email = await _setup(rt)
    await sign_in(client, email)
    key = form_key((await client.get(f"/v/{code}")).text)
    form = {"amount": "100", "category": "coaching", "session_date": "", "reference": "R-1", "idempotency_key": key}
    done = (await post_form(client, f"/v/{code}", form, follow_redirects=False)).headers["location"]
    for path in (f"/v/{code}", done):
        with Statements() as seen:
            r = await client.get(path)
        assert r.status_code == 200 and "Bakkerij Zon" in r.text
        # The scan, and the session's check of the account. The failed-lookup limit takes its slot
        # before the lookup and gives it back after it, in statements of its own: counted apart.
        assert len(seen.beside_limits) <= 2, seen.sent
        assert len(seen.limits) <= 3, seen.sent  # take (and read the failures), give back
        scans = [sql for sql in seen.work if "voucher v ON v.code_hash" in sql]
        assert len(scans) == 1, seen.sent
    assert "Vastgelegd" in r.text and "100,00" in r.text  # what was just recorded

    _p, token = await make_provider(rt, scheme, name="Tweede Coach")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get(f"/api/v1/vouchers/{code}", headers=headers)).status_code == 200
    with Statements() as seen:
        r = await client.get(f"/api/v1/vouchers/{code}", headers=headers)  # the token is remembered
    assert r.status_code == 200 and r.json()["balance_cents"] == 135000 - 10000
    assert len(seen.beside_limits) == 1, seen.sent  # the scan; the limit's slot is counted apart


async def test_page_redemption_is_the_api_write_with_its_key_stored_in_it(client, rt) -> None:
    """The form's redemption is the API's one read and one write (one statement on PostgreSQL, one
    short transaction on SQLite), the key's answer stored in that write: besides the key's claim,
    at most the session check, the read and the write."""
    scheme, voucher, code, provider, email = await _setup(rt)
    await sign_in(client, email)
    key = form_key((await client.get(f"/v/{code}")).text)
    form = {"amount": "100", "category": "coaching", "session_date": "", "reference": "R-1", "idempotency_key": key}
    with Statements() as seen:
        r = await post_form(client, f"/v/{code}", form, follow_redirects=False)
    assert r.status_code == 303, r.text
    claim = [sql for sql in seen.work if ("idempotency_record" in sql or "SAVEPOINT" in sql)
             and "INSERT INTO redemption" not in sql]
    writes = [sql for sql in seen.work if "INSERT INTO redemption" in sql]
    assert len(writes) == 1, seen.sent
    if not rt.settings.is_sqlite:
        # The session check, the read, the write (the failed-lookup limit's slot counted apart).
        assert len(seen.beside_limits) - len(claim) <= 3, "\n".join(s[:80] for s in seen.sent)
    # A reload of the POST gets the stored answer: the same redirect, no second debit.
    again = await post_form(client, f"/v/{code}", form, follow_redirects=False)
    assert again.headers["location"] == r.headers["location"]
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == 135000 - 10000
