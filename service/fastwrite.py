"""The two busiest writes, a coach's redemption and an application, straight through the driver.

Every redemption of a scheme changes the provider's enrolment row, and every application the
scheme's row. Through a session those rows stay locked from their UPDATE until the
COMMIT, across several round trips to this process, and every other request waits in line for
them: measured, that line, not the CPU, held both to about 150 a second on PostgreSQL. On SQLite
the whole database is locked that long, and each statement is a hand-off to aiosqlite's thread.
So here each is a read without a lock, then one short write:

* PostgreSQL: one statement of data-modifying CTEs, run in autocommit, so the rows are locked
  only while PostgreSQL executes it. Each UPDATE runs only if the one before it changed its row.
  If a later rule refuses after an earlier UPDATE, ``vouchers_refuse()`` raises and PostgreSQL
  undoes the whole statement. The ids of the new rows are taken from their sequences in the read.
* SQLite: the same statements one after the other in one transaction on the event loop's thread
  (``FastPath.write``), with no ``await`` between BEGIN and COMMIT.

A redemption is defined once, in ``service.vouchers`` (``REDEEM_TERMS``, ``redeeming``, ``REDEEM``
and ``Redeeming.steps``): here those statements are compiled for the database and run through the
driver. It writes the voucher's and the enrolment's conditional UPDATEs (the enrolment's refuses
once the scheme has closed), the redemption, its ledger entry, its mail, its audit entries and, for
the coach's form, its key's answer. It does not touch the scheme's row.
The redemptions of a scheme, like its applications, that arrive while this process writes others
are written together in one transaction (``_grouped``, ``_sqlite_grouped``).
An application to a first-come scheme by an eligible applicant writes: a place and a voucher's
value taken from the scheme if both are left and nobody waits (``applications.take_place``), else
the next waiting-list number; the application with its outcome, the voucher and its ledger entry,
the mail and the audit entries (the two the session path writes: received, then decided). A KvK
number that has applied already undoes it all.

An application's refusals, their order, the rows and the audit entries are those of
``applications.submit`` with ``decide`` (its place rule is compiled from there), which remain the
way for every other case: inside a caller's transaction (an ``Idempotency-Key`` stores its answer
in the same transaction), the entrepreneur's pages, and applications this path does not decide (a
lottery, an ineligible applicant). The tests compare the two paths row by row on both databases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from sqlalchemy import Boolean, bindparam, cast, text
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.dialects.sqlite import pysqlite as sqlite_pysqlite

from . import applications, audit, groups, ledger, outbox, privacy, statements, vouchers
from .db import writer_turn
from .errors import N_, Conflict, DomainError, NotFound
from .idempotency import ClaimLost
from .fastpath import from_sqlite_moment, sqlite_moment
from .models import Redemption, Scheme, UTCDateTime, Voucher, utcnow
from .runtime import Runtime

__all__ = ("apply", "redeem")


def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` placeholders as asyncpg's ``$n``, and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return re.sub(r"(?<![:\w]):(\w+)", number, sql), tuple(names)


def _args(names: tuple[str, ...], values: dict[str, Any]) -> list[Any]:
    return [values[name] for name in names]


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _lite(value: Any) -> Any:
    """A value as the engine stores it in SQLite (``models.UTCDateTime``, ``Date``, ``JSON``)."""
    if isinstance(value, dt.datetime):
        return sqlite_moment(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


_INSERTS: dict[tuple[str, tuple[str, ...]], str] = {}


def _insert(conn: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
    key = (table, tuple(values))
    sql = _INSERTS.get(key)
    if sql is None:
        sql = _INSERTS[key] = (f"INSERT INTO {table} ({', '.join(values)}) "
                               f"VALUES ({', '.join(':' + name for name in values)})")
    conn.execute(sql, {name: _lite(value) for name, value in values.items()})


_AUDIT_INSERT = ("INSERT INTO audit_entry (at, actor, address, action, table_name, row_id, before, after) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _audit(conn: sqlite3.Connection, now: dt.datetime, entries: list[tuple[str, str, Any, dict, dict]]) -> None:
    who = audit.current_context()
    conn.executemany(_AUDIT_INSERT, [(sqlite_moment(now), who.actor, who.address, action, table, str(row_id),
                                      _json(before), _json(after)) for action, table, row_id, before, after in entries])


def _next_ids(conn: sqlite3.Connection, *tables: str) -> list[int]:
    """The ids SQLite would give the next rows: under the write lock, nobody else inserts."""
    return [conn.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0] for table in tables]


class _Undo(Exception):
    """A rule refused after an earlier UPDATE: roll the SQLite transaction back."""

    def __init__(self, refusal: DomainError) -> None:
        self.refusal = refusal


_REFUSED_PREFIX = "vouchers-refused:"


def _refusal(code: str) -> DomainError:
    if code == "already-applied":
        return Conflict("already-applied", applications.ALREADY_APPLIED, field="kvk_number")
    raise ValueError(code)


class _EnrolmentRefused(Exception):
    """The enrolment's UPDATE of a redemption changed nothing: why is read afterwards."""


class _PlaceFree(Exception):
    """An application written without what a place needs found a free place: write it again with."""


async def _pg_write(rt: Runtime, sql: str, args: list[Any], *, attempts: int = 5) -> Any:
    """Run one statement in autocommit; again if PostgreSQL reports a deadlock (a session-path
    application takes the KvK number's index entry before the scheme's row, this the other way
    round), as ``db.run_in_transaction`` does."""
    for attempt in range(1, attempts + 1):
        try:
            return await rt.fast.fetchrow(sql, *args)
        except asyncpg.RaiseError as exc:
            message = str(exc)
            if not message.startswith(_REFUSED_PREFIX):
                raise
            code = message.removeprefix(_REFUSED_PREFIX)
            if code == "claim-lost":
                raise ClaimLost() from None
            if code == "enrolment":
                raise _EnrolmentRefused() from None
            if code == "place-free":
                raise _PlaceFree() from None
            raise _refusal(code) from None
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == attempts:
                raise
            await asyncio.sleep(0.005 * attempt)
    raise AssertionError("unreachable")


def _answer_lost(exc: Exception) -> bool:
    """Whether a statement that raised may have been committed all the same: the connection failed,
    or the server ended the session, perhaps after the statement had reached it. An ERROR from the
    server undoes a statement in autocommit, and a refusal (``vouchers_refuse``) has become a
    domain error by now."""
    return (isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError))
            and getattr(exc, "severity_en", None) != "ERROR")


async def _sqlite_write(rt: Runtime, work: Any) -> Any:
    try:
        return await rt.fast.write(work, writer_turn(rt.sessionmaker))
    except _Undo as undo:
        raise undo.refusal from None


def _sqlite_grouped(rt: Runtime, kind: str, scheme_id: int, work: Callable[[sqlite3.Connection], Any]) -> Any:
    """``_sqlite_write(rt, work)``, with the writes of the same kind and scheme that arrive while
    this process is writing others done together (``groups.grouped``), in order of arrival, in one
    transaction: the pages they share (the tables' last leaves, the indexes, the enrolment's or the
    scheme's row) go to the write-ahead log once per group, not once per write. If any of them
    refuses, the group is rolled back and written one by one."""
    return groups.grouped((rt.fast, kind, scheme_id), work, lambda one: _sqlite_write(rt, one),
                          lambda many: _sqlite_write(rt, lambda conn: [each(conn) for each in many]))


# --- redemption ----------------------------------------------------------------------------------
# Defined once in ``service.vouchers`` (the read of its terms, the checks, the write); here it is
# run through the driver: compiled for the database, grouped, and recovered when an answer is lost.

_PG_DIALECT, _SQLITE_DIALECT = postgresql_asyncpg.dialect(), sqlite_pysqlite.dialect()


class _Compiled:
    """A Core statement compiled once for a dialect, and how to bind values to it positionally."""

    __slots__ = ("fixed", "names", "sql")

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # The statement's own literals ('active', 0, …) travel as parameters too.
        self.fixed = {name: bind.effective_value for name, bind in compiled.binds.items()}

    def args(self, values: Mapping[str, Any], convert: Callable[[Any], Any]) -> list[Any]:
        return [convert(values[name] if name in values else self.fixed[name]) for name in self.names]


_COMPILED: dict[tuple[int, str], _Compiled] = {}


def _compiled(statement: Any, sqlite: bool) -> _Compiled:
    key = (id(statement), "sqlite" if sqlite else "postgresql")
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = _Compiled(statement, _SQLITE_DIALECT if sqlite else _PG_DIALECT)
    return found


def _pg_value(value: Any) -> Any:
    """A value as asyncpg takes it for the statement's casts (JSON as text)."""
    return _json(value) if isinstance(value, (list, dict)) else value


def _sqlite_runner(conn: sqlite3.Connection) -> Callable[[Any, dict[str, Any]], Any]:
    """``run`` for ``Redeeming.steps`` on this ``sqlite3`` connection."""
    def run(statement: Any, values: dict[str, Any]) -> Any:
        compiled = _compiled(statement, True)
        return conn.execute(compiled.sql, compiled.args(values, _lite)).fetchone()
    return run


async def _read(rt: Runtime, statement: Any, values: dict[str, Any]) -> Any:
    """One row of a read without a session: the reader's connection on SQLite."""
    sqlite = rt.settings.is_sqlite
    compiled = _compiled(statement, sqlite)
    if sqlite:
        return rt.fast.read_sqlite(compiled.sql, compiled.args(values, _lite))
    return await rt.fast.fetchrow(compiled.sql, *compiled.args(values, _pg_value))


async def redeem(
    rt: Runtime,
    code_text: str,
    *,
    attempts_key: str,
    provider_id: int | None,
    category: str,
    invoice_cents: int,
    reference: str,
    session_date: dt.date | None,
    recorded_by: str,
    answer: vouchers.Answer | None = None,
) -> tuple[Redemption, int]:
    """``vouchers.find_voucher`` and ``vouchers.redeem`` as one read and one write, committed when
    it returns; with ``answer``, an ``Idempotency-Key``'s answer is stored in that write. Returns
    the stored redemption and the voucher's balance after it."""
    code = vouchers.parse_code(code_text)
    now = utcnow()
    sqlite = rt.settings.is_sqlite
    terms = await _read(rt, vouchers.REDEEM_TERMS["sqlite" if sqlite else "postgresql"], {
        "code_hash": rt.keys.hash_of(code), "attempts_key": attempts_key, "since": vouchers.window_start(rt),
        "provider_id": provider_id})
    job = vouchers.redeeming(rt, terms, provider_id=provider_id, category=category, invoice_cents=invoice_cents,
                             reference=reference, session_date=session_date, recorded_by=recorded_by, now=now)
    if sqlite:
        done = await _sqlite_grouped(rt, "redeem", job.scheme_id,
                                     lambda conn: job.steps(_sqlite_runner(conn), answer))
        redemption_id, balance = (done[0], done[1][0]) if done is not None else (0, None)
    else:
        assert job.new_ids is not None
        redemption_id = job.new_ids[0]
        balance = await _redeem_on_postgres(rt, job, answer)
    if balance is None:
        raise vouchers.refusal(await _voucher_now(rt, job.voucher_id), job.amount, now)
    return job.stored(redemption_id), balance


async def _redeem_on_postgres(rt: Runtime, job: vouchers.Redeeming, answer: vouchers.Answer | None) -> int | None:
    """The one statement (``vouchers.REDEEM``), grouped: the voucher's balance after it, or None
    if the voucher refused."""
    compiled = _compiled(vouchers.REDEEM, False)
    try:
        row = await _grouped(rt, compiled.sql, job.scheme_id, _write_redemptions,
                             compiled.args(job.parameters(answer), _pg_value))
    except _EnrolmentRefused:
        # The statement ran in autocommit: this read sees the change that stopped it.
        raise vouchers.enrolment_refusal(*await _read(rt, vouchers.ENROLMENT_NOW,
                                                      {"enrolment_id": job.enrolment_id})) from None
    except Exception as exc:
        if not _answer_lost(exc):
            raise
        # Committed before its answer was lost? Then the redemption is there, and an answer of
        # 500 would invite the coach to redeem again. (The balance is the voucher's now.)
        written = await rt.fast.fetchrow(_REDEEMED, job.new_ids[0])  # type: ignore[index]
        if written is None:
            raise
        return written[0]
    return row[0]


_REDEEMED = "SELECT v.balance_cents FROM redemption r JOIN voucher v ON v.id = r.voucher_id WHERE r.id = $1"


async def _voucher_now(rt: Runtime, voucher_id: int) -> Voucher:
    """The voucher as stored now, for the reason a conditional UPDATE found nothing to change."""
    async with rt.reader() as session:
        return await session.get_one(Voucher, voucher_id)


# --- application ---------------------------------------------------------------------------------

_SCHEME_COLUMNS = tuple(Scheme.__table__.c.keys())
# The columns by name, never ``s.*``: SQLite's rows are read by position, and a table that grew by
# migrations has its columns in the order they were added, not in the model's.
_SCHEME = "SELECT " + ", ".join(f's."{name}"' for name in _SCHEME_COLUMNS) + "{ids} FROM scheme s WHERE s.slug = :slug"
_SCHEME_PG, _SCHEME_PG_NAMES = _numbered(_SCHEME.format(ids=""",
       nextval(pg_get_serial_sequence('application', 'id')) AS new_application_id,
       nextval(pg_get_serial_sequence('voucher', 'id')) AS new_voucher_id,
       nextval(pg_get_serial_sequence('ledger_entry', 'id')) AS new_entry_id"""))
_SCHEME_SQLITE = _SCHEME.format(ids="")

# The rules of ``applications.take_place`` (a newcomer) and of joining the waiting list. On
# PostgreSQL the second runs only if the first changed nothing, so one statement never changes the
# scheme's row twice.
# The rules of ``applications.take_place`` (a newcomer) and of joining the waiting list, compiled
# from their one definition there. On PostgreSQL the second runs only if the first changed nothing,
# so one statement never changes the scheme's row twice.
def _named(statement: Any, sqlite: bool) -> str:
    """A Core statement as SQL text with ``:name`` parameters; its own literals (the 1 a counter
    grows by, the 0 of an empty waiting list) written in."""
    dialect = sqlite_pysqlite.dialect(paramstyle="named") if sqlite else postgresql_base.dialect(paramstyle="named")
    compiled = statement.compile(dialect=dialect)
    sql = compiled.string
    for name, bind in compiled.binds.items():
        if name.isidentifier() and bind.effective_value is not None:
            assert type(bind.effective_value) is int, name
            sql = re.sub(rf"(?<![:\w]):{name}(::\w+)?(?!\w)", str(bind.effective_value), sql)
    return sql


_PLACE = _named(applications.TAKE_FOR_NEWCOMER.where(cast(bindparam("may_place"), Boolean)), False)
_WAIT = _named(applications.JOIN_WAITING_LIST.where(
    text("NOT EXISTS (SELECT FROM placed)"), cast(bindparam("may_place"), Boolean) | ~applications.PLACE_FOR_NEWCOMER),
    False)
_PLACE_SQLITE, _WAIT_SQLITE = _named(applications.TAKE_FOR_NEWCOMER, True), _named(applications.JOIN_WAITING_LIST, True)

# ``may_place`` false: the caller has not made what a place needs, so a free place is not taken and
# the statement refuses ("place-free") rather than put the applicant on the waiting list.
_APPLY_PG, _APPLY_PG_NAMES = _numbered(f"""
WITH placed AS (
    {_PLACE}
), waiting AS (
    {_WAIT}
), applied AS (
    INSERT INTO application (id, public_id, scheme_id, status, kvk_number, company_name, employees, postcode,
                             contact_name, email, purpose, locale, reasons, waitlist_number, lottery_rank,
                             created_at, decided_at, email_confirmed_at, registry_checked_at, registry_employees,
                             registry_postcode, registry_attempts)
    SELECT :application_id::bigint, :public_id::text, :scheme_id::bigint,
           CASE WHEN placed.places_used IS NOT NULL THEN 'granted' ELSE 'waiting' END,
           :kvk_number::text, :company_name::text, :employees::int, :postcode::text, :contact_name::text,
           :email::text, :purpose::text, :locale::text, '[]'::json, waiting.waitlist_seq, NULL,
           :now::timestamptz, :now::timestamptz, NULL, NULL, NULL, NULL, 0
    FROM (SELECT 1 AS one) AS one LEFT JOIN placed ON true LEFT JOIN waiting ON true
    WHERE (placed.places_used IS NOT NULL OR waiting.waitlist_seq IS NOT NULL)
      AND NOT EXISTS (SELECT FROM application WHERE scheme_id = :scheme_id::bigint AND kvk_number = :pseudonym::text
                      AND status NOT IN ('rejected', 'withdrawn'))
    ON CONFLICT DO NOTHING
    RETURNING id, status, waitlist_number
), issued AS (
    INSERT INTO voucher (id, scheme_id, application_id, kvk_number, code_hash, code_salt, status, value_cents,
                         balance_cents, held_cents, redeemed_cents, returned_cents, holds_place, issued_at,
                         expires_at, ended_at, end_reason)
    SELECT :voucher_id::bigint, :scheme_id::bigint, applied.id, :kvk_number::text, :code_hash::bytea,
           :code_salt::bytea, 'active', placed.value_cents, placed.value_cents, 0, 0, 0, true, :now::timestamptz,
           :expires_at::timestamptz, NULL, NULL
    FROM placed, applied
    RETURNING id
), posted AS (
    INSERT INTO ledger_entry (id, scheme_id, kind, from_kind, from_id, to_kind, to_id, amount_cents, places,
                              voucher_id, redemption_id, hold_id, created_at, memo)
    SELECT :entry_id::bigint, :scheme_id::bigint, 'issue', 'budget', :scheme_id::bigint, 'voucher', issued.id,
           placed.value_cents, 1, issued.id, NULL, NULL, :now::timestamptz, ''
    FROM placed, issued
), mailed AS (
    INSERT INTO outbox_message (message_id, to_address, template, locale, params, status, attempts,
                                next_attempt_at, created_at)
    SELECT :message_id::text, :email::text,
           CASE WHEN applied.status = 'granted' THEN 'voucher_issued' ELSE 'application_waiting' END,
           :locale::text,
           CASE WHEN applied.status = 'granted' THEN :issued_mail::json ELSE :waiting_mail::json END,
           'pending', 0, :now::timestamptz, :now::timestamptz
    FROM applied
), audited AS (
    INSERT INTO audit_entry (at, actor, address, action, table_name, row_id, before, after)
    SELECT :now::timestamptz, :actor::text, :address::text, 'insert', 'application', :application_id::text,
           '{{}}'::json, :received::json
    FROM applied
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'update', 'scheme', :scheme_id::text,
           json_build_object('places_used', placed.places_used - 1,
                             'committed_cents', placed.committed_cents - placed.value_cents),
           json_build_object('places_used', placed.places_used, 'committed_cents', placed.committed_cents)
    FROM placed, applied
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'update', 'scheme', :scheme_id::text,
           json_build_object('waitlist_seq', waiting.waitlist_seq - 1, 'waiting_count', waiting.waiting_count - 1),
           json_build_object('waitlist_seq', waiting.waitlist_seq, 'waiting_count', waiting.waiting_count)
    FROM waiting, applied
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'insert', table_name, row_id, '{{}}'::json, after
    FROM issued, json_to_recordset(:issued_rows::json) AS inserted(table_name text, row_id text, after json)
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'update', 'application', :application_id::text,
           CASE WHEN applied.status = 'granted' THEN :granted_before::json ELSE :waiting_before::json END,
           CASE WHEN applied.status = 'granted' THEN :granted_after::json
                ELSE json_build_object('status', 'waiting', 'waitlist_number', applied.waitlist_number,
                                       'decided_at', :decided_at::text) END
    FROM applied
)
SELECT applied.status, waiting.waiting_count,
       CASE WHEN placed.places_used IS NULL AND waiting.waitlist_seq IS NULL THEN vouchers_refuse('place-free')
            WHEN applied.id IS NULL THEN vouchers_refuse('already-applied') END
FROM (SELECT 1 AS one) AS one LEFT JOIN applied ON true LEFT JOIN waiting ON true LEFT JOIN placed ON true
""")
_APPLIED_SQLITE = " ON CONFLICT DO NOTHING RETURNING id"
_PURGED_TWIN_SQLITE = ("SELECT 1 FROM application WHERE scheme_id = ? AND kvk_number = ?"
                       " AND status NOT IN ('rejected', 'withdrawn') LIMIT 1")


@dataclass(frozen=True, slots=True)
class _Applying:
    """An eligible application to a first-come scheme, ready to be written."""

    rt: Runtime
    now: dt.datetime
    scheme: Scheme
    application: dict[str, Any]
    """Its columns as ``applications.submit`` writes them (status ``received``)."""
    pseudonym: str
    """What its KvK number becomes in a privacy purge: a purged application of the scheme counts too."""

    def granted(self, application_id: int, voucher_id: int, entry_id: int
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """What a place needs: the voucher's and the ledger entry's columns and the voucher mail's
        parameters (a fresh code, so made only when a place may be taken)."""
        a = self.application
        voucher = applications.voucher_values(self.rt, self.scheme, application_id, a["kvk_number"], self.now)
        entry = ledger.entry_values(scheme_id=self.scheme.id, kind="issue", source=(ledger.BUDGET, self.scheme.id),
                                    target=(ledger.VOUCHER, voucher_id), amount_cents=self.scheme.value_cents,
                                    places=1, voucher_id=voucher_id) | {"created_at": self.now}
        issued = applications.issued_mail(self.scheme, voucher_id, voucher["expires_at"], a["locale"],
                                          a["contact_name"])
        return voucher, entry, issued

    def mails(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The message's columns and the waiting-list mail's parameters."""
        a = self.application
        return (outbox.message_values(a["email"], "voucher_issued", a["locale"], {}),
                applications.waiting_mail(self.scheme, a["public_id"], a["locale"], a["contact_name"]))

    def decided(self, status: str, waitlist_number: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The audit log's before and after of the decision, as the session's flush records it."""
        changed = {"status": status, "decided_at": self.now}
        if status == "waiting":
            changed["waitlist_number"] = waitlist_number
        return (audit.changed("application", {k: self.application[k] for k in changed}),
                audit.changed("application", changed))

    async def on_postgres(self, application_id: int, voucher_id: int, entry_id: int, *,
                          may_place: bool) -> tuple[str, int | None]:
        """The one statement; raises :class:`_PlaceFree` when ``may_place`` is false and a place is
        free after all."""
        a = self.application
        message, waiting = self.mails()
        waiting_before, waiting_after = self.decided("waiting", None)
        who = audit.current_context()
        values = {
            "scheme_id": self.scheme.id, "application_id": application_id, "public_id": a["public_id"],
            "kvk_number": a["kvk_number"], "company_name": a["company_name"], "employees": a["employees"],
            "postcode": a["postcode"], "contact_name": a["contact_name"], "email": a["email"],
            "purpose": a["purpose"], "locale": a["locale"], "now": self.now, "voucher_id": voucher_id,
            "entry_id": entry_id, "message_id": message["message_id"], "waiting_mail": _json(waiting),
            "actor": who.actor, "address": who.address, "pseudonym": self.pseudonym,
            "received": _json(audit.inserted("application", application_id, a)),
            "waiting_before": _json(waiting_before), "decided_at": waiting_after["decided_at"],
            "may_place": may_place, "code_hash": None, "code_salt": None, "expires_at": None, "issued_mail": None,
            "issued_rows": None, "granted_before": None, "granted_after": None}
        if may_place:
            voucher, entry, issued = self.granted(application_id, voucher_id, entry_id)
            granted_before, granted_after = self.decided("granted", None)
            values |= {
                "code_hash": voucher["code_hash"], "code_salt": voucher["code_salt"],
                "expires_at": voucher["expires_at"], "issued_mail": _json(issued),
                "issued_rows": _json([
                    {"table_name": "voucher", "row_id": str(voucher_id),
                     "after": audit.inserted("voucher", voucher_id, voucher)},
                    {"table_name": "ledger_entry", "row_id": str(entry_id),
                     "after": audit.inserted("ledger_entry", entry_id, entry)}]),
                "granted_before": _json(granted_before), "granted_after": _json(granted_after)}
        row = await _grouped(self.rt, _APPLY_PG, self.scheme.id, _write_applications, _args(_APPLY_PG_NAMES, values))
        return row[0], row[1]

    def on_sqlite(self, conn: sqlite3.Connection) -> tuple[str, int | None]:
        """The write transaction's work: the outcome and, when waiting, the length of the list."""
        if conn.execute(_PURGED_TWIN_SQLITE, (self.scheme.id, self.pseudonym)).fetchone() is not None:
            raise _Undo(_refusal("already-applied"))
        application_id, voucher_id, entry_id = _next_ids(conn, "application", "voucher", "ledger_entry")
        message, waiting_mail = self.mails()
        placed = conn.execute(_PLACE_SQLITE, {"scheme_id": self.scheme.id}).fetchone()
        waiting = None if placed else conn.execute(_WAIT_SQLITE, {"scheme_id": self.scheme.id}).fetchone()
        status, number = ("granted", None) if placed else ("waiting", waiting[0])
        application = {**self.application, "status": status, "waitlist_number": number, "decided_at": self.now}
        values = {"id": application_id, **application}
        sql = f"INSERT INTO application ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})"
        if conn.execute(sql + _APPLIED_SQLITE, {k: _lite(v) for k, v in values.items()}).fetchone() is None:
            raise _Undo(_refusal("already-applied"))
        entries: list[tuple[str, str, Any, dict, dict]] = [
            ("insert", "application", application_id, {}, audit.inserted("application", application_id,
                                                                          self.application))]
        if placed:
            places_used, committed, value = placed[:3]
            voucher, entry, issued = self.granted(application_id, voucher_id, entry_id)
            _insert(conn, "voucher", {"id": voucher_id, **voucher})
            _insert(conn, "ledger_entry", {"id": entry_id, **entry})
            entries += [
                ("update", "scheme", self.scheme.id, {"places_used": places_used - 1,
                                                      "committed_cents": committed - value},
                 {"places_used": places_used, "committed_cents": committed}),
                ("insert", "voucher", voucher_id, {}, audit.inserted("voucher", voucher_id, voucher)),
                ("insert", "ledger_entry", entry_id, {}, audit.inserted("ledger_entry", entry_id, entry))]
            mail = {**message, "params": issued}
        else:
            seq, count = waiting
            entries.append(("update", "scheme", self.scheme.id, {"waitlist_seq": seq - 1, "waiting_count": count - 1},
                            {"waitlist_seq": seq, "waiting_count": count}))
            mail = {**message, "template": "application_waiting", "params": waiting_mail}
        entries.append(("update", "application", application_id, *self.decided(status, number)))
        _insert(conn, "outbox_message", {**mail, "status": "pending", "attempts": 0, "next_attempt_at": self.now,
                                         "created_at": self.now})
        _audit(conn, self.now, entries)
        return status, waiting[1] if waiting else None


async def apply(rt: Runtime, slug: str, details: applications.ApplicantDetails
                ) -> applications.ApplicationState | None:
    """``applications.submit`` and ``decide`` as one read and one write, committed when it
    returns; None, with nothing written, for an application this path does not decide (a lottery,
    an ineligible applicant): the caller runs the session path for those."""
    now = utcnow()
    if rt.settings.is_sqlite:
        row = rt.fast.read_sqlite(_SCHEME_SQLITE, {"slug": slug})
        row = None if row is None else dict(zip(_SCHEME_COLUMNS, row, strict=True))
    else:
        row = await rt.fast.fetchrow(_SCHEME_PG, *_args(_SCHEME_PG_NAMES, {"slug": slug}))
    if row is None:
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    scheme = _scheme_snapshot(rt, row)
    job = _Applying(rt=rt, now=now, scheme=scheme, application=applications.application_values(scheme, details, now),
                    pseudonym=privacy.pseudonym(rt, details.kvk_number))
    if scheme.allocation != "first_come" or applications.eligibility_reasons(
            scheme, employees=details.employees, postcode=details.postcode):
        return None
    if rt.settings.is_sqlite:
        status, waiting_count = await _sqlite_grouped(rt, "apply", scheme.id, job.on_sqlite)
    else:
        ids = row["new_application_id"], row["new_voucher_id"], row["new_entry_id"]
        # What a place needs is made only if the read saw a free place (once the places are gone,
        # the waiting list's applicants are nearly all): if one came free since, the statement
        # refuses and runs again with it.
        try:
            try:
                status, waiting_count = await job.on_postgres(*ids, may_place=_place_free(scheme))
            except _PlaceFree:
                status, waiting_count = await job.on_postgres(*ids, may_place=True)
        except Exception as exc:
            if not _answer_lost(exc):
                raise
            # Committed before its answer was lost? Then the application is there, and an answer of
            # 500 would have the applicant apply again, to be refused as having applied already.
            # (Its place on the waiting list is the one it has now.)
            state = await _state_if_written(rt, job.application["public_id"])
            if state is None:
                raise
            return state
    return applications.ApplicationState(
        application_id=job.application["public_id"], scheme=scheme.slug, status=status,
        waiting_list_position=waiting_count if status == "waiting" else None, reasons=[])


async def _state_if_written(rt: Runtime, public_id: str) -> applications.ApplicationState | None:
    async with rt.reader() as session:
        try:
            return await applications.application_state(session, public_id)
        except NotFound:
            return None


def _grouped(rt: Runtime, sql: str, scheme_id: int,
             together: Callable[[Runtime, list[list[Any]]], Awaitable[list[Any]]], args: list[Any]) -> Any:
    """``_pg_write(rt, sql, args)``, with the statements of the same scheme that arrive while this
    process is writing others written together (``groups.grouped``) by ``together``, in one
    transaction. Every application updates the scheme's row, and every redemption its provider's
    enrolment, and holds it until the commit, so under load they commit one at a time: a group
    commits once (BENCHMARKS.md, "Measured 2026-11-30, later"). ``together`` answers what each
    statement would alone and raises if any of them refused or failed: the group is then rolled
    back and written one by one."""
    return groups.grouped((rt.fast, sql, scheme_id), args, lambda one: _pg_write(rt, sql, one),
                          lambda group: together(rt, group))


_PUBLIC_ID = _APPLY_PG_NAMES.index("public_id")


async def _write_applications(rt: Runtime, group: list[list[Any]]) -> list[Any]:
    """The statements of a group in one transaction, sent together (asyncpg's ``fetchmany``
    does not wait for one answer before sending the next: the scheme's row stays locked for the
    database's work, not for this process's turns of the event loop). Each statement answers what
    it would alone: they ran in order, and nobody else changed the row in between."""
    try:
        async with rt.fast.connection() as conn:
            # One round trip: the statements and a single Sync, which commits them together
            # (asyncpg's ``fetchmany`` is all or nothing outside a transaction).
            statements.sent(_APPLY_PG)
            return await conn.fetchmany(_APPLY_PG, group)
    except Exception as exc:
        # Cut off, the group may have been committed all the same, and writing it again would
        # refuse every applicant as having applied already. The group is all or nothing, so one
        # applicant tells; each then gets their state now, as when alone (``apply``).
        if not _answer_lost(exc) or await rt.fast.fetchrow(_APPLIED, group[0][_PUBLIC_ID]) is None:
            raise
        states = [await _state_if_written(rt, args[_PUBLIC_ID]) for args in group]
        return [(state.status, state.waiting_list_position) for state in states]


_APPLIED = "SELECT 1 FROM application WHERE public_id = $1"

_VOUCHER_ID, _ENROLMENT_ID, _REDEMPTION_ID = (_compiled(vouchers.REDEEM, False).names.index(name)
                                              for name in ("voucher_id", "enrolment_id", "r_id"))
# A group's locks before its statements: each statement locks its voucher, then its provider's
# enrolment, and the group must not hold an enrolment while it waits for a row that someone holds
# who waits for that enrolment. So first every voucher, then every enrolment (``service.vouchers``'
# order), each kind in the order of the ids, as ``close_scheme`` locks the enrolments: two writers
# that lock in one order never wait for each other in a circle. With BEGIN in one message (the ids
# are integers from the database's own rows).
_LOCK_ROWS = ("BEGIN; SELECT FROM voucher WHERE id IN ({vouchers}) ORDER BY id FOR NO KEY UPDATE;"
              " SELECT FROM enrolment WHERE id IN ({enrolments}) ORDER BY id FOR NO KEY UPDATE")


async def _write_redemptions(rt: Runtime, group: list[list[Any]]) -> list[Any]:
    """The redemptions of a group in one transaction, as ``_write_applications`` writes
    applications; grouped by scheme, not by provider, so that the coaches of many providers share
    a commit too. A redemption the voucher refused wrote nothing and answers None, as alone; an
    enrolment's refusal raises."""
    answers: list[Any] | None = None
    try:
        async with rt.fast.connection() as conn:
            try:
                statements.sent(_LOCK_ROWS)
                await conn.execute(_LOCK_ROWS.format(
                    vouchers=",".join(str(int(args[_VOUCHER_ID])) for args in group),
                    enrolments=",".join(str(int(args[_ENROLMENT_ID])) for args in group)))
                statements.sent(_compiled(vouchers.REDEEM, False).sql)
                answers = await conn.fetchmany(_compiled(vouchers.REDEEM, False).sql, group)
                statements.sent("COMMIT")
                await conn.execute("COMMIT")
            except asyncpg.PostgresError:
                if conn.is_in_transaction():
                    await conn.execute("ROLLBACK")
                raise
    except Exception:
        # As for applications: cut off after the commit, the redemptions are there, and each
        # written again alone would fail on its redemption's id (the voucher's UPDATE undone with
        # it), a 500 inviting the coach to redeem a second time.
        if answers is not None:
            written = [args[_REDEMPTION_ID] for args, answer in zip(group, answers, strict=True)
                       if answer[0] is not None]
            if written and await rt.fast.fetchrow(_ANY_REDEEMED, written) is not None:
                return answers
        raise
    return answers


_ANY_REDEEMED = "SELECT 1 FROM redemption WHERE id = ANY($1::bigint[]) LIMIT 1"


def _place_free(scheme: Scheme) -> bool:
    """``_PLACE_FREE`` on the scheme as read."""
    return (scheme.closed_at is None and scheme.places_used < scheme.max_places
            and scheme.committed_cents + scheme.value_cents <= scheme.budget_cents and scheme.waiting_count == 0)


_SCHEME_JSON = ("categories", "postcodes")
_SCHEME_MOMENTS = tuple(c.name for c in Scheme.__table__.c if isinstance(c.type, UTCDateTime))
def _scheme_snapshot(rt: Runtime, row: Mapping[str, Any]) -> Scheme:
    """The scheme's row, read without a lock, as a Scheme."""
    values = {name: row[name] for name in _SCHEME_COLUMNS}
    for name in _SCHEME_JSON:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    if rt.settings.is_sqlite:
        for name in _SCHEME_MOMENTS:
            if values[name] is not None:
                values[name] = from_sqlite_moment(values[name])
    return vouchers.as_loaded(Scheme, values)
