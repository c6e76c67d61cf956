"""Municipality staff: every screen and action refused on the server to the roles that may not
use it (table-driven), the TOTP second factor, lock-out, the per-IP limit and CSRF."""

from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import select

from service import municipality
from service.db import run_in_transaction
from service.models import StaffUser
from tests.admin_helpers import PASSWORD, csrf, make_staff, next_code, post_form, sign_in, staff_client_sign_in
from tests.helpers import make_scheme, make_voucher

ROLES = ("beheerder", "beoordelaar", "financieel", "lezer")
ALL = set(ROLES)
PERSONAL = {"beheerder", "beoordelaar", "lezer"}
REVIEW = {"beheerder", "beoordelaar"}
FINANCE = {"beheerder", "financieel"}
REPORTS = {"beheerder", "financieel", "lezer"}
AUDIT = {"beheerder", "lezer"}
ADMIN = {"beheerder"}

#: (method, path, allowed roles, form). {v} is a voucher id, {r} a redemption id that does not exist.
SCREENS = [
    ("GET", "/beheer", ALL, None),
    ("GET", "/beheer/regelingen/test-scheme", ALL, None),
    ("GET", "/beheer/aanvragen", PERSONAL, None),
    ("GET", "/beheer/aanbieders", PERSONAL, None),
    ("GET", "/beheer/meldingen", PERSONAL, None),
    ("GET", "/beheer/vouchers?q=1", PERSONAL, None),
    ("GET", "/beheer/vouchers/{v}", PERSONAL, None),
    ("GET", "/beheer/audit", AUDIT, None),
    ("GET", "/beheer/rapportage/test-scheme", REPORTS, None),
    ("GET", "/beheer/rapportage/test-scheme/csv", REPORTS, None),
    ("GET", "/beheer/privacy", ADMIN, None),
    ("POST", "/beheer/privacy/export", ADMIN, {"kvk_number": "12345678"}),
    ("POST", "/beheer/regelingen/test-scheme/sluiten", ADMIN, {"reason": "x"}),
    ("POST", "/beheer/regelingen/test-scheme/reserve", FINANCE, {"amount": "", "direction": "", "memo": ""}),
    ("POST", "/beheer/aanvragen/999/besluit", REVIEW, {"decision": "", "reason": ""}),
    ("POST", "/beheer/aanbieders/999/besluit", REVIEW, {"decision": "", "reason": ""}),
    ("POST", "/beheer/meldingen/999/besluit", REVIEW, {"decision": "", "reason": ""}),
    ("POST", "/beheer/vouchers/{v}/intrekken", REVIEW, {"reason": ""}),
    ("POST", "/beheer/vouchers/{v}/verlengen", REVIEW, {"until": "", "reason": ""}),
    ("POST", "/beheer/verzilveringen/999/terugdraaien", REVIEW, {"reason": ""}),
]


@pytest.mark.parametrize("role", ROLES)
async def test_every_screen_and_action_is_guarded_by_role(client, rt, role) -> None:
    scheme = await make_scheme(rt)
    voucher, _code = await make_voucher(rt, scheme)
    await staff_client_sign_in(client, rt, role)
    for method, path, allowed, form in SCREENS:
        url = path.format(v=voucher.id)
        if method == "GET":
            r = await client.get(url, follow_redirects=False)
        else:
            r = await post_form(client, url, form or {}, follow_redirects=False)
        if role in allowed:
            # Allowed: the page, or the action refusing the (deliberately empty) input, never 403.
            assert r.status_code in (200, 303, 404, 422), (role, url, r.status_code, r.text[:300])
        else:
            assert r.status_code == 403, (role, url, r.status_code)
    # Nothing an unallowed role tried changed anything.
    async with rt.sessionmaker() as session:
        from service.models import Scheme, Voucher

        assert (await session.get_one(Voucher, voucher.id)).status == "active"
        assert (await session.get_one(Scheme, scheme.id)).closed_at is None


async def test_signed_out_is_sent_to_sign_in_and_other_principals_are_refused(client, rt) -> None:
    await make_scheme(rt)
    r = await client.get("/beheer/regelingen/test-scheme", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/beheer/inloggen?next=")
    r = await post_form(client, "/beheer/regelingen/test-scheme/sluiten", {"reason": "weg ermee"},
                        follow_redirects=False)
    assert r.status_code == 303 and "/beheer/inloggen" in r.headers["location"]


async def test_password_alone_is_not_enough(client, rt) -> None:
    email, secret = await make_staff(rt, "beheerder")
    await csrf(client)
    r = await post_form(client, "/beheer/inloggen", {"email": email, "password": PASSWORD, "next": "/beheer"},
                        follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/beheer/inloggen/code"
    # Half-way: not signed in.
    assert (await client.get("/beheer", follow_redirects=False)).status_code == 303
    wrong = await post_form(client, "/beheer/inloggen/code", {"code": "000000"})
    assert wrong.status_code == 422 and 'id="code-error"' in wrong.text
    code = next_code(secret)
    ok = await post_form(client, "/beheer/inloggen/code", {"code": code}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/beheer"
    assert (await client.get("/beheer")).status_code == 200
    # A code works once. The same code, not a new call of next_code: past a 30-second boundary that
    # would be the code of a later step, which may rightly be used.
    await post_form(client, "/beheer/uitloggen", {})
    await post_form(client, "/beheer/inloggen", {"email": email, "password": PASSWORD})
    again = await post_form(client, "/beheer/inloggen/code", {"code": code})
    assert again.status_code == 422


async def test_lock_out_after_failures_is_kept_in_the_database(client, rt) -> None:
    email, secret = await make_staff(rt, "lezer")
    await csrf(client)
    for _ in range(municipality.LOCK_AFTER - 1):
        r = await post_form(client, "/beheer/inloggen", {"email": email, "password": "fout wachtwoord!!"})
        assert r.status_code == 422
    r = await post_form(client, "/beheer/inloggen", {"email": email, "password": "fout wachtwoord!!"})
    assert r.status_code == 422 and "15" in r.text
    async with rt.sessionmaker() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.email == email))
        assert user.locked_until is not None
    # Even the right password and code are refused while locked.
    r = await post_form(client, "/beheer/inloggen", {"email": email, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 422
    # Wrong codes count too.
    email2, _secret2 = await make_staff(rt, "lezer")
    await post_form(client, "/beheer/inloggen", {"email": email2, "password": PASSWORD})
    for _ in range(municipality.LOCK_AFTER):
        r = await post_form(client, "/beheer/inloggen/code", {"code": "123456"})
    assert r.status_code == 422
    async with rt.sessionmaker() as session:
        user2 = await session.scalar(select(StaffUser).where(StaffUser.email == email2))
        assert user2.locked_until is not None


async def test_per_ip_rate_limit(client, rt, monkeypatch) -> None:
    from service.admin import signin

    monkeypatch.setattr(signin, "SIGN_IN_LIMIT", 3)
    await csrf(client)
    codes = [(await post_form(client, "/beheer/inloggen", {"email": f"x{i}@arnhem.example", "password": "x"})).status_code
             for i in range(5)]
    assert codes[:3] == [422, 422, 422] and codes[3:] == [429, 429]


async def test_forms_need_the_csrf_token(client, rt) -> None:
    await make_scheme(rt)
    await staff_client_sign_in(client, rt, "beheerder")
    r = await client.post("/beheer/regelingen/test-scheme/sluiten", data={"reason": "zonder token"})
    assert r.status_code == 403
    page = await client.get("/beheer/regelingen/test-scheme")
    assert page.text.count('name="_csrf_token"') >= 3


async def test_setup_link_works_once(client, rt) -> None:
    async def create(session):  # type: ignore[no-untyped-def]
        user = await municipality.create_staff(session, rt, email="nieuw@arnhem.example", name="Nieuw",
                                               role="financieel")
        return await municipality.setup_link(session, rt, user), municipality.totp_secret(rt, user)

    link, secret = await run_in_transaction(rt.sessionmaker, create)
    path = link.removeprefix(rt.settings.base_url)
    page = await client.get(path)
    assert page.status_code == 200 and "data:image/svg+xml;base64," in page.text
    assert " ".join(secret[i:i + 4] for i in range(0, len(secret), 4)) in page.text
    bad = await post_form(client, path, {"password": "kort", "repeat": "kort", "code": "000000"})
    assert bad.status_code == 422 and 'id="password-error"' in bad.text
    done = await post_form(client, path, {"password": PASSWORD, "repeat": PASSWORD,
                                          "code": pyotp.TOTP(secret).now()}, follow_redirects=False)
    assert done.status_code == 303
    assert (await client.get(path)).status_code == 404
    r = await sign_in(client, "nieuw@arnhem.example", secret)
    assert r.status_code == 303 and r.headers["location"] == "/beheer"
