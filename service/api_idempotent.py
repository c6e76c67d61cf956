"""The HTTP half of ``service.idempotency`` for the JSON API: run a write once per
``Idempotency-Key`` and answer every retry with the first answer, and check a body strictly before
Litestar's lenient conversion. ``service.api`` and ``service.admin.api`` both use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import ValidationException
from sqlalchemy.ext.asyncio import AsyncSession

from . import idempotency
from .db import run_in_transaction
from .errors import DomainError, TooManyAttempts
from .problems import problem_body
from .runtime import Runtime
from .web import NO_STORE

__all__ = ("run_idempotent", "strict_decode")


async def run_idempotent(
    request: Request[Any, Any, Any],
    rt: Runtime,
    work: Callable[[AsyncSession], Awaitable[msgspec.Struct]],
    *,
    status_code: int = 201,
    body_type: type[msgspec.Struct] | None = None,
) -> Response[bytes]:
    """Run ``work`` once per ``Idempotency-Key`` and give every retry the first answer.

    ``body_type`` is checked strictly first: Litestar converts leniently ("10" becomes 10),
    and a wrong type in a money request should be an error, not a guess.
    """
    raw = await request.body()
    if body_type is not None:
        strict_decode(raw, body_type)
    headers = dict(NO_STORE)
    key = request.headers.get("idempotency-key")
    record_id: int | None = None
    if key is not None:
        fingerprint = idempotency.request_fingerprint(request.method, request.url.path, raw)
        claimed = await idempotency.claim(rt.sessionmaker, scope=request.scope["user"].actor, key=key,
                                          fingerprint=fingerprint)
        if isinstance(claimed, idempotency.StoredAnswer):
            media = "application/json" if claimed.status_code < 400 else "application/problem+json"
            return Response(claimed.body, status_code=claimed.status_code, media_type=media,
                            headers={**headers, "Idempotent-Replayed": "true"})
        record_id = claimed

    async def work_and_record(session: AsyncSession) -> bytes:
        body = msgspec.json.encode(await work(session))
        if record_id is not None:
            await idempotency.complete(session, record_id, status_code=status_code, body=body)
        return body

    try:
        body = await run_in_transaction(rt.sessionmaker, work_and_record)
    except idempotency.ClaimLost:
        raise  # the claim is another request's now: its answer will be the stored one
    except TooManyAttempts:
        # A limit passes with time: the same key may be sent again later, so nothing is stored.
        if record_id is not None:
            await idempotency.release(rt.sessionmaker, record_id)
        raise
    except DomainError as exc:
        if record_id is not None:
            problem = problem_body(exc)
            async with rt.sessionmaker() as session, session.begin():
                await idempotency.complete(session, record_id, status_code=problem["status"],
                                           body=msgspec.json.encode(problem))
        raise
    except BaseException:
        if record_id is not None:
            await idempotency.release(rt.sessionmaker, record_id)
        raise
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def _integral(value: Any) -> Any:
    """JSON has one kind of number: ``1233.0`` is the integer 1233, as JSON Schema says too. A
    number with a fraction, or a number in a string, is still refused where an integer belongs."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def strict_decode(raw: bytes, body_type: type[msgspec.Struct]) -> None:
    try:
        msgspec.convert(_integral(msgspec.json.decode(raw)), body_type, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        key = message.rpartition("at `$.")[2].rstrip("`").split(".")[0] if "at `$." in message else "body"
        raise ValidationException(detail=message, extra=[{"key": key, "message": message, "source": "body"}]) from None
