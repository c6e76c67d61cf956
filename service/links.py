"""Paths into the service that something outside a request builds: the public site, mails, the CLI.

The routes are declared with these same constants, so a link and the page it points to cannot
drift apart."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = ("SCHEME_START", "path", "url", "with_lang")

# Route patterns in Litestar's syntax; ``path`` fills them in.
SCHEME_START = "/regelingen/{slug:str}"

_PARAM = re.compile(r"\{(\w+):\w+\}")


def path(route: str, **params: object) -> str:
    """``path(SCHEME_START, slug="x")`` -> ``/regelingen/x``; every parameter must be given."""
    def fill(match: re.Match[str]) -> str:
        return quote(str(params[match[1]]), safe="")

    return _PARAM.sub(fill, route)


def url(base_url: str, route: str, *, lang: str | None = None, **params: object) -> str:
    """An absolute link; ``lang`` makes the page open in that language whatever the browser asks for."""
    link = base_url.rstrip("/") + path(route, **params)
    return with_lang(link, lang) if lang else link


def with_lang(link: str, lang: str) -> str:
    """The link with ``?lang=`` set, which the service honours before the cookie and Accept-Language."""
    parts = urlsplit(link)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "lang"] + [("lang", lang)]
    return urlunsplit(parts._replace(query=urlencode(query)))
