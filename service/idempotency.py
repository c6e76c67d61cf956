"""``Idempotency-Key``: one effect per key, and the same answer to every retry.

The key is claimed in its own short transaction before the work starts, so a second request
with the same key while the first runs is told so (409) instead of waiting. The answer is stored
in the same transaction as the work's effect, so a stored answer always means the effect happened.
A claim left by a crashed process is taken over after ``STALE_AFTER``.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .errors import N_, Conflict, InvalidInput
from .models import IdempotencyRecord, utcnow

__all__ = ("StoredAnswer", "claim", "complete", "release", "request_fingerprint")

STALE_AFTER = dt.timedelta(seconds=60)


class StoredAnswer(msgspec.Struct, frozen=True):
    status_code: int
    body: bytes


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()


async def claim(sessionmaker: async_sessionmaker[AsyncSession], *, scope: str, key: str,
                fingerprint: bytes) -> int | StoredAnswer:
    """Claim ``key`` for this request: the new record's id, or the answer stored earlier."""
    if not 1 <= len(key) <= 200:
        raise InvalidInput("idempotency-key-invalid", N_("The Idempotency-Key header must be 1 to 200 characters."))
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        record = await session.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
        )
        if record is not None:
            if record.request_hash != fingerprint:
                raise InvalidInput(
                    "idempotency-key-reused",
                    N_("This Idempotency-Key was used for a different request."),
                )
            if record.status_code is not None and record.response_body is not None:
                return StoredAnswer(record.status_code, record.response_body)
            if record.created_at > now - STALE_AFTER:
                raise Conflict("request-in-flight", N_("This request is still being processed. Try again shortly."))
            # Left behind by a process that died before answering: nothing was committed with
            # it, so the work may run again.
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))
            await session.flush()
        try:
            async with session.begin_nested():
                record = IdempotencyRecord(scope=scope, key=key, request_hash=fingerprint, created_at=now)
                session.add(record)
                await session.flush()
        except IntegrityError:
            raise Conflict("request-in-flight", N_("This request is still being processed. Try again shortly.")) from None
        return record.id


async def complete(session: AsyncSession, record_id: int, *, status_code: int, body: bytes) -> None:
    """Store the answer; call inside the transaction that made the effect."""
    await session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id)
        .values(status_code=status_code, response_body=body, completed_at=utcnow())
    )


async def release(sessionmaker: async_sessionmaker[AsyncSession], record_id: int) -> None:
    """Forget a claim whose work failed unexpectedly (a server error), so a retry can run."""
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))
