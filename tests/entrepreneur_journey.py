"""Helpers for the entrepreneur tests: a register extract, forms with their CSRF token, mail."""

from __future__ import annotations

import re
from email.message import Message
from typing import Any

from service import outbox
from service.runtime import Runtime

REGISTER = """kvk_number,name,employees,postcode,active
20000001,Bakkerij De Test,3,6811 AB,yes
20000002,Groothandel Groot,40,6811 AB,yes
20000003,Adviesbureau Buiten,2,6701 AB,yes
20000004,Gestopt Bedrijf,1,6811 AB,no
20000005,Fietsenmaker Klarendal,1,6822 BA,yes
20000006,Vertaalbureau Sonsbeek,2,6814 AH,yes
20000007,Schilder Presikhaaf,1,6824 DA,yes
"""

FORM = {
    "kvk_number": "20000001",
    "company_name": "Bakkerij De Test",
    "employees": "3",
    "postcode": "6811 ab",
    "contact_name": "Jan Jansen",
    "email": "jan@example.org",
    "purpose": "Coaching om nieuwe klanten te vinden",
}


def csrf(html: str) -> str:
    match = re.search(r'name="_csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def post_form(client: Any, page: str, action: str | None = None, **fields: str) -> Any:
    """GET a page (which sets the CSRF cookie), then POST its form with the page's token."""
    response = await client.get(page)
    return await client.post(action or page, data={"_csrf_token": csrf(response.text), **fields},
                             follow_redirects=False)


async def apply(client: Any, slug: str = "test-scheme", **overrides: str) -> Any:
    return await post_form(client, f"/regelingen/{slug}/aanvragen", **{**FORM, **overrides})


async def deliver(rt: Runtime, smtp: Any) -> list[Message]:
    """Send what the outbox holds; return the messages that arrived by this call."""
    before = len(smtp.messages)
    await outbox.send_due(rt)
    return smtp.messages[before:]


def body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def link(message: Message, contains: str) -> str:
    """The path of the first link in a mail whose URL contains ``contains``."""
    for url in re.findall(r"https?://\S+", body(message)):
        if contains in url:
            return re.sub(r"^https?://[^/]+", "", url)
    raise AssertionError(f"no link with {contains!r} in:\n{body(message)}")


async def sign_in_as(client: Any, rt: Runtime, smtp: Any, email: str) -> None:
    """Sign in to "my voucher" the way a person does: ask for a link, open it, press the button."""
    await post_form(client, "/mijn-voucher", "/mijn-voucher/inloggen", email=email)
    path = link((await deliver(rt, smtp))[-1], "/mijn-voucher/inloggen/")
    await post_form(client, path)
