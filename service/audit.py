"""The audit log: every state change by anyone, append-only and tamper-evident.

How changes are caught, without touching each domain function:

* ORM flushes (inserts, attribute changes, deletes) are read in ``after_flush`` from the
  session's own bookkeeping: the changed columns with their values before and after.
* The domain changes counters with ``update()`` statements, which the ORM's flush never sees.
  ``do_orm_execute`` catches those: it reads the rows the statement's WHERE clause matches,
  runs the statement, and reads the same rows again by primary key. "After" is exact (the
  UPDATE holds the row lock). On PostgreSQL "before" is read without a lock (a ``FOR UPDATE``
  read there stalled the concurrent-application test), so a commit by another transaction
  between that read and the UPDATE can make "before" older than the true value; the entries of
  one row, chained in commit order, still give its exact history through their "after" values.
* Explicit events (a privacy export, a sign-in) are added with :func:`record`.

Records wait in ``session.info`` and are written in ``before_commit``, all in one batch: the
``audit_head`` row is read (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
serialises writers), each entry gets the next number and ``sha256(previous hash + entry)``,
and the head moves on. A savepoint or transaction that rolls back drops its records.

Who and from where come from a context variable: set per request by
:class:`AuditContextMiddleware`, by the CLI (``cli:<user>``), ``system`` otherwise.

Never stored: secrets (code hashes and salts, password hashes, TOTP secrets, token hashes) and
applicants' personal data (names, e-mail, KvK number, postcode, free text). For those only the
fact of a change is recorded, as ``"[redacted]"``, so that erasing personal data under the AVG
(``service.privacy``) never has to touch this log.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Table, and_, event, func, inspect, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session

from .models import utcnow
from .models_admin import AuditEntry, AuditHead

__all__ = (
    "EXCLUDED_TABLES",
    "REDACTED",
    "REDACTED_COLUMNS",
    "AuditContext",
    "AuditFilter",
    "entry_hash",
    "record",
    "search",
    "set_context",
    "use_context",
    "verify",
)

REDACTED = "[redacted]"
GENESIS = "0" * 64

#: Tables that are machinery, not state of the scheme: mail delivery, rate limits, stored
#: API answers, and the log itself.
EXCLUDED_TABLES = frozenset({"outbox_message", "rate_limit_counter", "idempotency_record", "audit_entry",
                             "audit_head", "alembic_version"})

#: Columns whose values never enter the log (secrets, personal data); a change shows as REDACTED.
REDACTED_COLUMNS: dict[str, frozenset[str]] = {
    "voucher": frozenset({"code_hash", "code_salt", "kvk_number", "end_reason"}),
    "application": frozenset({"kvk_number", "company_name", "contact_name", "email", "purpose", "postcode",
                              "registry_postcode"}),
    "api_token": frozenset({"token_hash"}),
    "sign_in_token": frozenset({"token_hash"}),
    "provider_user": frozenset({"password_hash", "email", "name"}),
    "staff_user": frozenset({"password_hash", "totp_secret", "setup_nonce", "email", "name", "last_totp_step"}),
    "provider": frozenset({"iban", "email"}),
    "payout_line": frozenset({"iban"}),
    "payout_batch": frozenset({"sepa_xml"}),
    "redemption": frozenset({"flag_note"}),
}


@dataclass(frozen=True, slots=True)
class AuditContext:
    actor: str = "system"
    """``staff:3``, ``token:1``, ``provider-staff:2``, ``entrepreneur:7``, ``cli:<user>``, ``anonymous``…"""
    address: str = ""
    """The client's IP address (web) or ``local`` (CLI)."""


_context: ContextVar[AuditContext] = ContextVar("audit_context", default=AuditContext())


def set_context(actor: str, address: str = "") -> None:
    """Name who acts for the rest of this task (one request, one CLI command)."""
    _context.set(AuditContext(actor=actor[:100], address=address[:64]))


@contextmanager
def use_context(actor: str, address: str = "") -> Iterator[None]:
    token = _context.set(AuditContext(actor=actor[:100], address=address[:64]))
    try:
        yield
    finally:
        _context.reset(token)


# --- values ----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON value that reads back exactly as written (so the hash can be recomputed)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return REDACTED
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _value(table: str, column: str, value: Any) -> Any:
    if column in REDACTED_COLUMNS.get(table, ()):
        return None if value is None else REDACTED
    return _plain(value)


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, *, seq: int, at: dt.datetime, actor: str, address: str, action: str,
               table_name: str, row_id: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    """``sha256(prev_hash || canonical JSON of the entry)``: changing, inserting or removing any
    entry changes every hash after it."""
    body = {"seq": seq, "at": at.astimezone(dt.UTC).isoformat(), "actor": actor, "address": address,
            "action": action, "table": table_name, "row": row_id, "before": before, "after": after}
    return hashlib.sha256(prev_hash.encode() + b"\n" + _canonical(body)).hexdigest()


# --- collecting --------------------------------------------------------------------------------


class _Record(msgspec.Struct):
    at: dt.datetime
    actor: str
    address: str
    action: str
    table_name: str
    row_id: str
    before: dict[str, Any]
    after: dict[str, Any]


def _pending(session: Session) -> list[_Record]:
    return session.info.setdefault("audit_pending", [])


def _add(session: Session, action: str, table: str, row_id: Any, before: dict[str, Any],
         after: dict[str, Any]) -> None:
    ctx = _context.get()
    _pending(session).append(_Record(at=utcnow(), actor=ctx.actor, address=ctx.address, action=action,
                                     table_name=table, row_id=str(row_id)[:40], before=before, after=after))


def record(session: AsyncSession | Session, action: str, table: str, row_id: Any = "",
           details: dict[str, Any] | None = None) -> None:
    """Add an explicit entry (an event no row change shows, such as a data export). ``details``
    must not hold personal data."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    _add(sync, action, table, row_id, {}, _plain(details or {}))


def _row_id(state: Any) -> str:
    key = state.mapper.primary_key_from_instance(state.obj())
    return ",".join("" if part is None else str(part) for part in key)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _flush_context: Any) -> None:
    for obj in session.new:
        state = inspect(obj)
        table = state.mapper.local_table.name
        if table in EXCLUDED_TABLES:
            continue
        after = {attr.key: _value(table, attr.key, attr.value) for attr in state.attrs
                 if attr.key in state.mapper.columns}
        _add(session, "insert", table, _row_id(state), {}, after)
    for obj in session.dirty:
        state = inspect(obj)
        table = state.mapper.local_table.name
        if table in EXCLUDED_TABLES:
            continue
        before, after = {}, {}
        for attr in state.attrs:
            if attr.key not in state.mapper.columns:
                continue
            history = attr.history
            if not history.has_changes():
                continue
            old = history.deleted[0] if history.deleted else None
            new = history.added[0] if history.added else None
            if old == new:
                continue
            before[attr.key] = _value(table, attr.key, old)
            after[attr.key] = _value(table, attr.key, new)
        if after:
            _add(session, "update", table, _row_id(state), before, after)
    for obj in session.deleted:
        state = inspect(obj)
        table = state.mapper.local_table.name
        if table in EXCLUDED_TABLES:
            continue
        before = {attr.key: _value(table, attr.key, attr.value) for attr in state.attrs
                  if attr.key in state.mapper.columns}
        _add(session, "delete", table, _row_id(state), before, {})


def _set_columns(table: Table, statement: Any) -> list[Any]:
    keys = []
    for key in (statement._values or {}):  # the SET clause of an update()
        name = key if isinstance(key, str) else getattr(key, "key", None) or getattr(key, "name", None)
        if name in table.c:
            keys.append(table.c[name])
    return keys


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> Any:
    if not (state.is_update or state.is_delete or state.is_insert) or state.execution_options.get("audit_skip"):
        return None
    statement = state.statement
    table = getattr(statement, "table", None)
    if not isinstance(table, Table) or table.name in EXCLUDED_TABLES:
        return None
    session = state.session
    if state.is_insert:
        result = state.invoke_statement()
        _add(session, "insert", table.name, "", {}, {"statement": "insert"})
        return result
    pk = list(table.primary_key.columns)
    columns = _set_columns(table, statement) if state.is_update else [c for c in table.columns if c not in pk]
    query = select(*pk, *columns)
    if statement.whereclause is not None:
        query = query.where(statement.whereclause)
    params = state.parameters if isinstance(state.parameters, dict) else None
    opts = {"audit_skip": True}
    before_rows = session.execute(query, params, execution_options=opts).all()
    result = state.invoke_statement()
    if not before_rows:
        return result
    width = len(pk)
    after_rows: dict[tuple[Any, ...], Any] = {}
    if state.is_update:
        keys = [tuple(row[:width]) for row in before_rows]
        by_key = or_(*(and_(*(col == value for col, value in zip(pk, key, strict=True))) for key in keys))
        for row in session.execute(select(*pk, *columns).where(by_key), execution_options=opts).all():
            after_rows[tuple(row[:width])] = row
    for row in before_rows:
        key = tuple(row[:width])
        row_id = ",".join(str(part) for part in key)
        before = {c.key: _value(table.name, c.key, v) for c, v in zip(columns, row[width:], strict=True)}
        if state.is_delete:
            _add(session, "delete", table.name, row_id, before, {})
            continue
        new = after_rows.get(key)
        if new is None:
            continue
        after = {c.key: _value(table.name, c.key, v) for c, v in zip(columns, new[width:], strict=True)}
        changed = [k for k in after if after[k] != before[k]]
        if changed:
            _add(session, "update", table.name, row_id, {k: before[k] for k in changed},
                 {k: after[k] for k in changed})
    return result


@event.listens_for(Session, "after_transaction_create")
def _savepoint_started(session: Session, transaction: Any) -> None:
    if transaction.nested:
        session.info.setdefault("audit_marks", {})[id(transaction)] = len(_pending(session))


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous: Any) -> None:
    marks = session.info.get("audit_marks", {})
    if previous.nested and id(previous) in marks:
        del _pending(session)[marks.pop(id(previous)):]
    elif not previous.nested:
        session.info.pop("audit_pending", None)
        session.info.pop("audit_marks", None)


@event.listens_for(Session, "before_commit")
def _write(session: Session) -> None:
    if not session.info.get("audit_pending") and session._is_clean():
        return
    session.flush()  # commit flushes after this event; flush now so those changes are caught
    pending: list[_Record] = session.info.pop("audit_pending", [])
    session.info.pop("audit_marks", None)
    if not pending:
        return
    conn = session.connection()
    head_query = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
    if conn.dialect.name == "postgresql":
        head_query = head_query.with_for_update()
    head = conn.execute(head_query).first()
    if head is None:
        conn.execute(AuditHead.__table__.insert().values(id=1, seq=0, hash=GENESIS))
        seq, prev = 0, GENESIS
    else:
        seq, prev = int(head.seq), head.hash
    rows = []
    for item in pending:
        seq += 1
        digest = entry_hash(prev, seq=seq, at=item.at, actor=item.actor, address=item.address, action=item.action,
                            table_name=item.table_name, row_id=item.row_id, before=item.before, after=item.after)
        rows.append({"seq": seq, "at": item.at, "actor": item.actor, "address": item.address, "action": item.action,
                     "table_name": item.table_name, "row_id": item.row_id, "before": item.before,
                     "after": item.after, "prev_hash": prev, "hash": digest})
        prev = digest
    conn.execute(AuditEntry.__table__.insert(), rows)
    conn.execute(update(AuditHead.__table__).where(AuditHead.id == 1).values(seq=seq, hash=prev))


# --- reading -----------------------------------------------------------------------------------


class VerifyResult(msgspec.Struct, kw_only=True):
    ok: bool
    entries: int
    problems: list[str]
    head_hash: str


async def verify(session: AsyncSession, *, batch: int = 2000) -> VerifyResult:
    """Walk the chain from the first entry: numbers without gaps, each ``prev_hash`` equal to the
    hash before it, each hash recomputed from the entry, and the last one equal to the head."""
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    last_seq = 0
    while True:
        rows = list(await session.scalars(
            select(AuditEntry).where(AuditEntry.seq > last_seq).order_by(AuditEntry.seq).limit(batch)))
        if not rows:
            break
        for entry in rows:
            count += 1
            if entry.seq != expected_seq:
                problems.append(f"entries {expected_seq} to {entry.seq - 1} are missing")
            if entry.prev_hash != prev:
                problems.append(f"entry {entry.seq}: does not follow the entry before it")
            digest = entry_hash(entry.prev_hash, seq=entry.seq, at=entry.at, actor=entry.actor, address=entry.address,
                                action=entry.action, table_name=entry.table_name, row_id=entry.row_id,
                                before=entry.before, after=entry.after)
            if digest != entry.hash:
                problems.append(f"entry {entry.seq}: its content was changed")
            prev, expected_seq, last_seq = entry.hash, entry.seq + 1, entry.seq
        session.expunge_all()
    head = await session.get(AuditHead, 1)
    head_seq, head_hash = (head.seq, head.hash) if head is not None else (0, GENESIS)
    if head_seq != last_seq or head_hash != prev:
        problems.append(f"the log ends at entry {last_seq}, but its head says {head_seq}: entries were removed")
    return VerifyResult(ok=not problems, entries=count, problems=problems, head_hash=head_hash)


class AuditFilter(msgspec.Struct, kw_only=True):
    actor: str = ""
    table_name: str = ""
    row_id: str = ""
    action: str = ""
    text: str = ""
    """Matched against the stored before/after values."""
    since: dt.date | None = None
    until: dt.date | None = None
    """Inclusive."""


async def search(session: AsyncSession, f: AuditFilter, *, limit: int = 100,
                 before_seq: int | None = None) -> list[AuditEntry]:
    """Newest first; ``before_seq`` pages back."""
    query = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    if f.actor:
        query = query.where(AuditEntry.actor.like(f"%{_like(f.actor)}%", escape="\\"))
    if f.table_name:
        query = query.where(AuditEntry.table_name == f.table_name)
    if f.row_id:
        query = query.where(AuditEntry.row_id == f.row_id)
    if f.action:
        query = query.where(AuditEntry.action == f.action)
    if f.since:
        query = query.where(AuditEntry.at >= dt.datetime.combine(f.since, dt.time(), dt.UTC))
    if f.until:
        query = query.where(AuditEntry.at < dt.datetime.combine(f.until + dt.timedelta(days=1), dt.time(), dt.UTC))
    if f.text:
        pattern = f"%{_like(f.text.lower())}%"
        from sqlalchemy import String, cast

        query = query.where(or_(func.lower(cast(AuditEntry.before, String)).like(pattern, escape="\\"),
                                func.lower(cast(AuditEntry.after, String)).like(pattern, escape="\\")))
    if before_seq is not None:
        query = query.where(AuditEntry.seq < before_seq)
    return list(await session.scalars(query))


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
