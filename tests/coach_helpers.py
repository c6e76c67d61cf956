"""Helpers for the coach tests: staff accounts and signing in through the real form."""

from __future__ import annotations

import itertools
import re
from typing import Any

from service import staff
from service.db import run_in_transaction
from service.runtime import Runtime

PASSWORD = "correct horse battery"
_n = itertools.count(1)


async def make_staff(rt: Runtime, provider_id: int, email: str | None = None) -> str:
    email = email or f"coach{next(_n)}@example.org"

    async def work(session):  # type: ignore[no-untyped-def]
        await staff.create_user(session, provider_id=provider_id, email=email, name="Carla Coach", password=PASSWORD)

    await run_in_transaction(rt.sessionmaker, work)
    return email


async def csrf(client: Any, path: str = "/coach/login") -> str:
    """GET a page so the CSRF cookie is set; the form token equals the cookie's value."""
    await client.get(path)
    return client.cookies.get("csrftoken")


async def post_form(client: Any, path: str, data: dict[str, str], **kwargs: Any) -> Any:
    token = client.cookies.get("csrftoken") or await csrf(client)
    return await client.post(path, data={**data, "_csrf_token": token}, **kwargs)


async def sign_in(client: Any, email: str, password: str = PASSWORD, next_: str = "/coach") -> Any:
    await csrf(client)
    return await post_form(client, "/coach/login", {"email": email, "password": password, "next": next_})


def form_key(html: str) -> str:
    match = re.search(r'name="idempotency_key" value="([^"]+)"', html)
    assert match, "no idempotency key in the form"
    return match.group(1)
