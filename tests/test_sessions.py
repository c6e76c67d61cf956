"""One session mechanism for every journey, kept on the server: a signed-in person loses access as
soon as they log out, log out everywhere, get a new password or have their account disabled, in
every server process; sessions run out after an idle and an absolute time per role; the cookie
carries only a random id and is sent only when it changes."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, update

from service import municipality, privacy, sessions, staff, worker
from service.app import create_app
from service.db import run_in_transaction
from service.models import ProviderUser, UserSession, utcnow
from service.models_admin import StaffUser
from service.runtime import Runtime
from tests import admin_helpers, coach_helpers
from tests.entrepreneur_journey import deliver, link, sign_in_as
from tests.helpers import make_provider, make_scheme, make_voucher

COOKIE = "vouchers_session"


# --- signing in as each role, and a page only that role may see --------------------------------

class Role(msgspec.Struct, frozen=True):
    name: str
    page: str
    """A page only a signed-in person of this role gets (200)."""
    login: str
    """Where the page sends someone who is not (or no longer) signed in."""
    everywhere: str
    """The "log out everywhere" button's action."""
    menu: str
    """The page whose menu has that button."""


ROLES = {
    "staff": Role("staff", "/beheer", "/beheer/inloggen", "/beheer/overal-uitloggen", "/beheer"),
    "coach": Role("coach", "/coach/redemptions", "/coach/login", "/coach/logout-everywhere", "/coach/redemptions"),
    "entrepreneur": Role("entrepreneur", "/mijn-voucher/afdrukken", "", "/mijn-voucher/overal-uitloggen",
                         "/mijn-voucher"),
}


async def make_account(rt: Runtime, role: str) -> str:
    """An account (an e-mail address) that can sign in as ``role``."""
    if role == "staff":
        email, secret = await admin_helpers.make_staff(rt, "beheerder")
        _SECRETS[email] = secret
        return email
    scheme = await make_scheme(rt)
    if role == "coach":
        provider, _ = await make_provider(rt, scheme)
        return await coach_helpers.make_staff(rt, provider.id)
    email = f"ondernemer{len(_SECRETS)}@example.org"
    _SECRETS[email] = ""
    await make_voucher(rt, scheme, email=email)
    return email


_SECRETS: dict[str, str] = {}


async def sign_in(client: Any, rt: Runtime, smtp: Any, role: str, email: str) -> None:
    if role == "staff":
        # A code works once; a test that signs in twice within 30 seconds forgets the code used.
        async with rt.sessionmaker() as session, session.begin():
            await session.execute(update(StaffUser).where(StaffUser.email == email).values(last_totp_step=0))
        answer = await admin_helpers.sign_in(client, email, _SECRETS[email])
        assert answer.status_code == 303 and answer.headers["location"] == "/beheer", answer.text
    elif role == "coach":
        answer = await coach_helpers.sign_in(client, email)
        assert answer.status_code == 200, answer.text
    else:
        await sign_in_as(client, rt, smtp, email)
    assert await signed_in(client, role)


async def signed_in(client: Any, role: str) -> bool:
    answer = await client.get(ROLES[role].page, follow_redirects=False)
    if answer.status_code == 200:
        return True
    assert answer.status_code in (302, 303, 401), answer.status_code
    if ROLES[role].login:
        assert ROLES[role].login in answer.headers.get("location", "")
    return False


@asynccontextmanager
async def another_instance(rt: Runtime) -> AsyncIterator[AsyncTestClient]:
    """A second app, as another server process or host would run it: it shares only the database."""
    async with AsyncTestClient(app=create_app(rt.settings), base_url="http://testserver.local") as other:
        yield other


def copy_session(source: Any, target: Any) -> str:
    value = source.cookies.get(COOKIE)
    assert value
    target.cookies.set(COOKIE, value)
    return value


async def csrf_post(client: Any, menu: str, action: str) -> Any:
    page = await client.get(menu)
    assert f'action="{action}"' in page.text, "the button is on the menu page"
    token = client.cookies.get("csrftoken")
    return await client.post(action, data={"_csrf_token": token}, follow_redirects=False)


async def count_sessions(rt: Runtime, **where: Any) -> int:
    async with rt.sessionmaker() as session:
        query = select(func.count()).select_from(UserSession)
        for key, value in where.items():
            query = query.where(getattr(UserSession, key) == value)
        return int(await session.scalar(query) or 0)


# --- ending a session ------------------------------------------------------------------------------

@pytest.mark.parametrize("role", list(ROLES))
async def test_a_copied_cookie_stops_working_after_logout_in_every_instance(client, rt, smtp_server, role) -> None:
    email = await make_account(rt, role)
    await sign_in(client, rt, smtp_server, role, email)
    async with another_instance(rt) as thief:
        copy_session(client, thief)
        assert await signed_in(thief, role), "the session is the database's, so any instance knows it"
        logout = {"staff": "/beheer/uitloggen", "coach": "/coach/logout", "entrepreneur": "/mijn-voucher/uitloggen"}
        menu = ROLES[role].menu
        answer = await csrf_post(client, menu, logout[role])
        assert answer.status_code == 303
        assert f"{COOKIE}=;" in answer.headers["set-cookie"] and "Max-Age=0" in answer.headers["set-cookie"]
        assert not await signed_in(client, role)
        assert not await signed_in(thief, role), "a copy taken before logout no longer works"


@pytest.mark.parametrize("role", list(ROLES))
async def test_log_out_everywhere_ends_the_other_sessions_of_the_account(client, rt, smtp_server, role) -> None:
    email = await make_account(rt, role)
    await sign_in(client, rt, smtp_server, role, email)
    async with another_instance(rt) as laptop:
        await sign_in(laptop, rt, smtp_server, role, email)
        assert client.cookies.get(COOKIE) != laptop.cookies.get(COOKIE)
        answer = await csrf_post(laptop, ROLES[role].menu, ROLES[role].everywhere)
        assert answer.status_code == 303
        assert "overal" in answer.headers["location"]
        assert "elk apparaat" in (await laptop.get(answer.headers["location"])).text
        assert not await signed_in(laptop, role)
    assert not await signed_in(client, role), "the session on the other device ended too"
    assert await count_sessions(rt, revoked=False) == 0


async def test_log_out_everywhere_needs_the_csrf_token(client, rt, smtp_server) -> None:
    email = await make_account(rt, "coach")
    await sign_in(client, rt, smtp_server, "coach", email)
    answer = await client.post("/coach/logout-everywhere", data={}, follow_redirects=False)
    assert answer.status_code == 403
    assert await signed_in(client, "coach")


async def test_log_out_everywhere_leaves_other_accounts_signed_in(client, rt, smtp_server) -> None:
    mine, theirs = await make_account(rt, "staff"), await make_account(rt, "staff")
    await sign_in(client, rt, smtp_server, "staff", mine)
    async with another_instance(rt) as colleague:
        await sign_in(colleague, rt, smtp_server, "staff", theirs)
        await csrf_post(client, "/beheer", "/beheer/overal-uitloggen")
        assert await signed_in(colleague, "staff")


async def test_a_password_reset_ends_every_session_of_a_provider_account(client, rt, smtp_server) -> None:
    email = await make_account(rt, "coach")
    await sign_in(client, rt, smtp_server, "coach", email)
    async with another_instance(rt) as other:
        await coach_helpers.csrf(other, "/coach/wachtwoord-vergeten")
        assert (await coach_helpers.post_form(other, "/coach/wachtwoord-vergeten", {"email": email})).status_code == 200
        reset = link((await deliver(rt, smtp_server))[-1], "/coach/wachtwoord/")
        new = "een heel nieuw wachtwoord"
        saved = await coach_helpers.post_form(other, reset, {"password": new, "repeat": new}, follow_redirects=False)
        assert saved.status_code == 303
    assert not await signed_in(client, "coach")
    # A password handed out by the municipality (``vouchers staff reset-password``) does the same.
    password = "een heel nieuw wachtwoord"
    assert (await coach_helpers.sign_in(client, email, password)).status_code == 200
    assert await signed_in(client, "coach")
    await run_in_transaction(rt.sessionmaker, lambda s: staff.reset_password(s, email))
    assert not await signed_in(client, "coach")


async def test_a_new_password_or_a_disabled_account_ends_a_staff_members_sessions(client, rt, smtp_server) -> None:
    email = await make_account(rt, "staff")
    await sign_in(client, rt, smtp_server, "staff", email)
    await run_in_transaction(rt.sessionmaker, lambda s: municipality.set_disabled(s, email, True))
    assert not await signed_in(client, "staff")
    assert await count_sessions(rt, revoked=False) == 0, "revoked, not only refused"
    await run_in_transaction(rt.sessionmaker, lambda s: municipality.set_disabled(s, email, False))
    assert not await signed_in(client, "staff"), "enabling the account again does not bring the session back"

    await sign_in(client, rt, smtp_server, "staff", email)
    # A lost phone or password: the account is set up again, and the old sessions end.
    await run_in_transaction(rt.sessionmaker, lambda s: municipality.reset_setup(s, rt, email))
    assert not await signed_in(client, "staff")


async def test_a_disabled_provider_account_is_signed_out_at_its_next_request(client, rt, smtp_server) -> None:
    email = await make_account(rt, "coach")
    await sign_in(client, rt, smtp_server, "coach", email)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(ProviderUser).where(ProviderUser.email == email).values(disabled_at=utcnow()))
    async with another_instance(rt) as other:
        copy_session(client, other)
        assert not await signed_in(other, "coach")
    assert not await signed_in(client, "coach")


async def test_a_removed_colleague_is_signed_out_and_their_sessions_deleted(client, rt, smtp_server) -> None:
    scheme = await make_scheme(rt)
    provider, _ = await make_provider(rt, scheme)
    me, colleague = await coach_helpers.make_staff(rt, provider.id), await coach_helpers.make_staff(rt, provider.id)
    await sign_in(client, rt, smtp_server, "coach", colleague)
    async with rt.sessionmaker() as session:
        ids = dict((await session.execute(select(ProviderUser.email, ProviderUser.id))).all())
    await run_in_transaction(rt.sessionmaker, lambda s: staff.remove(
        s, provider_id=provider.id, user_id=ids[colleague], removed_by=ids[me]))
    assert not await signed_in(client, "coach")
    assert await count_sessions(rt, subject_id=ids[colleague]) == 0


async def test_a_forged_session_cookie_gets_nothing(client, rt) -> None:
    client.cookies.set(COOKIE, "bm90IGEgcmVhbCBzZXNzaW9u")
    answer = await client.get("/coach/redemptions", follow_redirects=False)
    assert answer.status_code in (302, 303)
    # The browser is told once to forget a cookie whose session does not exist.
    assert f"{COOKIE}=;" in answer.headers["set-cookie"]


async def test_a_staff_members_changed_role_needs_a_new_sign_in(client, rt, smtp_server) -> None:
    email = await make_account(rt, "staff")
    await sign_in(client, rt, smtp_server, "staff", email)
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(StaffUser).where(StaffUser.email == email).values(role="lezer"))
    answer = await client.get("/beheer", follow_redirects=False)
    assert answer.status_code in (302, 303) and "/beheer/inloggen" in answer.headers["location"]


# --- timeouts, on a clock the tests move ----------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def move(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(sessions, "clock", moved)
    return moved


@pytest.mark.parametrize("role", list(ROLES))
async def test_a_session_ends_after_its_roles_idle_time(client, rt, smtp_server, clock, role) -> None:
    idle, _ = rt.settings.session_timeouts({"coach": "provider-staff"}.get(role, role))
    email = await make_account(rt, role)
    await sign_in(client, rt, smtp_server, role, email)
    # Used now and then, a session lives on: each use counts (within the minute it is written at).
    for _ in range(3):
        clock.move(seconds=idle - 90)
        assert await signed_in(client, role)
    clock.move(seconds=idle + 1)
    assert not await signed_in(client, role)
    clock.move(seconds=-(idle + 1))
    assert not await signed_in(client, role), "once the cookie was refused it is forgotten"


@pytest.mark.parametrize("role", list(ROLES))
async def test_a_session_ends_after_its_roles_absolute_time_however_busy(client, rt, smtp_server, clock,
                                                                          role) -> None:
    idle, absolute = rt.settings.session_timeouts({"coach": "provider-staff"}.get(role, role))
    email = await make_account(rt, role)
    await sign_in(client, rt, smtp_server, role, email)
    step = min(idle - 90, 15 * 60)
    passed = 0
    while passed + step < absolute:
        clock.move(seconds=step)
        passed += step
        assert await signed_in(client, role)
    clock.move(seconds=absolute - passed)
    assert not await signed_in(client, role)


async def test_staff_sessions_are_shorter_than_coaches_and_entrepreneurs(client, rt, smtp_server, clock) -> None:
    settings = rt.settings
    assert settings.session_timeouts("staff") == (30 * 60, 8 * 3600)
    for kind in ("provider-staff", "entrepreneur"):
        idle, absolute = settings.session_timeouts(kind)
        assert idle > 30 * 60 and absolute > 8 * 3600
    staff_email, coach_email = await make_account(rt, "staff"), await make_account(rt, "coach")
    await sign_in(client, rt, smtp_server, "staff", staff_email)
    async with another_instance(rt) as coach:
        await sign_in(coach, rt, smtp_server, "coach", coach_email)
        clock.move(minutes=31)
        assert not await signed_in(client, "staff")
        assert await signed_in(coach, "coach")


def test_timeouts_come_from_the_settings() -> None:
    from service.settings import Settings

    settings = Settings.from_env({"VOUCHERS_SESSION_IDLE_MINUTES_COACH": "5",
                                  "VOUCHERS_SESSION_ABSOLUTE_HOURS_COACH": "1",
                                  "VOUCHERS_SESSION_IDLE_MINUTES_STAFF": "10"})
    assert settings.session_timeouts("provider-staff") == (300, 3600)
    assert settings.session_timeouts("staff") == (600, 8 * 3600)
    assert settings.session_timeouts("entrepreneur") == (60 * 60, 12 * 3600)


# --- the cookie, and when it is sent ---------------------------------------------------------------

async def test_the_cookie_holds_only_a_random_id_and_the_database_only_its_hash(client, rt, smtp_server) -> None:
    email = await make_account(rt, "coach")
    async with rt.sessionmaker() as session:
        user = await session.scalar(select(ProviderUser).where(ProviderUser.email == email))
    await coach_helpers.csrf(client)
    answer = await coach_helpers.post_form(client, "/coach/login", {"email": email, "password": coach_helpers.PASSWORD,
                                                                    "next": "/coach"}, follow_redirects=False)
    header = answer.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    value = client.cookies.get(COOKIE)
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert len(raw) == 32, "32 random bytes, nothing else"
    for personal in (email, user.name, "coach", "provider"):
        assert personal not in value and personal.encode() not in raw
    async with rt.sessionmaker() as session:
        row = await session.scalar(select(UserSession))
    assert row is not None and row.id_hash == sessions.id_hash(rt.settings, value)
    assert value.encode() not in row.id_hash and raw != row.id_hash
    assert (row.kind, row.role, row.subject_id, row.revoked) == ("provider-staff", "coach", user.id, False)


async def test_on_https_the_cookie_is_secure_and_host_only(rt) -> None:
    settings = msgspec.structs.replace(rt.settings, base_url="https://vouchers.example")
    scheme = await make_scheme(rt)
    provider, _ = await make_provider(rt, scheme)
    email = await coach_helpers.make_staff(rt, provider.id)
    async with AsyncTestClient(app=create_app(settings), base_url="https://vouchers.example") as client:
        await coach_helpers.csrf(client)
        answer = await coach_helpers.post_form(client, "/coach/login", {
            "email": email, "password": coach_helpers.PASSWORD, "next": "/coach"}, follow_redirects=False)
        header = answer.headers["set-cookie"]
        assert header.startswith("__Host-vouchers_session=") and "Secure" in header and "Path=/" in header
        assert "Domain" not in header
        assert (await client.get("/coach/redemptions", follow_redirects=False)).status_code == 200


@pytest.mark.parametrize("role", list(ROLES))
async def test_ordinary_answers_send_no_cookie(client, rt, smtp_server, clock, role) -> None:
    email = await make_account(rt, role)
    await sign_in(client, rt, smtp_server, role, email)
    for minutes in (0, 2, 3):  # also when the session's last use is written
        clock.move(minutes=minutes)
        for path in (ROLES[role].page, ROLES[role].menu, "/"):
            answer = await client.get(path, follow_redirects=False)
            assert answer.status_code == 200
            assert "set-cookie" not in answer.headers, (path, answer.headers["set-cookie"])


async def test_last_use_is_written_at_most_once_a_minute(client, rt, smtp_server, clock) -> None:
    email = await make_account(rt, "coach")
    await sign_in(client, rt, smtp_server, "coach", email)

    async def last_seen() -> dt.datetime:
        async with rt.sessionmaker() as session:
            return (await session.scalar(select(UserSession.last_seen_at)))  # type: ignore[return-value]

    first = await last_seen()
    clock.move(seconds=30)
    assert await signed_in(client, "coach")
    assert await last_seen() == first
    clock.move(seconds=31)
    assert await signed_in(client, "coach")
    assert await last_seen() == clock.now


async def test_the_check_is_one_statement(rt, clock) -> None:
    """The session, its account and whether that may still be used, in one round trip; the
    last use is written only when a minute has passed."""
    scheme = await make_scheme(rt)
    provider, _ = await make_provider(rt, scheme)
    email = await coach_helpers.make_staff(rt, provider.id)
    async with rt.sessionmaker() as session:
        user = await session.scalar(select(ProviderUser).where(ProviderUser.email == email))
    principal = sessions.Principal(kind="provider-staff", role="coach", subject_id=user.id, name="x",
                                   provider_id=provider.id)
    session_id = await run_in_transaction(rt.sessionmaker, lambda s: sessions.create(s, rt.settings, principal))
    calls: list[str] = []

    def counted(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)
        return wrapper

    for name in ("read_sqlite", "fetchrow", "write"):
        object.__setattr__(rt.fast, name, counted(name, getattr(rt.fast, name)))
    found = await sessions.lookup(rt, session_id)
    assert found is not None and found.provider_id == provider.id and found.name.endswith(f"({provider.name})")
    assert len(calls) == 1, calls
    clock.move(minutes=2)
    calls.clear()
    assert await sessions.lookup(rt, session_id) is not None
    assert len(calls) == 2, "the check, and the one write of the last use"
    assert sessions.TOUCH_SECONDS == 60


# --- removing sessions that ended --------------------------------------------------------------------

async def test_the_background_process_deletes_ended_sessions(client, rt, smtp_server, clock) -> None:
    first, second = await make_account(rt, "coach"), await make_account(rt, "staff")
    await sign_in(client, rt, smtp_server, "coach", first)
    async with another_instance(rt) as other:
        await sign_in(other, rt, smtp_server, "staff", second)
        await csrf_post(other, "/beheer", "/beheer/uitloggen")
    assert await count_sessions(rt) == 2
    assert await worker.purge_sessions(rt) == 1, "the revoked one"
    clock.move(minutes=60)
    assert await worker.purge_sessions(rt) == 0, "a coach may be idle for longer"
    clock.move(hours=12)
    assert await worker.purge_sessions(rt) == 1
    assert await count_sessions(rt) == 0


async def test_a_privacy_purge_removes_the_sessions_of_purged_vouchers(client, rt, smtp_server) -> None:
    email = await make_account(rt, "entrepreneur")
    await sign_in(client, rt, smtp_server, "entrepreneur", email)
    assert await count_sessions(rt, kind="entrepreneur") == 1
    later = utcnow() + dt.timedelta(days=5000)
    await run_in_transaction(rt.sessionmaker, lambda s: privacy.purge(s, rt, after_days=0, now=later))
    assert await count_sessions(rt, kind="entrepreneur") == 0
    assert not await signed_in(client, "entrepreneur")


async def test_sign_in_replaces_the_session_the_browser_had(client, rt, smtp_server) -> None:
    email = await make_account(rt, "coach")
    await sign_in(client, rt, smtp_server, "coach", email)
    before = client.cookies.get(COOKIE)
    await sign_in(client, rt, smtp_server, "coach", email)
    assert client.cookies.get(COOKIE) != before
    assert await count_sessions(rt, revoked=False) == 1
