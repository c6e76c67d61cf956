"""One session mechanism for every journey: a signed-in person loses access as soon as their
account is disabled, not when the cookie runs out."""

from __future__ import annotations

from sqlalchemy import update

from service.models import ProviderUser, utcnow
from tests.coach_helpers import make_staff, sign_in
from tests.helpers import make_provider, make_scheme


async def test_a_disabled_provider_account_is_signed_out_at_its_next_request(client, rt) -> None:
    scheme = await make_scheme(rt)
    provider, _ = await make_provider(rt, scheme)
    email = await make_staff(rt, provider.id)
    await sign_in(client, email)
    assert (await client.get("/coach/redemptions", follow_redirects=False)).status_code == 200
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(ProviderUser).where(ProviderUser.email == email).values(disabled_at=utcnow()))
    answer = await client.get("/coach/redemptions", follow_redirects=False)
    assert answer.status_code in (302, 303) and "/coach/login" in answer.headers["location"]


async def test_a_forged_session_principal_gets_nothing(client, rt) -> None:
    # A cookie the server did not encrypt is ignored: the session middleware cannot decrypt it.
    client.cookies.set("vouchers_session", "bm90IGEgcmVhbCBzZXNzaW9u")
    answer = await client.get("/coach/redemptions", follow_redirects=False)
    assert answer.status_code in (302, 303)


async def test_a_staff_members_changed_role_needs_a_new_sign_in(client, rt) -> None:
    from service.models_admin import StaffUser
    from tests.admin_helpers import staff_client_sign_in

    email, _ = await staff_client_sign_in(client, rt, "beheerder")
    assert (await client.get("/beheer", follow_redirects=False)).status_code == 200
    async with rt.sessionmaker() as session, session.begin():
        await session.execute(update(StaffUser).where(StaffUser.email == email).values(role="lezer"))
    answer = await client.get("/beheer", follow_redirects=False)
    assert answer.status_code in (302, 303) and "/beheer/inloggen" in answer.headers["location"]
