"""A form whose CSRF check fails (the cookie was lost) comes back filled in, with a fresh token and
a plain message, status 403; nothing is done, and passwords and codes are never written back."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from service.models import Application, Redemption, Voucher
from tests import admin_helpers, coach_helpers
from tests.entrepreneur_journey import FORM, csrf
from tests.helpers import make_provider, make_scheme, make_voucher, reload

HTML = {"Accept": "text/html,application/xhtml+xml"}
NOTICE = "Uw formulier is niet verstuurd"


async def _post_without_cookie(client: Any, page: str, action: str, data: dict[str, str]) -> Any:
    """Load the page, lose the CSRF cookie (a restarted browser keeps only lasting cookies), post."""
    html = (await client.get(page, headers=HTML)).text
    token = csrf(html)
    client.cookies.delete("csrftoken")
    return await client.post(action, data={**data, "_csrf_token": token, "_form_page": page}, headers=HTML,
                             follow_redirects=False), token


def _value(html: str, field_id: str) -> str | None:
    match = re.search(rf'<input[^>]*id="{re.escape(field_id)}"[^>]*>', html)
    assert match, f"no input {field_id}"
    value = re.search(r'value="([^"]*)"', match.group(0))
    return value.group(1) if value else None


def _textarea(html: str, field_id: str) -> str:
    match = re.search(rf'<textarea[^>]*id="{re.escape(field_id)}"[^>]*>(.*?)</textarea>', html, re.S)
    assert match, f"no textarea {field_id}"
    return match.group(1)


async def test_the_apply_form_comes_back_filled_in(client, rt) -> None:
    await make_scheme(rt)
    page = "/regelingen/test-scheme/aanvragen"
    fields = {**FORM, "company_name": "Bakkerij <De Test> & Zn"}
    r, old = await _post_without_cookie(client, page, page, fields)
    assert r.status_code == 403
    assert NOTICE in r.text and 'role="alert"' in r.text
    assert _value(r.text, "kvk_number") == "20000001"
    assert _value(r.text, "company_name") == "Bakkerij &lt;De Test&gt; &amp; Zn"
    assert _value(r.text, "email") == "jan@example.org"
    assert _textarea(r.text, "purpose") == "Coaching om nieuwe klanten te vinden"
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(Application))) == []
    # A fresh token, in the form and in the cookie: sending it again works.
    fresh = csrf(r.text)
    assert fresh != old and client.cookies.get("csrftoken") == fresh
    again = await client.post(page, data={**fields, "_csrf_token": fresh}, headers=HTML, follow_redirects=False)
    assert again.status_code == 303, again.text


async def test_without_the_pages_name_or_a_page(client, rt) -> None:
    await make_scheme(rt)
    # Without the page's name (a form from before this change) the path posted to is the page.
    r = await client.post("/regelingen/test-scheme/aanvragen", data=FORM, headers=HTML)
    assert r.status_code == 403 and _value(r.text, "kvk_number") == "20000001"
    # No page to show it on: the plain message says what to do.
    r = await client.post("/mijn-voucher/uitloggen", data={"_csrf_token": "x"}, headers=HTML)
    assert r.status_code == 403 and NOTICE in r.text
    # A program that posts JSON gets a problem document, as before.
    r = await client.post("/regelingen/test-scheme/aanvragen", json=FORM)
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")


async def test_a_coach_form_comes_back_filled_in_and_a_password_never(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme, company_name="Bakkerij Zon")
    provider, _token = await make_provider(rt, scheme)
    email = await coach_helpers.make_staff(rt, provider.id)
    r, _old = await _post_without_cookie(client, "/coach/login", "/coach/login",
                                         {"email": email, "password": coach_helpers.PASSWORD, "next": "/coach"})
    assert r.status_code == 403 and NOTICE in r.text
    assert _value(r.text, "email") == email
    assert coach_helpers.PASSWORD not in r.text and "Typ ze opnieuw" in r.text
    await coach_helpers.sign_in(client, email)
    page = (await client.get(f"/v/{code}", headers=HTML)).text
    form = {"amount": "125,50", "category": "coaching", "session_date": "", "reference": "F-77",
            "idempotency_key": coach_helpers.form_key(page)}
    r, _old = await _post_without_cookie(client, f"/v/{code}", f"/v/{code}", form)
    assert r.status_code == 403 and NOTICE in r.text
    assert _value(r.text, "amount") == "125,50" and _value(r.text, "reference") == "F-77"
    assert '<option value="coaching" selected>' in r.text
    assert coach_helpers.form_key(r.text) == form["idempotency_key"]  # sending it again cannot pay twice
    assert (await reload(rt, Voucher, voucher.id)).balance_cents == voucher.balance_cents
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(Redemption))) == []


async def test_a_beheer_form_comes_back_filled_in_and_a_totp_code_never(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme, company_name="Drukkerij Rijn")
    email, secret = await admin_helpers.make_staff(rt, "beheerder")
    await admin_helpers.csrf(client)
    r = await admin_helpers.post_form(client, "/beheer/inloggen", {"email": email, "password": admin_helpers.PASSWORD,
                                                                    "next": "/beheer"}, follow_redirects=False)
    assert r.status_code == 303
    code = admin_helpers.next_code(secret)
    r, _old = await _post_without_cookie(client, "/beheer/inloggen/code", "/beheer/inloggen/code", {"code": code})
    assert r.status_code == 403 and NOTICE in r.text and code not in r.text
    r = await client.post("/beheer/inloggen/code", data={"code": code, "_csrf_token": csrf(r.text)},
                          follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/beheer"
    page = f"/beheer/vouchers/{voucher.id}"
    r, _old = await _post_without_cookie(client, page, f"{page}/verlengen",
                                         {"until": "2030-01-31", "reason": "ziek geweest"})
    assert r.status_code == 403 and NOTICE in r.text
    assert _value(r.text, "extend_until") == "2030-01-31" and _textarea(r.text, "extend_reason") == "ziek geweest"
    assert _textarea(r.text, "revoke_reason") == ""  # only the form that was sent
    assert '<a href="#extend_until">Naar het formulier</a>' in r.text  # it is further down the page
    assert (await reload(rt, Voucher, voucher.id)).expires_at == voucher.expires_at


async def test_a_refused_confirmation_shows_the_page_the_form_came_from(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme, company_name="Drukkerij Rijn")
    await admin_helpers.staff_client_sign_in(client, rt, "beheerder")
    page = f"/beheer/vouchers/{voucher.id}"
    html = (await client.get(page, headers=HTML)).text
    asked = await client.post(f"{page}/intrekken", headers=HTML, data={
        "reason": "fraude", "_csrf_token": csrf(html), "_form_page": page})
    assert asked.status_code == 200 and "Voucher intrekken?" in asked.text
    # The confirmation names the voucher's page, not the path it was posted to.
    assert f'name="_form_page" value="{page}"' in asked.text
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', asked.text))
    client.cookies.delete("csrftoken")
    r = await client.post(f"{page}/intrekken", headers=HTML, data=hidden, follow_redirects=False)
    assert r.status_code == 403 and NOTICE in r.text
    assert _textarea(r.text, "revoke_reason") == "fraude"
    assert (await reload(rt, Voucher, voucher.id)).status == "active"
