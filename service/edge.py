"""What every request passes before routing: the language; the security headers and a request id
on every answer (also the 404 and 405 of routes that do not exist); and a check of the input no
handler should see.

A NUL byte makes PostgreSQL refuse a statement (a 500 after work has begun) and is stored as is
by SQLite; JSON nested deeper than the decoder's recursion limit raises a RecursionError. Both are
refused here with a 400 that names the field, once for every route, before any database work.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from . import i18n
from .errors import N_
from .problems import http_error_handler

__all__ = ("EdgeMiddleware",)

# The API's bodies are a few levels deep; this is far below any recursion limit.
MAX_JSON_DEPTH = 32
# Control characters; tab, newline and carriage return are ordinary in free text.
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_IN_PATH = re.compile(r"[\x00-\x1f\x7f]")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_BAD_CHARACTER = N_("Contains a character that is not allowed (a control character such as a NUL byte).")
_TOO_DEEP = N_("Is nested too deeply.")
_NOT_UTF8 = N_("Is not valid UTF-8 text.")


class _Refusal(Exception):
    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason


def choose_locale(request: Request[Any, Any, Any]) -> str:
    """``?lang=``, then the ``lang`` cookie, then Accept-Language."""
    chosen = request.query_params.get("lang")
    locale = chosen if chosen in i18n.LOCALES else request.cookies.get("lang")
    if locale not in i18n.LOCALES:
        locale = i18n.negotiate(request.headers.get("accept-language"))
    return locale


class EdgeMiddleware:
    """Wraps the whole application (``app.asgi_handler``), so it runs for every request,
    routed or not."""

    def __init__(self, app: ASGIApp, *, headers: Iterable[tuple[bytes, bytes]], https: bool,
                 max_body_bytes: int) -> None:
        self.app = app
        self.headers = list(headers)
        if https:
            self.headers.append((b"strict-transport-security", b"max-age=63072000"))
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request: Request[Any, Any, Any] = Request(scope)
        locale = choose_locale(request)
        i18n.set_locale(locale)
        state = scope.setdefault("state", {})
        state["locale"] = locale
        # Quoted on error pages and logged with every failure (problems.py).
        request_id = state["request_id"] = secrets.token_hex(8)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            _check_path(scope)
            _check_query(scope["query_string"])
            body = await self._read_body(receive)
            if body is None:
                return  # the client went away
            _check_body(request.headers.get("content-type", ""), body)
        except _Refusal as refusal:
            exc: HTTPException = ValidationException(
                detail=refusal.reason, extra=[{"key": refusal.field, "message": i18n.gettext(refusal.reason)}])
            await self._answer(request, exc, scope, receive, send_with_headers)
            return
        except _TooLarge:
            await self._answer(request, HTTPException(status_code=413), scope, receive, send_with_headers)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None when the client disconnected first."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _answer(request: Request[Any, Any, Any], exc: HTTPException, scope: Scope, receive: Receive,
                      send: Send) -> None:
        response = http_error_handler(request, exc)
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _check_path(scope: Scope) -> None:
    if _CONTROL_IN_PATH.search(scope["path"]):
        raise _Refusal("path", _BAD_CHARACTER)


def _check_query(query_string: bytes) -> None:
    if query_string:
        _check_pairs(query_string, where="query")


def _check_pairs(encoded: bytes, *, where: str) -> None:
    """A query string or a form body: names and values, each refused by the field's name."""
    try:
        pairs = parse_qsl(encoded.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _Refusal(where, _NOT_UTF8) from None
    for name, value in pairs:
        if _CONTROL_IN_PATH.search(name):
            raise _Refusal(where, _BAD_CHARACTER)
        if _CONTROL_IN_TEXT.search(value):
            raise _Refusal(name, _BAD_CHARACTER)


def _check_body(content_type: str, body: bytes) -> None:
    if not body:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        _check_pairs(body, where="body")
        return
    if media_type.startswith("multipart/"):
        # No route takes files, so no part may hold a control character either.
        if re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", body):
            raise _Refusal("body", _BAD_CHARACTER)
        return
    # Anything else may be read as JSON by a handler, whatever its content type says.
    _check_json(body)


def _check_json(body: bytes) -> None:
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise _Refusal("body", _TOO_DEEP)
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return  # the handler's strict decoding names what is wrong
    for name, text in _strings(document):
        if _CONTROL_IN_TEXT.search(text):
            raise _Refusal(name or "body", _BAD_CHARACTER)


def _strings(document: Any) -> Iterator[tuple[str, str]]:
    """Every string in a decoded JSON document (keys too) with its place, e.g. ``lines[0].note``."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        place, value = stack.pop()
        if isinstance(value, str):
            yield place, value
        elif isinstance(value, dict):
            for key, item in value.items():
                inner = f"{place}.{key}" if place else key
                if _CONTROL_IN_TEXT.search(key):
                    yield place or "body", key
                stack.append((inner, item))
        elif isinstance(value, list):
            stack.extend((f"{place}[{i}]", item) for i, item in enumerate(value))
