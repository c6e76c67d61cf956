"""The service's one log mechanism: structured lines on standard error.

Every line is an *event* with fields: one per request (``request``), one per run of a background
job (``job``), one per unexpected failure (``unexpected_error``, from ``service.problems``), and the
few other messages of the service. ``VOUCHERS_LOG_FORMAT`` makes them JSON (one object per line,
for a log collector) or plain ``key=value`` text; ``VOUCHERS_LOG_LEVEL`` sets the level.

What a line may hold is chosen, not collected: the request id (the ``X-Request-Id`` of the answer,
set by ``edge.EdgeMiddleware``), the route *template* (``/v/{code}``, never the path), the method,
the status, the duration and the kind of actor (``token``, ``staff``, ``provider-staff``,
``entrepreneur``, ``anonymous``, ``system``). Never codes, tokens, e-mail addresses, IP addresses or
exception messages: paths, messages and SQL parameters can hold all of those. Failures name the
exception types and the frames, which is enough to find the fault.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .settings import Settings

__all__ = ("RequestLog", "configure", "event", "failure_fields", "granian_config")

FIELDS = "vouchers_fields"
_ROOT = str(Path(__file__).parent.parent) + "/"
requests_log = logging.getLogger("service.requests")


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one structured event. The message is the event as JSON, so it reads the same in any
    handler; the formatters below lay out the fields themselves."""
    if logger.isEnabledFor(level):
        data = {"event": name, **fields}
        logger.log(level, "%s", msgspec.json.encode(data).decode(), extra={FIELDS: data})


def _short(filename: str) -> str:
    return filename.rsplit("/site-packages/", 1)[-1].removeprefix(_ROOT)


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """The exception's type chain and frames, without its message."""
    chain = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(type(seen).__qualname__)
        seen = seen.__cause__ or seen.__context__
    frames = [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
    return {"error": chain, "traceback": frames}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    data = getattr(record, FIELDS, None)
    if data is None:
        data = {"event": "message", "message": record.getMessage()}
    if record.exc_info and record.exc_info[1] is not None:
        data = {**data, **failure_fields(record.exc_info[1])}
    return data


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """``{"time": …, "level": …, "logger": …, "event": …, …}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        head = {"time": _time(record), "level": record.levelname, "logger": record.name}
        return msgspec.json.encode({**head, **_fields(record)}).decode()


class PlainFormatter(logging.Formatter):
    """``2026-12-05T19:30:00.000Z INFO request request_id=… route=/v/{code} status=200 …``"""

    def format(self, record: logging.LogRecord) -> str:
        data = dict(_fields(record))
        name = data.pop("event", "message")
        if name == "message":  # a sentence, such as the server's own "Listening at …"
            name = f"{record.name}: {data.pop('message', '')}"
        pairs = " ".join(f"{k}={v if isinstance(v, (str, int, float)) else msgspec.json.encode(v).decode()}"
                         for k, v in data.items())
        return f"{_time(record)} {record.levelname} {name} {pairs}".rstrip()


def configure(settings: Settings, stream: Any = None) -> None:
    """Send the service's log lines to standard error in the configured format and level."""
    logger = logging.getLogger("service")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else PlainFormatter())
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False
    # /readyz reads the migrations' state, and Alembic says "Context impl …" each time it looks.
    logging.getLogger("alembic").setLevel(logging.WARNING)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_of(scope: Any) -> str:
    """The request's method, or ``other``: a client can send any word there, and neither a log
    line nor a metric's label should carry what a client chose to write."""
    method = scope.get("method", "")
    return method if method in METHODS else "other"


def granian_config(settings: Settings) -> dict[str, Any]:
    """Granian's own lines (starting, workers, stopping) in the same format, to standard error."""
    formatter = "service.logs.JsonFormatter" if settings.log_format == "json" else "service.logs.PlainFormatter"
    return {
        "formatters": {"service": {"()": formatter}},
        "handlers": {"service": {"formatter": "service", "class": "logging.StreamHandler",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["service"], "level": settings.log_level, "propagate": False},
                    "granian.access": {"handlers": ["service"], "level": "INFO", "propagate": False}},
    }


def _actor(scope: Any) -> str:
    return getattr(scope.get("user"), "kind", None) or "anonymous"


class RequestLog:
    """Wraps the whole application, outside ``edge.EdgeMiddleware``: one ``request`` line per
    HTTP request, after its answer is sent. ``observers`` get (scope, status, seconds) too
    (the metrics)."""

    def __init__(self, app: Any, observers: list[Callable[[Any, int, float], None]] | None = None) -> None:
        self.app = app
        self.observers = observers or []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        observed = False

        def observe() -> float:
            nonlocal observed
            seconds = time.perf_counter() - started
            if not observed:
                observed = True
                for observer in self.observers:
                    observer(scope, status, seconds)
            return seconds

        async def send_seeing_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()  # before the client has the answer, so a scrape right after it counts it
            await send(message)

        try:
            await self.app(scope, receive, send_seeing_status)
        finally:
            seconds = observe()
            event(requests_log, logging.WARNING if status >= 500 else logging.INFO, "request",
                  request_id=scope.get("state", {}).get("request_id", "-"), method=method_of(scope),
                  route=scope.get("path_template") or "(no route)", status=status,
                  duration_ms=round(seconds * 1000, 1), actor=_actor(scope))
