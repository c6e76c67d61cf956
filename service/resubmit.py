"""A form whose CSRF check failed (the cookie was lost, the page was open too long) is shown
again, filled in, instead of an error page that throws away what was typed.

Done once for every form: the page the form was on (named by a hidden ``_form_page`` field that
every ``csrf_input`` carries, else the path posted to) is asked for again inside this process with
the same cookies but without the stale CSRF cookie, so it comes back with a fresh token, and the
posted values are written into that page's form. Passwords and secret codes are never written back.
The answer is 403: nothing was done.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import jinja2
from litestar import Request, Response
from litestar.datastructures import UploadFile
from litestar.exceptions import PermissionDeniedException
from litestar.types import Message, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from . import i18n
from .errors import N_

__all__ = ("PAGE_FIELD", "FormAgain", "PageTemplate", "csrf_failed", "prefill")

#: The hidden field naming the page a form was on (its action is often another path).
PAGE_FIELD = "_form_page"
#: What Litestar's CSRF middleware raises.
_CSRF_DETAIL = "CSRF token verification failed"
#: Parts of a field's name that mark a secret: such a field is never filled in again.
_SECRET_PARTS = {"password", "wachtwoord", "secret", "totp", "otp", "code", "token", "repeat"}
_NOT_FILLED = {"submit", "button", "reset", "image", "file", "password"}

TITLE = N_("Your form was not sent")
DETAIL = N_("For your safety the form had expired, for example because the page was open for a long time or "
            "your browser removed a cookie. We kept what you typed. Check it and send the form again.")
SECRETS_AGAIN = N_("Passwords and codes are not kept: type them again.")
TO_THE_FORM = N_("Go to the form")
FALLBACK_DETAIL = N_("For your safety the form had expired. Go back, reload the page and send the form again.")


def _page_path(value: Any, default: str) -> str:
    """A path on this site, never another host; ``default`` for anything else."""
    value = value[0] if isinstance(value, list) and value else value
    if isinstance(value, str):
        path = value.split("?")[0]
        if path.startswith("/") and not path.startswith("//") and "\\" not in path:
            return path
    return default


class PageTemplate(jinja2.Template):
    """Adds the page's own path to every form's CSRF field, so a refused form can be found again.
    A page answering a POST (a form with its errors, a confirmation) names the page the form
    came from, which can be asked for again; the POST's path often cannot."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        context = dict(*args, **kwargs)
        request = context.get("request")
        if "csrf_input" in context and isinstance(request, Request):
            path = request.url.path
            if request.method != "GET":
                posted = ScopeState.from_scope(request.scope).form
                path = _page_path(posted.get(PAGE_FIELD) if isinstance(posted, dict) else None, path)
            context["csrf_input"] = (f'{context["csrf_input"]}<input type="hidden" name="{PAGE_FIELD}" '
                                     f'value="{html.escape(path)}">')
        return super().render(context)


def csrf_failed(request: Request[Any, Any, Any], exc: Exception) -> bool:
    return isinstance(exc, PermissionDeniedException) and exc.detail == _CSRF_DETAIL and request.method == "POST"


def _secret(name: str, kind: str) -> bool:
    parts = name.lower().replace("-", "_").split("_")
    return kind == "password" or any(part in _SECRET_PARTS for part in parts)


class _Prefill(HTMLParser):
    """Rewrites only the tags of the form that was posted; the rest of the page stays byte for byte."""

    def __init__(self, page: str, page_path: str, action: str, values: dict[str, list[str]], notice: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page, self.page_path, self.action, self.values, self.notice = page, page_path, action, values, notice
        self.line_starts = [0]
        for index, char in enumerate(page):
            if char == "\n":
                self.line_starts.append(index + 1)
        self.edits: list[tuple[int, int, str]] = []
        self.in_form = self.found = self.secrets = False
        self.used: dict[str, int] = {}
        self.textarea: tuple[int, str] | None = None
        self.select: str | None = None
        self.first_field: str | None = None

    def _offset(self) -> int:
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def _next_value(self, name: str) -> str | None:
        posted = self.values.get(name)
        if not posted:
            return None
        index = self.used.get(name, 0)
        self.used[name] = index + 1
        return posted[index] if index < len(posted) else None

    def _replace(self, tag: str, attrs: list[tuple[str, str | None]], start: int, raw: str) -> None:
        closing = " />" if raw.rstrip().endswith("/>") else ">"
        text = "".join(f" {k}" if v is None else f' {k}="{html.escape(v)}"' for k, v in attrs)
        self.edits.append((start, start + len(raw), f"<{tag}{text}{closing}"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        start = self._offset()
        raw = self.get_starttag_text() or ""
        attr = dict(attrs)
        if tag == "main":
            self.edits.append((start + len(raw), start + len(raw), self.notice))
        if tag == "form":
            target = urlsplit(attr.get("action") or self.page_path).path
            self.in_form = (attr.get("method") or "").lower() == "post" and target == self.action
            self.found = self.found or self.in_form
            return
        if not self.in_form:
            return
        name = attr.get("name") or ""
        kind = (attr.get("type") or "text").lower()
        if self.first_field is None and attr.get("id") and tag in ("input", "textarea", "select") and kind != "hidden":
            self.first_field = attr["id"]
        if tag == "input" and name and not name.startswith("_"):
            if _secret(name, kind):
                self.secrets = self.secrets or kind not in ("hidden", "submit", "button")
                return
            if kind in ("checkbox", "radio"):
                on = (attr.get("value") or "on") in self.values.get(name, [])
                kept = [(k, v) for k, v in attrs if k != "checked"]
                self._replace(tag, kept + ([("checked", None)] if on else []), start, raw)
            elif kind not in _NOT_FILLED:
                value = self._next_value(name)
                if value is not None:
                    self._replace(tag, [(k, v) for k, v in attrs if k != "value"] + [("value", value)], start, raw)
        elif tag == "textarea" and name:
            value = None if _secret(name, "textarea") else self._next_value(name)
            self.textarea = (start + len(raw), value) if value is not None else None
        elif tag == "select" and name:
            self.select = None if _secret(name, "select") or name not in self.values else name
        elif tag == "option" and self.select:
            on = (attr.get("value") or "") in self.values.get(self.select, [])
            kept = [(k, v) for k, v in attrs if k != "selected"]
            self._replace(tag, kept + ([("selected", None)] if on else []), start, raw)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.in_form = False
        elif tag == "select":
            self.select = None
        elif tag == "textarea" and self.textarea:
            begin, value = self.textarea
            self.edits.append((begin, self._offset(), html.escape(value)))
            self.textarea = None

    def result(self) -> str | None:
        self.feed(self.page)
        self.close()
        if not self.found:
            return None
        out, last = [], 0
        for start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1])):
            if "{secrets}" in text:
                text = text.replace("{secrets}", f"<p>{html.escape(i18n.gettext(SECRETS_AGAIN))}</p>" if self.secrets else "")
                if self.first_field:  # the form may be far down the page
                    text = text.replace("</div>", f'<p><a href="#{html.escape(self.first_field)}">'
                                                  f'{html.escape(i18n.gettext(TO_THE_FORM))}</a></p></div>')
            out += [self.page[last:start], text]
            last = end
        out.append(self.page[last:])
        return "".join(out)


def _notice() -> str:
    return ('<div class="problem" role="alert" aria-labelledby="form-again-title" id="form-again">'
            f'<h2 id="form-again-title">{html.escape(i18n.gettext(TITLE))}</h2>'
            f'<p>{html.escape(i18n.gettext(DETAIL))}</p>{{secrets}}</div>')


def prefill(page: str, page_path: str, action: str, values: dict[str, list[str]]) -> str | None:
    """``page`` with the form that posts to ``action`` filled in with ``values`` and a notice at the
    top of ``<main>``; None when the page has no such form."""
    return _Prefill(page, page_path, action, values, _notice()).result()


class FormAgain(Response[bytes]):
    """The page with the refused form, filled in; ``fallback`` (the error page) when that page
    cannot be had, for example because the sign-in was lost too."""

    def __init__(self, fallback: Response[Any]) -> None:
        super().__init__(b"", status_code=403)
        self.fallback = fallback

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any], **kwargs: Any) -> Any:  # type: ignore[override]
        fallback = self.fallback.to_asgi_response(app, request, **kwargs)

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            page = await _form_page_again(request)
            if page is None:
                await fallback(scope=scope, receive=receive, send=send)
                return
            headers, body = page
            await send({"type": "http.response.start", "status": 403,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return answer


async def _form_page_again(request: Request[Any, Any, Any]) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
    form = await request.form()
    values: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            values.setdefault(key, []).append(value)
    action = request.url.path
    page_path = _page_path(values.get(PAGE_FIELD), action)
    status, headers, body = await _get(request, page_path)
    content_type = dict(headers).get(b"content-type", b"")
    if status != 200 or not content_type.startswith(b"text/html"):
        return None
    page = prefill(body.decode("utf-8"), page_path, action, values)
    if page is None:
        return None
    return [(k, v) for k, v in headers if k.lower() != b"content-length"], page.encode("utf-8")


async def _get(request: Request[Any, Any, Any], path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """GET ``path`` through the whole app, as this client, without the CSRF cookie that failed."""
    scope = request.scope
    csrf_cookie = request.app.csrf_config.cookie_name if request.app.csrf_config else "csrftoken"
    cookies = "; ".join(f"{k}={v}" for k, v in request.cookies.items() if k != csrf_cookie)
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"cookie", b"content-type", b"content-length")]
    if cookies:
        headers.append((b"cookie", cookies.encode("latin-1")))
    sub: dict[str, Any] = {key: scope[key] for key in ("type", "asgi", "http_version", "scheme", "server", "client",
                                                       "root_path") if key in scope}
    sub.update(method="GET", path=path, raw_path=path.encode(), query_string=b"", headers=headers, state={})
    started: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(sub, receive, send)  # type: ignore[arg-type]
    return started.get("status", 500), list(started.get("headers", [])), b"".join(chunks)
