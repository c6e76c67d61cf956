"""Vouchers: issue, look up, redeem, hold, confirm, release, reverse, revoke, expire.

Every function runs inside the caller's transaction and changes money only through conditional
UPDATEs whose WHERE clause is the rule itself (``balance_cents >= :amount``,
``places_used < max_places``, …), plus a ledger entry. Under concurrency the database decides:
a second request sees the first one's effect or waits for it, on SQLite (BEGIN IMMEDIATE) and
PostgreSQL (row locks) alike. Rows are always locked in the same order: voucher, hold or
redemption, enrolment, scheme.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (JSON, BigInteger, ColumnElement, Select, String, Table, and_, bindparam, case, cast, exists,
                        func, insert, literal, or_, select, true, union_all, update)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from . import applications, audit, ledger, outbox, refusals
from .codes import InvalidCode, normalise_code
from .errors import N_, DomainError, Forbidden, InvalidInput, NotFound, Refused, TooManyAttempts
from .fastpath import ScannedVoucher
from . import idempotency
from .idempotency import ClaimLost
from .models import (Application, Base, Enrolment, Hold, LedgerEntry, OutboxMessage, Provider,
                     RateLimitCounter, Redemption, Scheme, UTCDateTime, Voucher, utcnow)
from .models_admin import AuditEntry
from .runtime import Runtime

_Model = TypeVar("_Model", bound=Base)

__all__ = (
    "ENROLMENT_NOW",
    "ENROLMENT_OPEN",
    "HOLD_FOR_PROVIDER",
    "PAY",
    "PAY_HELD",
    "REDEEM",
    "REDEEM_TERMS",
    "REFUSED",
    "SET_ASIDE",
    "SPEND",
    "SPENDABLE",
    "Answer",
    "Redeeming",
    "ScannedVoucher",
    "as_loaded",
    "confirm_hold",
    "create_hold",
    "effective_status",
    "end_voucher",
    "enrolment_refusal",
    "find_voucher",
    "own_contribution",
    "provider_not_approved",
    "redeem",
    "redeeming",
    "refused_code",
    "release_hold",
    "reverse_redemption",
    "scan",
    "scheme_closed",
    "used_up_unless",
    "within_cap",
)


def own_contribution(invoice_cents: int, percent: int) -> int:
    """The entrepreneur's share of an invoice, rounded half up to the cent."""
    return (invoice_cents * percent + 50) // 100


def effective_status(voucher: Voucher | ScannedVoucher, now: dt.datetime | None = None) -> str:
    """The status a person should see: an active voucher past its date is expired even before
    the sweep has marked it."""
    if voucher.status == "active" and voucher.expires_at <= (now or utcnow()):
        return "expired"
    return voucher.status


def parse_code(code_text: str) -> str:
    try:
        return normalise_code(code_text)
    except InvalidCode:
        raise InvalidInput(
            "code-mistyped", N_("This is not a valid voucher code. Check it for typing errors."), field="code"
        ) from None


def check_attempts(rt: Runtime, attempts: int | None) -> None:
    # The web takes this lookup's slot before it (``ratelimit.failed_lookups_limited``) and refuses
    # there; the count read here includes that slot, so only a count past the limit refuses.
    if (attempts or 0) > rt.settings.failed_lookup_limit:
        raise TooManyAttempts(minutes=max(1, rt.settings.failed_lookup_window_seconds // 60))


def window_start(rt: Runtime) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=rt.settings.failed_lookup_window_seconds)


# Built once: the statement's compiled form is cached, so a lookup only binds values. The LEFT JOIN
# from a one-row table always gives one row, so the count of failed lookups is there even when
# the code is unknown.
_FIND = (
    select(Voucher)
    .select_from(select(literal(1).label("one")).subquery())
    .outerjoin(Voucher, Voucher.code_hash == bindparam("code_hash"))
    .add_columns(
        select(RateLimitCounter.count)
        .where(RateLimitCounter.key == bindparam("attempts_key"), RateLimitCounter.window_start >= bindparam("since"))
        .scalar_subquery()
    )
)


async def find_voucher(
    session: AsyncSession, rt: Runtime, code_text: str, *, attempts_key: str | None = None
) -> Voucher:
    """The voucher a typed or scanned code belongs to.

    A mistyped code is refused by its check symbol before any lookup (``code-mistyped``). With
    ``attempts_key``, a client that has guessed wrong too often is refused (``too-many-attempts``)
    even for a right code; the count is read in the same round trip as the voucher.
    """
    code = parse_code(code_text)
    row = (await session.execute(_FIND, {"code_hash": rt.keys.hash_of(code), "attempts_key": attempts_key,
                                         "since": window_start(rt)})).one()
    if attempts_key is not None:
        check_attempts(rt, row[1])
    if row[0] is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    return row[0]


async def scan(rt: Runtime, code_text: str, *, attempts_key: str, provider_id: int | None = None,
               delivered: int | None = None) -> ScannedVoucher:
    """What a coach sees on scanning a code: :func:`find_voucher`'s rules (check symbol first, a
    client over its limit refused even for a right code) in one read without a session, because
    this is the busiest request of the service (see ``service.fastpath``). A coach's page gives
    ``provider_id`` (and ``delivered``, a redemption just recorded) for the rest of what it shows."""
    code = parse_code(code_text)
    found, attempts = await rt.fast.scan(rt.keys.hash_of(code), attempts_key, window_start(rt),
                                         provider_id=provider_id, delivered=delivered)
    check_attempts(rt, attempts)
    if found is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    return found


async def _approved_enrolment(session: AsyncSession, scheme: Scheme, provider_id: int, category: str) -> Enrolment:
    enrolment = await session.scalar(
        select(Enrolment).where(Enrolment.scheme_id == scheme.id, Enrolment.provider_id == provider_id)
    )
    if enrolment is None or enrolment.status != "approved":
        raise provider_not_approved()
    if category not in scheme.categories or category not in enrolment.categories:
        raise Refused(
            "category-not-allowed", N_("This voucher cannot be used for this kind of service."), field="category"
        )
    return enrolment


def refusal(voucher: Voucher, amount_cents: int, now: dt.datetime) -> Refused:
    """Why a conditional UPDATE on this voucher found nothing to change."""
    status = effective_status(voucher, now)
    if status == "revoked":
        return Refused("voucher-revoked", N_("This voucher has been revoked."))
    if status == "expired":
        return Refused("voucher-expired", N_("This voucher has expired."))
    if status == "used_up" or voucher.balance_cents == 0:
        return Refused("voucher-used-up", N_("This voucher has been used up."))
    return Refused(
        "insufficient-balance",
        N_("The amount is more than the voucher's balance of %(balance)s."),
        balance=voucher.balance_cents,
        field="amount_cents",
    )


def _check_scheme_running(scheme: Scheme) -> None:
    if scheme.closed_at is not None:
        raise scheme_closed()


async def _set_aside(session: AsyncSession, voucher: Voucher, amount_cents: int, now: dt.datetime) -> None:
    """Move ``amount_cents`` of the voucher's balance to what is held, under :data:`SPENDABLE`."""
    result = await (await session.connection()).execute(
        SET_ASIDE, {"voucher_id": voucher.id, "amount": amount_cents, "now": now})
    row = result.first()
    if row is None:
        await session.refresh(voucher)
        raise refusal(voucher, amount_cents, now)
    _keep_in_step(voucher, row)
    balance, held = row[0], row[1]
    audit.record_update(session, "voucher", voucher.id,
                        {"balance_cents": balance + amount_cents, "held_cents": held - amount_cents},
                        {"balance_cents": balance, "held_cents": held})


def _keep_in_step(voucher: Voucher, row: Any) -> None:
    """The loaded voucher as a statement's RETURNING (``_VOUCHER_ROW``) left it, without another
    round trip."""
    for name, value in zip(("balance_cents", "held_cents", "redeemed_cents", "status"), row, strict=True):
        set_committed_value(voucher, name, value)


async def _notify_redemption(
    session: AsyncSession, rt: Runtime, voucher: Voucher, redemption: Redemption, provider_name: str
) -> None:
    application = await session.get_one(Application, voucher.application_id)
    outbox.enqueue(
        session,
        to=application.email,
        template="redemption_recorded",
        locale=application.locale,
        contact_name=application.contact_name,
        provider_name=provider_name,
        amount_cents=redemption.amount_cents,
        invoice_cents=redemption.invoice_cents,
        own_contribution_cents=redemption.own_contribution_cents,
        category=redemption.category,
        report_redemption_id=redemption.id,
    )


# --- The rules, each written once as the WHERE clause of a conditional UPDATE ---------------------
# Every path that changes these counters (the session's, the driver's of ``service.fastwrite``,
# one statement or a group) runs these statements, compiled for its database.
_V, _S, _E = Voucher.__table__, Scheme.__table__, Enrolment.__table__
_A, _P, _R = Application.__table__, Provider.__table__, Redemption.__table__
_AMOUNT = bindparam("amount", type_=BigInteger)
_NOW = bindparam("now", type_=UTCDateTime())
_CAP = bindparam("cap", type_=BigInteger)

SPENDABLE = and_(_V.c.status == "active", _V.c.expires_at > _NOW, _V.c.balance_cents >= _AMOUNT)
"""A voucher can give ``amount``: active, not past its date, and the balance is there."""

ENROLMENT_OPEN = and_(_E.c.status == "approved", _E.c.scheme_closed_at.is_(None))
"""A provider may be paid or have money set aside: approved, and the scheme not closed (closing
marks the enrolments, see ``Enrolment.scheme_closed_at``)."""


def within_cap(more: Any) -> ColumnElement[bool]:
    """What the provider has received and what open holds set aside for it, plus ``more``, stay
    within ``cap`` (the enrolment's own, else the scheme's; NULL for none)."""
    return or_(_CAP.is_(None), _E.c.received_cents + _E.c.held_cents + more <= _CAP)


def used_up_unless(balance: Any, held: Any) -> ColumnElement[str]:
    """The status of a voucher that was active: used up once nothing is left or held."""
    return case((balance + held == 0, "used_up"), else_="active")


_VOUCHER_ROW = (_V.c.balance_cents, _V.c.held_cents, _V.c.redeemed_cents, _V.c.status)
SPEND = (
    update(_V).where(_V.c.id == bindparam("voucher_id"), SPENDABLE)
    .values(balance_cents=_V.c.balance_cents - _AMOUNT, redeemed_cents=_V.c.redeemed_cents + _AMOUNT,
            status=used_up_unless(_V.c.balance_cents - _AMOUNT, _V.c.held_cents))
    .returning(*_VOUCHER_ROW)
)
"""A redemption takes its amount from the voucher."""
SET_ASIDE = (
    update(_V).where(_V.c.id == bindparam("voucher_id"), SPENDABLE)
    .values(balance_cents=_V.c.balance_cents - _AMOUNT, held_cents=_V.c.held_cents + _AMOUNT)
    .returning(*_VOUCHER_ROW)
)
"""A hold moves its amount from the voucher's balance to what is held."""
PAY = (
    update(_E).where(_E.c.id == bindparam("enrolment_id"), ENROLMENT_OPEN, within_cap(_AMOUNT))
    .values(received_cents=_E.c.received_cents + _AMOUNT).returning(_E.c.received_cents, _E.c.held_cents)
)
"""A redemption pays the provider."""
HOLD_FOR_PROVIDER = (
    update(_E).where(_E.c.id == bindparam("enrolment_id"), ENROLMENT_OPEN, within_cap(_AMOUNT))
    .values(held_cents=_E.c.held_cents + _AMOUNT).returning(_E.c.received_cents, _E.c.held_cents)
)
"""A hold sets money aside for the provider, under the same cap as a payment."""
PAY_HELD = (
    update(_E).where(_E.c.id == bindparam("enrolment_id"), ENROLMENT_OPEN, within_cap(0))
    .values(received_cents=_E.c.received_cents + _AMOUNT, held_cents=_E.c.held_cents - _AMOUNT)
    .returning(_E.c.received_cents, _E.c.held_cents)
)
"""A confirmed hold moves what was set aside to what was received: the sum does not change, so
the cap is only checked again in case the municipality lowered it meanwhile."""
ENROLMENT_NOW = select(_E.c.status, _E.c.scheme_closed_at).where(_E.c.id == bindparam("enrolment_id"))
"""Why an enrolment's UPDATE changed nothing (:func:`enrolment_refusal`)."""


def scheme_closed() -> Refused:
    """The refusal of every use of a voucher once its scheme has closed."""
    return Refused("scheme-closed", N_("This scheme has been closed; vouchers can no longer be used."))


def provider_not_approved(field: str | None = None) -> Forbidden:
    """The refusal of a provider that is not (or no longer) approved for the scheme."""
    return Forbidden("provider-not-approved", N_("Your organisation is not approved for this scheme."), field=field)


def enrolment_refusal(status: str | None, scheme_closed_at: dt.datetime | str | None) -> DomainError:
    """Why the enrolment's UPDATE of a redemption changed nothing, from the row as it is now."""
    if scheme_closed_at is not None:
        return scheme_closed()
    if status != "approved":
        return provider_not_approved()
    return Refused("provider-cap-reached", N_("Your organisation has reached the most this scheme pays one provider."))


async def _change_enrolment(session: AsyncSession, statement: Any, enrolment_id: int, amount_cents: int,
                            cap_cents: int | None) -> None:
    """Run one of the enrolment's conditional UPDATEs (:data:`HOLD_FOR_PROVIDER`,
    :data:`PAY_HELD`) and record it, or refuse with the reason the row gives now."""
    conn = await session.connection()
    row = (await conn.execute(statement, {"enrolment_id": enrolment_id, "amount": amount_cents,
                                          "cap": cap_cents})).first()
    if row is None:
        # A new statement sees the row as the change that stopped this one left it.
        raise enrolment_refusal(*(await conn.execute(ENROLMENT_NOW, {"enrolment_id": enrolment_id})).one())
    received, held = row
    before = {"received_cents": received, "held_cents": held}
    if statement is HOLD_FOR_PROVIDER:
        before = {"held_cents": held - amount_cents}
        after = {"held_cents": held}
    else:
        before = {"received_cents": received - amount_cents, "held_cents": held + amount_cents}
        after = {"received_cents": received, "held_cents": held}
    audit.record_update(session, "enrolment", enrolment_id, before, after)


# --- A redemption, defined once --------------------------------------------------------------------
# One read of its terms, checks in Python, then one write: on PostgreSQL one statement of
# data-modifying CTEs (each step runs only if the one before it changed its row; a rule that
# refuses after an earlier UPDATE calls ``vouchers_refuse()``, which undoes the whole statement),
# on SQLite the same steps one after the other in one short transaction. The same statements run on
# a caller's session (:func:`redeem`) and through the driver (``service.fastwrite``), compiled for
# the database at hand; the rows, ledger entry, mail and audit entries are the same whoever runs them.
_L, _O, _AE = LedgerEntry.__table__, OutboxMessage.__table__, AuditEntry.__table__
_ONE = select(literal(1).label("one")).subquery("one")


def _terms(new_ids: bool) -> Select[Any]:
    """The voucher by code hash with its scheme, application and the provider's enrolment, and
    the client's failed lookups (NULL ``attempts_key``: not counted). ``new_ids``: the ids of the
    redemption and its ledger entry from their sequences (PostgreSQL, whose one statement needs
    them beforehand)."""
    attempts = (select(RateLimitCounter.count)
                .where(RateLimitCounter.key == bindparam("attempts_key"),
                       RateLimitCounter.window_start >= bindparam("since")).scalar_subquery())
    columns: list[Any] = [
        _V.c.id, _V.c.scheme_id, _S.c.closed_at, _S.c.categories, _S.c.own_contribution_percent,
        _S.c.provider_cap_cents, _E.c.id, _E.c.status, _E.c.categories, _E.c.cap_cents, _P.c.name, _A.c.email,
        _A.c.locale, _A.c.contact_name, attempts]
    if new_ids:
        columns += [case((_V.c.id.is_not(None), func.nextval(func.pg_get_serial_sequence(table, "id"))))
                    for table in ("redemption", "ledger_entry")]
    return select(*columns).select_from(
        _ONE.outerjoin(_V, _V.c.code_hash == bindparam("code_hash"))
        .outerjoin(_S, _S.c.id == _V.c.scheme_id)
        .outerjoin(_A, _A.c.id == _V.c.application_id)
        .outerjoin(_E, and_(_E.c.scheme_id == _V.c.scheme_id, _E.c.provider_id == bindparam("provider_id")))
        .outerjoin(_P, _P.c.id == _E.c.provider_id))


REDEEM_TERMS = {"sqlite": _terms(False), "postgresql": _terms(True)}

_REDEMPTION_COLUMNS = ("id", "scheme_id", "voucher_id", "enrolment_id", "provider_id", "hold_id", "category",
                       "invoice_cents", "amount_cents", "own_contribution_cents", "reference", "session_date",
                       "recorded_by", "created_at")
_ENTRY_COLUMNS = ("id", "scheme_id", "kind", "from_kind", "from_id", "to_kind", "to_id", "amount_cents", "places",
                  "voucher_id", "redemption_id", "hold_id", "created_at", "memo")
_MAIL_COLUMNS = ("message_id", "to_address", "template", "locale", "params", "status", "attempts",
                 "next_attempt_at", "created_at")
_AUDIT_COLUMNS = ("at", "actor", "address", "action", "table_name", "row_id", "before", "after")


def _values_of(table: Table, prefix: str, columns: tuple[str, ...]) -> list[Any]:
    return [bindparam(prefix + name, type_=table.c[name].type) for name in columns]


def _insert_row(table: Table, prefix: str, columns: tuple[str, ...], after: Any = None) -> Any:
    """INSERT of one row whose values are the parameters ``prefix + column``; with ``after``, only
    if that CTE returned a row."""
    row = select(*_values_of(table, prefix, columns))
    return insert(table).from_select(list(columns), row if after is None else row.select_from(after))


_RECORD = _insert_row(_R, "r_", _REDEMPTION_COLUMNS).returning(_R.c.id)
_POST = _insert_row(_L, "l_", _ENTRY_COLUMNS).returning(_L.c.id)
_MAIL = _insert_row(_O, "m_", _MAIL_COLUMNS)
_AUDIT = insert(_AE).values([dict(zip(_AUDIT_COLUMNS, _values_of(_AE, f"a{n}_", _AUDIT_COLUMNS), strict=True))
                             for n in range(4)])
"""A redemption's four audit entries in one INSERT (SQLite; PostgreSQL's statement has its own)."""


def _json_object(**values: Any) -> Any:
    return func.json_build_object(*(part for name, value in values.items() for part in (literal(name), value)),
                                  type_=JSON)


def _redeem_statement() -> Select[Any]:
    """PostgreSQL: the whole redemption as one statement (see above)."""
    spent = SPEND.cte("spent")
    paid = PAY.where(exists().select_from(spent)).cte("paid")
    recorded = insert(_R).from_select(list(_REDEMPTION_COLUMNS), select(*_values_of(_R, "r_", _REDEMPTION_COLUMNS))
                                      .select_from(paid)).returning(_R.c.id).cte("recorded")
    posted = _insert_row(_L, "l_", _ENTRY_COLUMNS, recorded).cte("posted")
    mailed = _insert_row(_O, "m_", _MAIL_COLUMNS, recorded).cte("mailed")
    stored = idempotency.STORE_ANSWER.where(exists().select_from(recorded)).cte("stored")
    who = (_NOW, bindparam("actor", type_=String), bindparam("address", type_=String))
    amount = _AMOUNT

    def entry(action: str, table: str, row_id: Any, before: Any, after: Any) -> Select[Any]:
        return select(*who, literal(action), literal(table), row_id, before, after)

    audited = insert(_AE).from_select(list(_AUDIT_COLUMNS), union_all(
        entry("update", "voucher", cast(bindparam("voucher_id"), String),
              _json_object(balance_cents=spent.c.balance_cents + amount,
                           redeemed_cents=spent.c.redeemed_cents - amount, status=literal("active")),
              _json_object(balance_cents=spent.c.balance_cents, redeemed_cents=spent.c.redeemed_cents,
                           status=spent.c.status)).select_from(spent.join(recorded, true())),
        entry("update", "enrolment", cast(bindparam("enrolment_id"), String),
              _json_object(received_cents=paid.c.received_cents - amount),
              _json_object(received_cents=paid.c.received_cents)).select_from(paid.join(recorded, true())),
        *(entry("insert", table, bindparam(f"{table}_row", type_=String), cast(literal("{}"), JSON),
                bindparam(f"{table}_after", type_=JSON)).select_from(recorded)
          for table in ("redemption", "ledger_entry")),
    )).cte("audited")
    refusal = case(
        (and_(spent.c.status.is_not(None), paid.c.received_cents.is_(None)), func.vouchers_refuse("enrolment")),
        (and_(bindparam("record_id", type_=BigInteger).is_not(None), recorded.c.id.is_not(None), stored.c.id.is_(None)),
         func.vouchers_refuse("claim-lost")))
    return (select(spent.c.balance_cents, spent.c.held_cents, spent.c.redeemed_cents, spent.c.status, refusal)
            .select_from(_ONE.outerjoin(spent, true()).outerjoin(paid, true()).outerjoin(recorded, true())
                         .outerjoin(stored, true()))
            .add_cte(posted, mailed, audited))


REDEEM = _redeem_statement()
REFUSED = "vouchers-refused:"
"""How a message of ``vouchers_refuse()`` begins; the refusal's code follows."""


class Answer(NamedTuple):
    """An ``Idempotency-Key``'s answer, stored in the redemption's own transaction."""

    record_id: int
    status_code: int
    body: Callable[[int], bytes]
    """The body, given the redemption's id."""


@dataclass(frozen=True, slots=True)
class Redeeming:
    """A redemption whose terms were read and checked, ready to be written."""

    now: dt.datetime
    voucher_id: int
    scheme_id: int
    enrolment_id: int
    provider_id: int
    cap: int | None
    category: str
    invoice: int
    own: int
    amount: int
    reference: str
    session_date: dt.date | None
    recorded_by: str
    mail_to: tuple[str, str, str, str]
    """Address, locale, contact name, provider name."""
    new_ids: tuple[int, int] | None
    """The redemption's and the ledger entry's ids, when read beforehand (PostgreSQL)."""

    def redemption(self) -> dict[str, Any]:
        """The redemption's columns but its id."""
        return {
            "scheme_id": self.scheme_id, "voucher_id": self.voucher_id, "enrolment_id": self.enrolment_id,
            "provider_id": self.provider_id, "hold_id": None, "category": self.category,
            "invoice_cents": self.invoice, "amount_cents": self.amount, "own_contribution_cents": self.own,
            "reference": self.reference, "session_date": self.session_date, "recorded_by": self.recorded_by,
            "created_at": self.now}

    def _entry(self, redemption_id: int | None) -> dict[str, Any]:
        return ledger.entry_values(
            scheme_id=self.scheme_id, kind="redeem", source=(ledger.VOUCHER, self.voucher_id),
            target=(ledger.PROVIDER, self.enrolment_id), amount_cents=self.amount, voucher_id=self.voucher_id,
            redemption_id=redemption_id) | {"created_at": self.now}

    def _mail(self, redemption_id: int | None) -> dict[str, Any]:
        email, locale, contact_name, provider_name = self.mail_to
        return outbox.message_values(email, "redemption_recorded", locale, {
            "contact_name": contact_name, "provider_name": provider_name, "amount_cents": self.amount,
            "invoice_cents": self.invoice, "own_contribution_cents": self.own, "category": self.category,
            "report_redemption_id": redemption_id}) | {"status": "pending", "attempts": 0,
                                                       "next_attempt_at": self.now, "created_at": self.now}

    def _changing(self) -> dict[str, Any]:
        return {"voucher_id": self.voucher_id, "enrolment_id": self.enrolment_id, "amount": self.amount,
                "now": self.now, "cap": self.cap}

    def _answer(self, answer: Answer | None, redemption_id: int) -> dict[str, Any]:
        if answer is None:
            return {"record_id": None, "answer_status": None, "answer_body": None}
        return {"record_id": answer.record_id, "answer_status": answer.status_code,
                "answer_body": answer.body(redemption_id)}

    def parameters(self, answer: Answer | None = None) -> dict[str, Any]:
        """:data:`REDEEM`'s parameters (PostgreSQL, ids read beforehand)."""
        assert self.new_ids is not None
        redemption_id, entry_id = self.new_ids
        redemption, entry = {"id": redemption_id, **self.redemption()}, {"id": entry_id, **self._entry(redemption_id)}
        who = audit.current_context()
        return (self._changing() | self._answer(answer, redemption_id)
                | {"actor": who.actor, "address": who.address,
                   "redemption_row": str(redemption_id), "ledger_entry_row": str(entry_id),
                   "redemption_after": audit.inserted("redemption", redemption_id, self.redemption()),
                   "ledger_entry_after": audit.inserted("ledger_entry", entry_id, self._entry(redemption_id))}
                | _prefixed("r_", redemption) | _prefixed("l_", entry) | _prefixed("m_", self._mail(redemption_id)))

    def steps(self, run: Callable[[Any, dict[str, Any]], Any], answer: Answer | None = None) -> tuple[int, Any] | None:
        """SQLite: the redemption as statements run one after the other by ``run`` (a statement and
        its parameters to its first row, or None), inside the caller's transaction. (redemption id,
        the voucher's row after it), or None if the voucher refused; raises if a later rule
        refuses, and the caller rolls back."""
        changing = self._changing()
        spent = run(SPEND, changing)
        if spent is None:
            return None
        paid = run(PAY, changing)
        if paid is None:
            raise enrolment_refusal(*run(ENROLMENT_NOW, changing))
        redemption_id = run(_RECORD, _prefixed("r_", {"id": None, **self.redemption()}))[0]
        entry = self._entry(redemption_id)
        entry_id = run(_POST, _prefixed("l_", {"id": None, **entry}))[0]
        run(_MAIL, _prefixed("m_", self._mail(redemption_id)))
        balance, _held, redeemed, status = spent
        who = audit.current_context()
        entries: dict[str, Any] = {}
        for n, (action, table, row_id, before, after) in enumerate((
            ("update", "voucher", self.voucher_id,
             {"balance_cents": balance + self.amount, "redeemed_cents": redeemed - self.amount, "status": "active"},
             {"balance_cents": balance, "redeemed_cents": redeemed, "status": status}),
            ("update", "enrolment", self.enrolment_id, {"received_cents": paid[0] - self.amount},
             {"received_cents": paid[0]}),
            ("insert", "redemption", redemption_id, {}, audit.inserted("redemption", redemption_id, self.redemption())),
            ("insert", "ledger_entry", entry_id, {}, audit.inserted("ledger_entry", entry_id, entry)),
        )):
            entries |= _prefixed(f"a{n}_", {"at": self.now, "actor": who.actor, "address": who.address,
                                            "action": action, "table_name": table, "row_id": str(row_id),
                                            "before": before, "after": after})
        run(_AUDIT, entries)
        if answer is not None and run(idempotency.STORE_ANSWER,
                                      self._changing() | self._answer(answer, redemption_id)) is None:
            raise ClaimLost()
        return redemption_id, spent

    def stored(self, redemption_id: int) -> Redemption:
        """The redemption as written (not in a session)."""
        return as_loaded(Redemption, {"id": redemption_id, **self.redemption()})


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {prefix + name: value for name, value in values.items()}


def as_loaded(model: type[_Model], values: dict[str, Any]) -> _Model:
    """An instance of ``model`` that is only read, its values put in the instance's dict as the
    ORM's loader puts them: the constructor's instrumented attribute sets, one per column, cost a
    hot path a noticeable share of its time."""
    instance = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


def _categories(value: Any) -> list[str]:
    """A JSON column as the session gives it (decoded) or the driver (text)."""
    return json.loads(value) if isinstance(value, str) else value


def redeeming(rt: Runtime, terms: Any, *, provider_id: int | None, category: str, invoice_cents: int,
              reference: str, session_date: dt.date | None, recorded_by: str, provider_name: str | None = None,
              now: dt.datetime) -> Redeeming:
    """Check a redemption against its terms (:data:`REDEEM_TERMS`' row), in the order of the
    refusals every face gives, and make it ready to be written."""
    (voucher_id, scheme_id, closed, scheme_categories, own_percent, scheme_cap, enrolment_id, enrolment_status,
     enrolment_categories, enrolment_cap, registered_name, email, locale, contact_name, attempts) = terms[:15]
    check_attempts(rt, attempts)
    if voucher_id is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    if provider_id is None:
        raise Forbidden("provider-required", N_("Only a provider's account can do this."))
    if invoice_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    if closed is not None:
        raise scheme_closed()
    if enrolment_id is None or enrolment_status != "approved":
        raise provider_not_approved()
    if category not in _categories(scheme_categories) or category not in _categories(enrolment_categories):
        raise Refused(
            "category-not-allowed", N_("This voucher cannot be used for this kind of service."), field="category"
        )
    own = own_contribution(invoice_cents, own_percent)
    amount = invoice_cents - own
    if amount <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    return Redeeming(
        now=now, voucher_id=voucher_id, scheme_id=scheme_id, enrolment_id=enrolment_id, provider_id=provider_id,
        cap=enrolment_cap if enrolment_cap is not None else scheme_cap, category=category, invoice=invoice_cents,
        own=own, amount=amount, reference=reference, session_date=session_date, recorded_by=recorded_by,
        mail_to=(email, locale, contact_name, provider_name or registered_name),
        new_ids=(terms[15], terms[16]) if len(terms) > 15 else None)


def refused_code(exc: BaseException) -> str | None:
    """The code of a ``vouchers_refuse()`` that ended a statement, or None for any other error."""
    message = str(getattr(exc, "orig", None) or exc)
    _, found, code = message.partition(REFUSED)
    return code.split()[0].strip() if found else None


async def redeem(
    session: AsyncSession,
    rt: Runtime,
    voucher: Voucher,
    *,
    provider_id: int,
    category: str,
    invoice_cents: int,
    reference: str,
    session_date: dt.date | None,
    recorded_by: str,
    provider_name: str | None = None,
) -> Redemption:
    """Record what a coach delivered, in the caller's transaction. The voucher pays the invoice
    less the own contribution. The mail to the entrepreneur names the provider
    (``provider_name``, or its registered name).

    Locks, in order: the voucher's row and the provider's enrolment; not the scheme's row, so
    coaches of different providers do not wait for each other. Returns the stored redemption
    (not in the session).
    """
    if invoice_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    conn = await session.connection()
    dialect = conn.dialect.name
    now = utcnow()
    terms = (await conn.execute(REDEEM_TERMS[dialect], {
        "code_hash": voucher.code_hash, "attempts_key": None, "since": now, "provider_id": provider_id})).one()
    job = redeeming(rt, terms, provider_id=provider_id, category=category, invoice_cents=invoice_cents,
                    reference=reference, session_date=session_date, recorded_by=recorded_by,
                    provider_name=provider_name, now=now)
    if dialect == "postgresql":
        try:
            row = (await conn.execute(REDEEM, job.parameters())).one()
        except DBAPIError as exc:
            code = refused_code(exc)
            if code == "enrolment":
                # This transaction is undone; another sees the change that stopped the statement.
                async with rt.reader() as reader:
                    raise enrolment_refusal(*(await reader.execute(
                        ENROLMENT_NOW, {"enrolment_id": job.enrolment_id})).one()) from None
            raise
        written = None if row[0] is None else (job.new_ids[0], row[:4])  # type: ignore[index]
    else:
        def run(sync: Connection, statement: Any, values: dict[str, Any]) -> Any:
            result = sync.execute(statement, values)
            return result.first() if result.returns_rows else None

        written = await conn.run_sync(lambda sync: job.steps(lambda statement, values: run(sync, statement, values)))
    if written is None:
        await session.refresh(voucher)
        raise refusal(voucher, job.amount, now)
    redemption_id, row = written
    _keep_in_step(voucher, row)
    return job.stored(redemption_id)


async def create_hold(
    session: AsyncSession,
    rt: Runtime,
    voucher: Voucher,
    *,
    provider_id: int,
    category: str,
    invoice_cents: int,
    reference: str,
    created_by: str,
    offer_id: int | None = None,
) -> Hold:
    """Set money aside for a provider at once; it is spent when the provider confirms."""
    if invoice_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    now = utcnow()
    scheme = await session.get_one(Scheme, voucher.scheme_id)
    _check_scheme_running(scheme)
    enrolment = await _approved_enrolment(session, scheme, provider_id, category)
    own = own_contribution(invoice_cents, scheme.own_contribution_percent)
    amount = invoice_cents - own
    if amount <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    await _set_aside(session, voucher, amount, now)
    cap = enrolment.cap_cents if enrolment.cap_cents is not None else scheme.provider_cap_cents
    await _change_enrolment(session, HOLD_FOR_PROVIDER, enrolment.id, amount, cap)
    hold = Hold(
        scheme_id=scheme.id,
        voucher_id=voucher.id,
        enrolment_id=enrolment.id,
        provider_id=provider_id,
        offer_id=offer_id,
        category=category,
        invoice_cents=invoice_cents,
        amount_cents=amount,
        own_contribution_cents=own,
        reference=reference,
        created_by=created_by,
        status="open",
        created_at=now,
        expires_at=now + dt.timedelta(days=scheme.hold_days),
    )
    session.add(hold)
    await session.flush()
    ledger.post(
        session,
        scheme_id=scheme.id,
        kind="hold",
        source=(ledger.VOUCHER, voucher.id),
        target=(ledger.HELD, voucher.id),
        amount_cents=amount,
        voucher_id=voucher.id,
        hold_id=hold.id,
    )
    return hold


async def _lock_voucher(session: AsyncSession, voucher_id: int) -> Voucher:
    voucher = await session.scalar(
        select(Voucher).where(Voucher.id == voucher_id).with_for_update().execution_options(populate_existing=True)
    )
    if voucher is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    return voucher


async def _close_hold(session: AsyncSession, hold: Hold, status: str, reason: str | None, now: dt.datetime) -> None:
    result = await session.execute(
        update(Hold)
        .where(Hold.id == hold.id, Hold.status == "open")
        .values(status=status, release_reason=reason, decided_at=now)
        .returning(Hold.id)
    )
    if result.first() is None:
        raise Refused("hold-not-open", N_("This reservation has already been confirmed or released."))


async def confirm_hold(session: AsyncSession, rt: Runtime, hold_id: int, *, provider_id: int | None, recorded_by: str,
                       provider_name: str) -> Redemption:
    """The provider delivered: the held money becomes a redemption."""
    hold = await session.get(Hold, hold_id)
    if hold is None or (provider_id is not None and hold.provider_id != provider_id):
        raise NotFound("hold-not-found", N_("There is no such reservation."))
    now = utcnow()
    voucher = await _lock_voucher(session, hold.voucher_id)
    await session.refresh(hold)
    if hold.status != "open":
        raise Refused("hold-not-open", N_("This reservation has already been confirmed or released."))
    if effective_status(voucher, now) in ("expired", "revoked"):
        raise refusal(voucher, hold.amount_cents, now)
    scheme = await session.get_one(Scheme, hold.scheme_id)
    _check_scheme_running(scheme)
    enrolment = await session.get_one(Enrolment, hold.enrolment_id)
    await _close_hold(session, hold, "confirmed", None, now)
    new_held = Voucher.held_cents - hold.amount_cents
    await session.execute(
        update(Voucher)
        .where(Voucher.id == voucher.id)
        .values(
            held_cents=new_held,
            redeemed_cents=Voucher.redeemed_cents + hold.amount_cents,
            status=used_up_unless(Voucher.balance_cents, new_held),
        )
    )
    cap = enrolment.cap_cents if enrolment.cap_cents is not None else scheme.provider_cap_cents
    await _change_enrolment(session, PAY_HELD, enrolment.id, hold.amount_cents, cap)
    redemption = Redemption(
        scheme_id=scheme.id,
        voucher_id=voucher.id,
        enrolment_id=enrolment.id,
        provider_id=hold.provider_id,
        hold_id=hold.id,
        category=hold.category,
        invoice_cents=hold.invoice_cents,
        amount_cents=hold.amount_cents,
        own_contribution_cents=hold.own_contribution_cents,
        reference=hold.reference,
        session_date=None,
        recorded_by=recorded_by,
        created_at=now,
    )
    session.add(redemption)
    await session.flush()
    ledger.post(
        session,
        scheme_id=scheme.id,
        kind="confirm",
        source=(ledger.HELD, voucher.id),
        target=(ledger.PROVIDER, enrolment.id),
        amount_cents=hold.amount_cents,
        voucher_id=voucher.id,
        redemption_id=redemption.id,
        hold_id=hold.id,
    )
    await _notify_redemption(session, rt, voucher, redemption, provider_name)
    return redemption


async def release_hold(session: AsyncSession, hold_id: int, *, reason: str, provider_id: int | None = None,
                       voucher_id: int | None = None) -> Hold:
    """Give held money back to the voucher (declined, cancelled or lapsed).

    ``provider_id``/``voucher_id`` restrict who may release: a provider its own holds, an
    entrepreneur the holds on their voucher.
    """
    hold = await session.get(Hold, hold_id)
    if (
        hold is None
        or (provider_id is not None and hold.provider_id != provider_id)
        or (voucher_id is not None and hold.voucher_id != voucher_id)
    ):
        raise NotFound("hold-not-found", N_("There is no such reservation."))
    now = utcnow()
    voucher = await _lock_voucher(session, hold.voucher_id)
    await _close_hold(session, hold, "released", reason, now)
    await session.execute(
        update(Voucher)
        .where(Voucher.id == voucher.id)
        .values(
            held_cents=Voucher.held_cents - hold.amount_cents,
            balance_cents=Voucher.balance_cents + hold.amount_cents,
            status=case((Voucher.status == "used_up", "active"), else_=Voucher.status),
        )
    )
    await session.execute(
        update(Enrolment).where(Enrolment.id == hold.enrolment_id)
        .values(held_cents=Enrolment.held_cents - hold.amount_cents)
    )
    ledger.post(
        session,
        scheme_id=hold.scheme_id,
        kind="release",
        source=(ledger.HELD, voucher.id),
        target=(ledger.VOUCHER, voucher.id),
        amount_cents=hold.amount_cents,
        voucher_id=voucher.id,
        hold_id=hold.id,
        memo=reason,
    )
    await session.refresh(hold)
    return hold


async def reverse_redemption(
    session: AsyncSession, redemption_id: int, *, reason: str, provider_id: int | None, now: dt.datetime | None = None
) -> Redemption:
    """Undo a redemption with a new entry. A coach (``provider_id`` given) may do so only within
    the scheme's reversal period; the municipality (``provider_id=None``) at any time.

    The money goes back to the voucher if it can still be used, otherwise to the budget.
    """
    now = now or utcnow()
    found = await session.get(Redemption, redemption_id)
    scheme = await session.get(Scheme, found.scheme_id) if found is not None else None
    redemption = refusals.check_reversible(found, provider_id=provider_id, scheme=scheme, now=now)
    assert scheme is not None
    voucher = await _lock_voucher(session, redemption.voucher_id)
    result = await session.execute(
        update(Redemption)
        .where(Redemption.id == redemption.id, Redemption.reversed_at.is_(None))
        .values(reversed_at=now, reversal_reason=reason)
        .returning(Redemption.id)
    )
    if result.first() is None:
        raise Refused("already-reversed", N_("This redemption has already been reversed."))
    amount = redemption.amount_cents
    usable = effective_status(voucher, now) in ("active", "used_up")
    await session.execute(
        update(Voucher)
        .where(Voucher.id == voucher.id)
        .values(
            redeemed_cents=Voucher.redeemed_cents - amount,
            **(
                {"balance_cents": Voucher.balance_cents + amount, "status": "active"}
                if usable
                else {"returned_cents": Voucher.returned_cents + amount}
            ),
        )
    )
    await session.execute(
        update(Enrolment)
        .where(Enrolment.id == redemption.enrolment_id)
        .values(received_cents=Enrolment.received_cents - amount)
    )
    if not usable:
        await session.execute(
            update(Scheme).where(Scheme.id == scheme.id).values(committed_cents=Scheme.committed_cents - amount)
        )
    entry = {"scheme_id": scheme.id, "voucher_id": voucher.id, "redemption_id": redemption.id, "memo": reason}
    ledger.post(session, kind="reverse", source=(ledger.PROVIDER, redemption.enrolment_id),
                target=(ledger.VOUCHER, voucher.id), amount_cents=amount, **entry)
    if not usable:
        ledger.post(session, kind="return", source=(ledger.VOUCHER, voucher.id),
                    target=(ledger.BUDGET, scheme.id), amount_cents=amount, **entry)
    await session.refresh(redemption)
    await session.refresh(voucher)
    return redemption


async def end_voucher(session: AsyncSession, rt: Runtime, voucher_id: int, *, status: str, reason: str,
                      now: dt.datetime | None = None) -> Voucher:
    """Revoke or expire a voucher: open holds are released, unspent money goes back to the
    budget, and the place too if the voucher was never used. Then the waiting list moves up."""
    assert status in ("revoked", "expired")
    now = now or utcnow()
    voucher = await _lock_voucher(session, voucher_id)
    refusals.check_endable(voucher, status=status, now=now)
    open_holds = list(await session.scalars(select(Hold.id).where(Hold.voucher_id == voucher.id, Hold.status == "open")))
    for hold_id in open_holds:
        await release_hold(session, hold_id, reason=status)
    await session.refresh(voucher)
    remaining = voucher.balance_cents
    place_back = voucher.holds_place and voucher.redeemed_cents == 0
    await session.execute(
        update(Voucher)
        .where(Voucher.id == voucher.id)
        .values(
            balance_cents=0,
            returned_cents=Voucher.returned_cents + remaining,
            status=status,
            ended_at=now,
            end_reason=reason,
            holds_place=voucher.holds_place and not place_back,
        )
    )
    await session.execute(
        update(Scheme)
        .where(Scheme.id == voucher.scheme_id)
        .values(
            committed_cents=Scheme.committed_cents - remaining,
            places_used=Scheme.places_used - (1 if place_back else 0),
        )
    )
    ledger.post(
        session,
        scheme_id=voucher.scheme_id,
        kind=status,
        source=(ledger.VOUCHER, voucher.id),
        target=(ledger.BUDGET, voucher.scheme_id),
        amount_cents=remaining,
        places=-1 if place_back else 0,
        voucher_id=voucher.id,
        memo=reason,
    )
    application = await session.get_one(Application, voucher.application_id)
    outbox.enqueue(
        session,
        to=application.email,
        template=f"voucher_{status}",
        locale=application.locale,
        contact_name=application.contact_name,
        reason=reason,
        returned_cents=remaining,
    )
    await applications.promote_waiting(session, rt, voucher.scheme_id)
    await session.refresh(voucher)
    return voucher
