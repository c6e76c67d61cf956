"""The audit log: every state change by anyone, append-only and tamper-evident.

How changes are caught, without touching each domain function:

* ORM flushes (inserts, attribute changes, deletes) are read in ``after_flush`` from the
  session's own bookkeeping: the changed columns with their values before and after.
* The domain changes counters with ``update()`` statements, which the ORM's flush never sees.
  ``do_orm_execute`` catches those and runs them with RETURNING, so "after" costs no extra
  round trip and is exact (the UPDATE holds the row lock). "Before" of a counter moved by a
  literal (``balance_cents - 100``) is exact too: after less the change. Any other "before" is
  the row as the session loaded it, or, for bulk statements, read just ahead of the statement;
  on PostgreSQL those two can be older than the true value when another transaction commits in
  between, and the entries of one row, in chain order, still give its exact history through
  their "after" values.
* Explicit events (a privacy export, a sign-in) are added with :func:`record`.

Records wait in ``session.info`` and are written at the outermost commit, all in one INSERT,
without a lock; a savepoint or transaction that rolls back drops its records. :func:`seal`
chains them soon after (every second in the server): each committed entry gets the next place
in the chain and ``sha256(previous hash + entry)``, and the ``audit_head`` row moves on. Writers
thus never queue on the chain, and an entry is open to an undetected edit only in the second
before it is sealed (and even then the database's triggers refuse the edit).

The listeners are switched on by :func:`install`, which :meth:`service.runtime.Runtime.create`
calls: every session of the process is then watched.

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
from sqlalchemy import Table, bindparam, event, func, inspect, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

from .db import transaction
from .models import utcnow
from .models_admin import AuditEntry, AuditHead

__all__ = (
    "EXCLUDED_TABLES",
    "REDACTED",
    "REDACTED_COLUMNS",
    "changed",
    "current_context",
    "inserted",
    "AuditContext",
    "AuditFilter",
    "entry_hash",
    "install",
    "record",
    "record_insert",
    "record_update",
    "seal",
    "seal_all",
    "search",
    "set_context",
    "use_context",
    "verify",
)

REDACTED = "[redacted]"
GENESIS = "0" * 64

#: Tables that are machinery, not state of the scheme: mail delivery, rate limits, stored
#: API answers, sessions, and the log itself.
EXCLUDED_TABLES = frozenset({"outbox_message", "rate_limit_counter", "idempotency_record", "user_session",
                             "audit_entry", "audit_head", "alembic_version"})

#: Columns whose values never enter the log (secrets, personal data); a change shows as REDACTED.
REDACTED_COLUMNS: dict[str, frozenset[str]] = {
    "voucher": frozenset({"code_hash", "code_salt", "kvk_number", "end_reason"}),
    "application": frozenset({"kvk_number", "company_name", "contact_name", "email", "purpose", "postcode",
                              "registry_postcode", "acting_person"}),
    "api_token": frozenset({"token_hash"}),
    "sign_in_token": frozenset({"token_hash"}),
    "account_link": frozenset({"token_hash", "salt"}),
    "provider_user": frozenset({"password_hash", "email", "name"}),
    "staff_user": frozenset({"password_hash", "totp_secret", "email", "name", "last_totp_step", "sso_subject"}),
    "provider": frozenset({"iban", "email", "contact_name"}),
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


def record_update(session: AsyncSession | Session, table: str, row_id: Any, before: dict[str, Any],
                  after: dict[str, Any]) -> None:
    """Record a change made with a Core statement on the session's connection, which the session's
    events do not see (the hot paths of ``service.vouchers``)."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    _add(sync, "update", table, row_id, changed(table, before), changed(table, after))


def record_insert(session: AsyncSession | Session, table: str, row_id: Any, values: dict[str, Any]) -> None:
    """Record a row inserted with a Core statement; ``values`` as inserted, without the id."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    _add(sync, "insert", table, row_id, {}, inserted(table, row_id, values))


def inserted(table: str, row_id: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The "after" of an inserted row's entry: its values as the log keeps them (secrets and
    personal data redacted). For statements that write their entries themselves
    (``service.fastwrite``)."""
    return {"id": row_id, **changed(table, values)}


def changed(table: str, values: dict[str, Any]) -> dict[str, Any]:
    """Column values as the log keeps them (secrets and personal data redacted)."""
    return {k: _value(table, k, v) for k, v in values.items()}


def current_context() -> AuditContext:
    """Who acts, and from where, in this task."""
    return _context.get()


def _row_id(state: Any) -> str:
    key = state.mapper.primary_key_from_instance(state.obj())
    return ",".join("" if part is None else str(part) for part in key)


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


def _set_values(table: Table, statement: Any) -> dict[str, Any]:
    """The SET clause of an ``update()``: column name to the value or expression assigned."""
    values = {}
    for key, value in (statement._values or {}).items():
        name = key if isinstance(key, str) else getattr(key, "key", None) or getattr(key, "name", None)
        if name in table.c:
            values[name] = value
    return values


def _delta(table: Table, name: str, value: Any) -> int | None:
    """For ``col = col + n`` or ``col = col - n`` with a literal ``n``: the signed ``n``. Such a
    counter's value before the UPDATE is exactly its RETURNING value less ``n``."""
    if not isinstance(value, BinaryExpression) or value.operator not in (operators.add, operators.sub):
        return None
    left, right = value.left, value.right
    if not _is_column(left, table, name) or not isinstance(right, BindParameter) or right.callable is not None:
        return None
    if not isinstance(right.value, int) or isinstance(right.value, bool):
        return None
    return right.value if value.operator is operators.add else -right.value


def _is_column(element: Any, table: Table, name: str) -> bool:
    # The ORM hands the hook annotated copies of tables and columns: compare by name.
    return getattr(element, "name", None) == name and getattr(getattr(element, "table", None), "name", None) == table.name


def _targeted_key(table: Table, whereclause: Any) -> tuple[Any, ...] | None:
    """The primary key an UPDATE's WHERE clause pins with ``pk = literal``, if it does."""
    pk = list(table.primary_key.columns)
    if whereclause is None or len(pk) != 1:
        return None
    for element in visitors.iterate(whereclause):
        if (isinstance(element, BinaryExpression) and element.operator is operators.eq
                and _is_column(element.left, table, pk[0].name)
                and isinstance(element.right, BindParameter) and element.right.callable is None):
            return (element.right.value,)
    return None


def _loaded(session: Session, table: Table, key: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """The row as this session last saw it (``find_voucher`` and friends load what they change),
    or None when it is not in the session."""
    if key is None:
        return None
    for obj in list(session.identity_map.values()):
        state = inspect(obj)
        if state.mapper.local_table.name == table.name and state.identity == key:
            # Attributes changed in memory but not yet flushed: their stored value, not the new one.
            stored = {k: v for k, v in state.committed_state.items() if v is not NO_VALUE}
            return {**state.dict, **stored}
    return None


def _on_execute(state: ORMExecuteState) -> Any:
    """Audit an ``update()`` or ``delete()`` statement in the round trip it makes anyway: the
    statement is run with RETURNING of the primary key and the columns it changes. "After" is the
    RETURNING row; "before" of a counter moved by a literal (``col + n``) is that less ``n``; any
    other "before" comes from the row as this session loaded it, and only when the session has not
    loaded it (bulk statements of the sweep and the back office) from a SELECT ahead of the
    statement. An audited statement's result holds the rows the caller asked to be returned and
    no rowcount: ask RETURNING for what you need."""
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
    width = len(pk)
    asked = len(statement._returning)
    if state.is_delete:
        columns = [c for c in table.columns if c not in pk]
        frozen = state.invoke_statement(statement=statement.returning(*pk, *columns)).freeze()
        for row in frozen.data:
            key = tuple(row[asked:asked + width])
            before = {c.key: _value(table.name, c.key, v) for c, v in zip(columns, row[asked + width:], strict=True)}
            _add(session, "delete", table.name, ",".join(str(part) for part in key), before, {})
        return frozen().columns(*range(asked)) if asked else frozen()
    values = _set_values(table, statement)
    columns = [table.c[name] for name in values]
    deltas = {name: _delta(table, name, value) for name, value in values.items()}
    earlier: dict[tuple[Any, ...], dict[str, Any]] = {}
    if any(d is None for d in deltas.values()):
        key = _targeted_key(table, statement.whereclause)
        loaded = _loaded(session, table, key)
        if loaded is not None and key is not None:
            earlier[key] = loaded
        else:
            query = select(*pk, *columns)
            if statement.whereclause is not None:
                query = query.where(statement.whereclause)
            params = state.parameters if isinstance(state.parameters, dict) else None
            for row in session.execute(query, params, execution_options={"audit_skip": True}).all():
                earlier[tuple(row[:width])] = dict(zip((c.key for c in columns), row[width:], strict=True))
    frozen = state.invoke_statement(statement=statement.returning(*pk, *columns)).freeze()
    for row in frozen.data:
        key = tuple(row[asked:asked + width])
        after_raw = dict(zip(values, row[asked + width:], strict=True))
        seen = earlier.get(key, {})
        before, after = {}, {}
        for name, new in after_raw.items():
            delta = deltas[name]
            if delta is not None and new is not None:
                old = new - delta
            elif name in seen:
                old = seen[name]
            else:  # not seen before the change: record what it became
                after[name] = _value(table.name, name, new)
                continue
            if old != new:
                before[name] = _value(table.name, name, old)
                after[name] = _value(table.name, name, new)
        if after:
            _add(session, "update", table.name, ",".join(str(part) for part in key), before, after)
    return frozen().columns(*range(asked)) if asked else frozen()


def _savepoint_started(session: Session, transaction: Any) -> None:
    if transaction.nested:
        session.info.setdefault("audit_marks", {})[id(transaction)] = len(_pending(session))


def _rolled_back(session: Session, previous: Any) -> None:
    marks = session.info.get("audit_marks", {})
    if previous.nested and id(previous) in marks:
        del _pending(session)[marks.pop(id(previous)):]
    elif not previous.nested:
        session.info.pop("audit_pending", None)
        session.info.pop("audit_marks", None)


def _write(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: its records wait for the outer commit (or go with its rollback)
    if not session.info.get("audit_pending") and session._is_clean():
        return
    session.flush()  # commit flushes after this event; flush now so those changes are caught
    pending: list[_Record] = session.info.pop("audit_pending", [])
    session.info.pop("audit_marks", None)
    if not pending:
        return
    # No lock and no hash here: every writer would queue on the chain's head. ``seal`` chains
    # the entries once they are committed.
    session.connection().execute(AuditEntry.__table__.insert(), [
        {"at": item.at, "actor": item.actor, "address": item.address, "action": item.action,
         "table_name": item.table_name, "row_id": item.row_id, "before": item.before, "after": item.after}
        for item in pending])


_LISTENERS = (
    ("after_flush", _after_flush),
    ("do_orm_execute", _on_execute),
    ("after_transaction_create", _savepoint_started),
    ("after_soft_rollback", _rolled_back),
    ("before_commit", _write),
)


def install() -> None:
    """Turn the audit log on for every session of this process (idempotent). Called once where
    the process sets up its database access (:meth:`service.runtime.Runtime.create`), so the log
    is on for the server, the worker, the CLI and the tests alike."""
    for name, listener in _LISTENERS:
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)


# --- sealing -----------------------------------------------------------------------------------


async def seal(session: AsyncSession, *, batch: int = 5000) -> int:
    """Give committed entries their place in the chain and their hash, in the order they were
    written; returns how many. Run in a transaction of its own (the background loop does, every
    second, and ``vouchers audit verify`` first). A reader sees only committed entries, so an
    entry whose transaction commits later is simply sealed by a later call: the chain's order
    is the order of sealing. The head's lock keeps concurrent sealers in line."""
    head_query = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
    if session.bind.dialect.name == "postgresql":
        head_query = head_query.with_for_update()
    head = (await session.execute(head_query)).one()  # made with the table (``models_admin``)
    chain_seq, prev = int(head.seq), head.hash
    table = AuditEntry.__table__
    rows = (await session.execute(
        select(table).where(table.c.chain_seq.is_(None)).order_by(table.c.seq).limit(batch))).all()
    if not rows:
        return 0
    sealed = []
    for row in rows:
        chain_seq += 1
        digest = entry_hash(prev, seq=chain_seq, at=row.at, actor=row.actor, address=row.address, action=row.action,
                            table_name=row.table_name, row_id=row.row_id, before=row.before, after=row.after)
        sealed.append({"entry": row.seq, "chain_seq": chain_seq, "prev_hash": prev, "hash": digest})
        prev = digest
    await session.execute(
        update(table).where(table.c.seq == bindparam("entry"))
        .values(chain_seq=bindparam("chain_seq"), prev_hash=bindparam("prev_hash"), hash=bindparam("hash")),
        sealed, execution_options={"audit_skip": True})
    await session.execute(update(AuditHead.__table__).where(AuditHead.id == 1).values(seq=chain_seq, hash=prev))
    return len(sealed)


async def seal_all(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """:func:`seal` in batches until nothing committed is left unsealed. On SQLite a batch holds
    the database's write lock while it hashes, so batches there are small: about 15 ms each."""
    total = 0
    batch = 250 if sessionmaker.kw["bind"].dialect.name == "sqlite" else 5000
    while True:
        async with transaction(sessionmaker) as session:
            done = await seal(session, batch=batch)
        total += done
        if done < batch:
            return total


# --- reading -----------------------------------------------------------------------------------


class VerifyResult(msgspec.Struct, kw_only=True):
    ok: bool
    entries: int
    """Sealed entries checked."""
    unsealed: int
    """Entries written but not yet sealed (seconds old, normally); they are not checked."""
    problems: list[str]
    head_hash: str


async def verify(session: AsyncSession, *, batch: int = 2000) -> VerifyResult:
    """Walk the chain from its first entry: places without gaps, each ``prev_hash`` equal to the
    hash before it, each hash recomputed from the entry, and the last one equal to the head."""
    problems: list[str] = []
    prev, expected, count = GENESIS, 1, 0
    last = 0
    while True:
        rows = list(await session.scalars(
            select(AuditEntry).where(AuditEntry.chain_seq > last).order_by(AuditEntry.chain_seq).limit(batch)))
        if not rows:
            break
        for entry in rows:
            place = int(entry.chain_seq or 0)
            count += 1
            if place != expected:
                problems.append(f"places {expected} to {place - 1} of the chain are missing")
            if entry.prev_hash != prev:
                problems.append(f"entry {entry.seq}: does not follow the entry before it")
            digest = entry_hash(entry.prev_hash or "", seq=place, at=entry.at, actor=entry.actor,
                                address=entry.address, action=entry.action, table_name=entry.table_name,
                                row_id=entry.row_id, before=entry.before, after=entry.after)
            if digest != entry.hash:
                problems.append(f"entry {entry.seq}: its content was changed")
            prev, expected, last = entry.hash or "", place + 1, place
        session.expunge_all()
    head = await session.get(AuditHead, 1)
    head_seq, head_hash = (head.seq, head.hash) if head is not None else (0, GENESIS)
    if head_seq != last or head_hash != prev:
        problems.append(f"the chain ends at place {last}, but its head says {head_seq}: entries were removed")
    unsealed = await session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.chain_seq.is_(None)))
    return VerifyResult(ok=not problems, entries=count, unsealed=int(unsealed or 0), problems=problems,
                        head_hash=head_hash)


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
    if f.until and f.until < dt.date.max:  # the last day there is bounds nothing
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
