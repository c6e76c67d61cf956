"""``Idempotency-Key``: one effect per key, and the same answer to every retry.

The key is claimed in its own short transaction before the work starts, so a second request
with the same key while the first runs is told so (409) instead of waiting. The answer is stored
in the same transaction as the work's effect, so a stored answer always means the effect happened.
A claim left by a crashed process is taken over after ``STALE_AFTER``; should that process still
be working, it finds its claim lost when it stores the answer and its transaction rolls back
(``ClaimLost``), so the work takes effect once. Bodies are compared decoded: the same JSON with
other whitespace or key order is the same request.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import msgspec
from sqlalchemy import BigInteger, Integer, LargeBinary, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .errors import N_, Conflict, InvalidInput
from .models import IdempotencyRecord, UTCDateTime, utcnow

__all__ = ("STORE_ANSWER", "ClaimLost", "StoredAnswer", "claim", "complete", "release", "request_fingerprint")

STALE_AFTER = dt.timedelta(seconds=60)


class StoredAnswer(msgspec.Struct, frozen=True):
    status_code: int
    body: bytes


class ClaimLost(Conflict):
    """Another request took this key over after its lease ran out."""

    def __init__(self) -> None:
        super().__init__("request-claim-lost",
                         N_("This request took too long and was taken over by a retry. Nothing was changed by it."))


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted") if body else body
    except msgspec.DecodeError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).digest()


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
            # Left behind by a process that died or hangs: nothing was committed with it, so the
            # work may run again. Conditional, so an answer stored meanwhile is never thrown away.
            # The old row is moved aside before the new one is inserted, so the new one never
            # gets its id back (SQLite reuses the highest rowid) and the old claim cannot complete.
            moved = await session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == record.id, IdempotencyRecord.status_code.is_(None),
                       IdempotencyRecord.created_at <= now - STALE_AFTER)
                .values(scope=f"lost:{record.id}")
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise Conflict("request-in-flight", N_("This request is still being processed. Try again shortly."))
            stale_id = record.id
        else:
            stale_id = None
        try:
            async with session.begin_nested():
                record = IdempotencyRecord(scope=scope, key=key, request_hash=fingerprint, created_at=now)
                session.add(record)
                await session.flush()
        except IntegrityError:
            raise Conflict("request-in-flight", N_("This request is still being processed. Try again shortly.")) from None
        if stale_id is not None:
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == stale_id))
        return record.id


_IR = IdempotencyRecord.__table__
STORE_ANSWER = (
    update(_IR).where(_IR.c.id == bindparam("record_id", type_=BigInteger), _IR.c.status_code.is_(None))
    .values(status_code=bindparam("answer_status", type_=Integer),
            response_body=bindparam("answer_body", type_=LargeBinary),
            completed_at=bindparam("now", type_=UTCDateTime()))
    .returning(_IR.c.id)
)
"""Store a key's answer while the claim is still this request's: nothing if a retry took it over
(a one-statement write, ``vouchers.REDEEM``, runs it in its own statement)."""


async def complete(session: AsyncSession, record_id: int, *, status_code: int, body: bytes) -> None:
    """Store the answer; call inside the transaction that made the effect. Raises ``ClaimLost``
    (so that transaction rolls back) when the claim was taken over meanwhile."""
    stored = await (await session.connection()).execute(STORE_ANSWER, {
        "record_id": record_id, "answer_status": status_code, "answer_body": body, "now": utcnow()})
    if stored.first() is None:
        raise ClaimLost()


async def release(sessionmaker: async_sessionmaker[AsyncSession], record_id: int) -> None:
    """Forget a claim whose work failed unexpectedly (a server error), so a retry can run."""
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id,
                                                              IdempotencyRecord.status_code.is_(None)))
