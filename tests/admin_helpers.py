"""Helpers for the municipality tests: staff accounts set up through the domain, and signing in
through the real two-step form (password, then a TOTP code computed with pyotp)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pyotp

from service import municipality
from service.db import run_in_transaction
from service.runtime import Runtime

PASSWORD = "een lang genoeg wachtwoord"
_n = itertools.count(1)


async def make_staff(rt: Runtime, role: str, email: str | None = None) -> tuple[str, str]:
    """A set-up account; returns (e-mail address, TOTP secret)."""
    email = email or f"{role}{next(_n)}@arnhem.example"

    async def work(session):  # type: ignore[no-untyped-def]
        user = await municipality.create_staff(session, rt, email=email, name=f"Medewerker {role}", role=role)
        secret = municipality.totp_secret(rt, user)
        token = (await municipality.setup_link(session, rt, user)).rpartition("/")[2]
        await municipality.complete_setup(session, rt, token, password=PASSWORD, repeat=PASSWORD,
                                          code=pyotp.TOTP(secret).now())
        return secret

    return email, await run_in_transaction(rt.sessionmaker, work)


def next_code(secret: str) -> str:
    """A code for the next 30-second step: the current one was used by the setup."""
    return pyotp.TOTP(secret).at(time.time() + 30)


async def csrf(client: Any, path: str = "/beheer/inloggen") -> str:
    await client.get(path)
    return client.cookies.get("csrftoken")


async def post_form(client: Any, path: str, data: dict[str, str], **kwargs: Any) -> Any:
    token = client.cookies.get("csrftoken") or await csrf(client)
    return await client.post(path, data={**data, "_csrf_token": token}, **kwargs)


async def sign_in(client: Any, email: str, secret: str, password: str = PASSWORD) -> Any:
    await csrf(client)
    first = await post_form(client, "/beheer/inloggen", {"email": email, "password": password, "next": "/beheer"},
                            follow_redirects=False)
    assert first.status_code == 303, first.text
    return await post_form(client, "/beheer/inloggen/code", {"code": next_code(secret)}, follow_redirects=False)


async def staff_client_sign_in(client: Any, rt: Runtime, role: str) -> tuple[str, str]:
    email, secret = await make_staff(rt, role)
    r = await sign_in(client, email, secret)
    assert r.status_code == 303 and r.headers["location"] == "/beheer", r.text
    return email, secret
