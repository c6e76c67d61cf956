"""What a browser holds when it sends a page's form: its cookies (the session, the CSRF cookie) and
the CSRF token from the form's hidden field. Got once through the real pages (the coach signs in
with e-mail and password), then sent by wrk with every request, as the browser would send them.
Also :func:`one_at_a_time`: requests sent one after the other on one connection, for the
statements a request costs alone."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

__all__ = ("Browser", "Request", "applicant", "coach", "one_at_a_time")

_CSRF_FIELD = re.compile(r'name="_csrf_token"\s+value="([^"]+)"')


@dataclass(frozen=True)
class Browser:
    cookie: str
    """The ``Cookie`` header: every cookie the pages set."""
    csrf_token: str
    """The form's ``_csrf_token``."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def _token(html: str, where: str) -> str:
    found = _CSRF_FIELD.search(html)
    if found is None:
        raise RuntimeError(f"no CSRF field on {where}")
    return found[1]


def _cookie_header(client: httpx.Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


def coach(base_url: str, email: str, password: str, code: str, address: str) -> Browser:
    """Sign in on ``/coach/login`` and open the voucher's page, which must show the form that
    records a session."""
    headers = {"X-Forwarded-For": address}
    with httpx.Client(base_url=base_url, follow_redirects=False, headers=headers, timeout=30) as client:
        login = client.get("/coach/login")
        login.raise_for_status()
        answer = client.post("/coach/login", data={"email": email, "password": password, "next": "/coach",
                                                    "_csrf_token": _token(login.text, "/coach/login")})
        if answer.status_code != 303:
            raise RuntimeError(f"coach sign-in answered {answer.status_code}, not 303")
        page = client.get(f"/v/{code}")
        if page.status_code != 200 or 'name="idempotency_key"' not in page.text:
            raise RuntimeError(f"/v/{{code}} answered {page.status_code} without the redemption form")
        return Browser(cookie=_cookie_header(client), csrf_token=_token(page.text, "/v/{code}"))


def applicant(base_url: str, slug: str) -> Browser:
    """Open the scheme's application form."""
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30) as client:
        form = client.get(f"/regelingen/{slug}/aanvragen")
        form.raise_for_status()
        return Browser(cookie=_cookie_header(client), csrf_token=_token(form.text, "the application form"))


def one_at_a_time(base_url: str, requests: list[Request]) -> list[int]:
    """Send the requests one after the other on one kept-alive connection; their statuses."""
    parts = urlsplit(base_url)
    assert parts.hostname == "127.0.0.1", "only loopback is ever a target"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    statuses = []
    try:
        for r in requests:
            body = r.body.encode() if r.body else None
            connection.request(r.method, r.path, body=body, headers=dict(r.headers))
            answer = connection.getresponse()
            answer.read()
            statuses.append(answer.status)
    finally:
        connection.close()
    return statuses
