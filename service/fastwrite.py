"""The two busiest writes, a coach's redemption and an application, as one statement each on
PostgreSQL.

Every redemption of a scheme changes the provider's enrolment row and the scheme's row, and every
application the scheme's row. Through a session those rows stay locked from their UPDATE until the
COMMIT, across several round trips to this process, and every other request waits in line for
them: measured, that line, not the CPU, held both to about 150 a second. Here the same work is a
single statement run in autocommit, so the rows are locked only while PostgreSQL executes it.

A redemption:

1. a read (no lock) of the voucher, its scheme, the provider's enrolment and the addressee of
   the mail, with the ids the new rows will get;
2. one statement of data-modifying CTEs: the voucher's, the enrolment's and the scheme's
   conditional UPDATEs (the same rules as ``vouchers.redeem``, each run only if the one before it
   changed its row), the redemption, its ledger entry, its mail and its audit entries. If the
   voucher was spent but a later rule refused, ``vouchers_refuse()`` raises, and PostgreSQL
   undoes the whole statement.

An application to a first-come scheme by an eligible applicant:

1. a read of the scheme, with the ids the new rows will get;
2. one statement: a place and a voucher's value taken from the scheme's row if both are left and
   nobody waits (``applications.take_place``), else the next waiting-list number; the application
   with its outcome, the voucher, its ledger entry, the mail and the audit entries. A KvK number
   that has applied already makes ``vouchers_refuse()`` undo it all.

The refusals, their order, the rows written and the audit entries are those of
``vouchers.redeem`` and of ``applications.submit`` with ``decide``, which remain the one way on
SQLite, inside a caller's transaction (an ``Idempotency-Key`` stores its answer in the same
transaction), and for every other application (lottery, ineligible); the PostgreSQL tests
compare the two.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import asyncpg
import msgspec

from . import applications, audit, ledger, outbox, vouchers
from .errors import N_, Conflict, DomainError, Forbidden, InvalidInput, NotFound, Refused
from .models import Redemption, Scheme, Voucher, utcnow
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


_TERMS, _TERMS_NAMES = _numbered("""
SELECT v.id, v.status, v.balance_cents, v.expires_at, v.scheme_id,
       s.closed_at IS NOT NULL, s.categories, s.own_contribution_percent, s.provider_cap_cents,
       e.id, e.status, e.categories, e.cap_cents, p.name, a.email, a.locale, a.contact_name,
       (SELECT r.count FROM rate_limit_counter r WHERE r.key = :attempts_key AND r.window_start >= :since),
       CASE WHEN v.id IS NOT NULL THEN nextval(pg_get_serial_sequence('redemption', 'id')) END,
       CASE WHEN v.id IS NOT NULL THEN nextval(pg_get_serial_sequence('ledger_entry', 'id')) END
FROM (SELECT 1 AS one) AS one
LEFT JOIN voucher v ON v.code_hash = :code_hash
LEFT JOIN scheme s ON s.id = v.scheme_id
LEFT JOIN application a ON a.id = v.application_id
LEFT JOIN enrolment e ON e.scheme_id = v.scheme_id AND e.provider_id = :provider_id
LEFT JOIN provider p ON p.id = e.provider_id
""")

# Each UPDATE runs only if the one before it changed its row (``EXISTS``), which also keeps the
# lock order of ``service.vouchers``: voucher, enrolment, scheme.
_REDEEM, _REDEEM_NAMES = _numbered("""
WITH spent AS (
    UPDATE voucher
    SET balance_cents = balance_cents - :amount, redeemed_cents = redeemed_cents + :amount,
        status = CASE WHEN balance_cents - :amount + held_cents = 0 THEN 'used_up' ELSE 'active' END
    WHERE id = :voucher_id AND status = 'active' AND expires_at > :now AND balance_cents >= :amount
    RETURNING balance_cents, redeemed_cents, status
), paid AS (
    UPDATE enrolment SET received_cents = received_cents + :amount
    WHERE id = :enrolment_id AND status = 'approved' AND EXISTS (SELECT FROM spent)
      AND (:cap::bigint IS NULL OR received_cents + :amount <= :cap::bigint)
    RETURNING received_cents
), counted AS (
    UPDATE scheme SET redeemed_cents = redeemed_cents + :amount
    WHERE id = :scheme_id AND closed_at IS NULL AND EXISTS (SELECT FROM paid)
    RETURNING redeemed_cents
), recorded AS (
    INSERT INTO redemption (id, scheme_id, voucher_id, enrolment_id, provider_id, hold_id, category, invoice_cents,
                            amount_cents, own_contribution_cents, reference, session_date, recorded_by, created_at)
    SELECT :redemption_id::bigint, :scheme_id::bigint, :voucher_id::bigint, :enrolment_id::bigint,
           :provider_id::bigint, NULL, :category::text, :invoice::bigint, :amount::bigint, :own::bigint,
           :reference::text, :session_date::date, :recorded_by::text, :now::timestamptz
    FROM counted
    RETURNING id
), posted AS (
    INSERT INTO ledger_entry (id, scheme_id, kind, from_kind, from_id, to_kind, to_id, amount_cents, places,
                              voucher_id, redemption_id, hold_id, created_at, memo)
    SELECT :entry_id::bigint, :scheme_id::bigint, 'redeem', 'voucher', :voucher_id::bigint, 'provider',
           :enrolment_id::bigint, :amount::bigint, 0, :voucher_id::bigint, recorded.id, NULL, :now::timestamptz, ''
    FROM recorded
), mailed AS (
    INSERT INTO outbox_message (message_id, to_address, template, locale, params, status, attempts,
                                next_attempt_at, created_at)
    SELECT :message_id::text, :to_address::text, 'redemption_recorded', :locale::text, :mail_params::json,
           'pending', 0, :now::timestamptz, :now::timestamptz
    FROM recorded
), audited AS (
    INSERT INTO audit_entry (at, actor, address, action, table_name, row_id, before, after)
    SELECT :now::timestamptz, :actor::text, :address::text, 'update', 'voucher', :voucher_id::text,
           json_build_object('balance_cents', spent.balance_cents + :amount, 'redeemed_cents',
                             spent.redeemed_cents - :amount, 'status', 'active'),
           json_build_object('balance_cents', spent.balance_cents, 'redeemed_cents', spent.redeemed_cents,
                             'status', spent.status)
    FROM spent, recorded
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'update', 'enrolment', :enrolment_id::text,
           json_build_object('received_cents', paid.received_cents - :amount),
           json_build_object('received_cents', paid.received_cents)
    FROM paid, recorded
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'insert', table_name, row_id, '{}'::json, after
    FROM recorded, json_to_recordset(:inserted::json) AS inserted(table_name text, row_id text, after json)
    UNION ALL
    SELECT :now::timestamptz, :actor::text, :address::text, 'update', 'scheme', :scheme_id::text,
           json_build_object('redeemed_cents', counted.redeemed_cents - :amount),
           json_build_object('redeemed_cents', counted.redeemed_cents)
    FROM counted
)
SELECT spent.balance_cents,
       CASE WHEN spent.status IS NOT NULL AND paid.received_cents IS NULL
                THEN vouchers_refuse('provider-cap-reached')
            WHEN paid.received_cents IS NOT NULL AND counted.redeemed_cents IS NULL
                THEN vouchers_refuse('scheme-closed')
       END
FROM (SELECT 1 AS one) AS one
LEFT JOIN spent ON true LEFT JOIN paid ON true LEFT JOIN counted ON true
""")

_REFUSED_PREFIX = "vouchers-refused:"
_RACE_REFUSALS = {
    "provider-cap-reached": N_("Your organisation has reached the most this scheme pays one provider."),
    "scheme-closed": N_("This scheme has been closed; vouchers can no longer be used."),
}


def _refused(exc: asyncpg.RaiseError) -> DomainError | None:
    code = str(exc).removeprefix(_REFUSED_PREFIX)
    if code == "already-applied":
        return Conflict("already-applied", applications.ALREADY_APPLIED, field="kvk_number")
    if code in _RACE_REFUSALS:
        return Refused(code, _RACE_REFUSALS[code])
    return None


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
) -> tuple[Redemption, int]:
    """``vouchers.find_voucher`` and ``vouchers.redeem`` in one read and one statement, committed
    when it returns. Returns the stored redemption and the voucher's balance after it."""
    code = vouchers.parse_code(code_text)
    now = utcnow()
    pool = await rt.fast.pool()
    terms = await pool.fetchrow(_TERMS, *_args(_TERMS_NAMES, {
        "code_hash": rt.keys.hash_of(code), "attempts_key": attempts_key, "since": vouchers.window_start(rt),
        "provider_id": provider_id}))
    (voucher_id, status, balance, expires_at, scheme_id, closed, scheme_categories, own_percent, scheme_cap,
     enrolment_id, enrolment_status, enrolment_categories, enrolment_cap, registered_name, email, locale,
     contact_name, attempts, redemption_id, entry_id) = terms
    vouchers.check_attempts(rt, attempts)
    if voucher_id is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    if provider_id is None:
        raise Forbidden("provider-required", N_("Only a provider's account can do this."))
    if invoice_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    if closed:
        raise Refused("scheme-closed", N_("This scheme has been closed; vouchers can no longer be used."))
    if enrolment_id is None or enrolment_status != "approved":
        raise Forbidden("provider-not-approved", N_("Your organisation is not approved for this scheme."))
    if category not in json.loads(scheme_categories) or category not in json.loads(enrolment_categories):
        raise Refused(
            "category-not-allowed", N_("This voucher cannot be used for this kind of service."), field="category"
        )
    own = vouchers.own_contribution(invoice_cents, own_percent)
    amount = invoice_cents - own
    if amount <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")

    redemption_values = {
        "scheme_id": scheme_id, "voucher_id": voucher_id, "enrolment_id": enrolment_id, "provider_id": provider_id,
        "hold_id": None, "category": category, "invoice_cents": invoice_cents, "amount_cents": amount,
        "own_contribution_cents": own, "reference": reference, "session_date": session_date,
        "recorded_by": recorded_by, "created_at": now}
    entry_values = ledger.entry_values(
        scheme_id=scheme_id, kind="redeem", source=(ledger.VOUCHER, voucher_id),
        target=(ledger.PROVIDER, enrolment_id), amount_cents=amount, voucher_id=voucher_id,
        redemption_id=redemption_id) | {"created_at": now}
    report_token = rt.sign("report-redemption", str(redemption_id), 60 * 60 * 24 * 90)
    message = outbox.message_values(
        email, "redemption_recorded", locale, {
            "contact_name": contact_name, "provider_name": registered_name, "amount_cents": amount,
            "invoice_cents": invoice_cents, "own_contribution_cents": own, "category": category,
            "report_url": rt.link(f"/report/{report_token}")})
    who = audit.current_context()
    inserted = [
        {"table_name": "redemption", "row_id": str(redemption_id),
         "after": audit.inserted("redemption", redemption_id, redemption_values)},
        {"table_name": "ledger_entry", "row_id": str(entry_id),
         "after": audit.inserted("ledger_entry", entry_id, entry_values)},
    ]
    try:
        row = await pool.fetchrow(_REDEEM, *_args(_REDEEM_NAMES, {
            "amount": amount, "voucher_id": voucher_id, "now": now, "enrolment_id": enrolment_id,
            "cap": enrolment_cap if enrolment_cap is not None else scheme_cap, "scheme_id": scheme_id,
            "redemption_id": redemption_id, "provider_id": provider_id, "category": category,
            "invoice": invoice_cents, "own": own, "reference": reference, "session_date": session_date,
            "recorded_by": recorded_by, "entry_id": entry_id, "message_id": message["message_id"],
            "to_address": message["to_address"], "locale": message["locale"],
            "mail_params": _json(message["params"]), "actor": who.actor, "address": who.address,
            "inserted": _json(inserted)}))
    except asyncpg.RaiseError as exc:
        refused = _refused(exc)
        if refused is None:
            raise
        raise refused from None
    if row[0] is None:
        raise vouchers.refusal(await _voucher_now(rt, voucher_id), amount, now)
    return Redemption(id=redemption_id, **redemption_values), row[0]


async def _voucher_now(rt: Runtime, voucher_id: int) -> Voucher:
    """The voucher as stored now, for the reason a conditional UPDATE found nothing to change."""
    async with rt.reader() as session:
        return await session.get_one(Voucher, voucher_id)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _args(names: tuple[str, ...], values: dict[str, Any]) -> list[Any]:
    return [values[name] for name in names]


_SCHEME_COLUMNS = tuple(Scheme.__table__.c.keys())
_SCHEME, _SCHEME_NAMES = _numbered("""
SELECT s.*, nextval(pg_get_serial_sequence('application', 'id')) AS new_application_id,
       nextval(pg_get_serial_sequence('voucher', 'id')) AS new_voucher_id,
       nextval(pg_get_serial_sequence('ledger_entry', 'id')) AS new_entry_id
FROM scheme s WHERE s.slug = :slug
""")

# ``waiting`` runs only if ``placed`` changed nothing, so one statement never changes the scheme's
# row twice. The application is written with its outcome; its audit entries are the two the session
# path writes (received, then decided), so the log reads the same whichever path was taken.
_APPLY, _APPLY_NAMES = _numbered("""
WITH placed AS (
    UPDATE scheme SET places_used = places_used + 1, committed_cents = committed_cents + value_cents
    WHERE id = :scheme_id AND closed_at IS NULL AND places_used < max_places
      AND committed_cents + value_cents <= budget_cents AND waiting_count = 0
    RETURNING places_used, committed_cents, value_cents
), waiting AS (
    UPDATE scheme SET waitlist_seq = waitlist_seq + 1, waiting_count = waiting_count + 1
    WHERE id = :scheme_id AND NOT EXISTS (SELECT FROM placed)
    RETURNING waitlist_seq, waiting_count
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
           '{}'::json, :received::json
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
    SELECT :now::timestamptz, :actor::text, :address::text, 'insert', table_name, row_id, '{}'::json, after
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
       CASE WHEN applied.id IS NULL THEN vouchers_refuse('already-applied') END
FROM (SELECT 1 AS one) AS one LEFT JOIN applied ON true LEFT JOIN waiting ON true
""")


async def apply(rt: Runtime, slug: str, details: applications.ApplicantDetails
                ) -> applications.ApplicationState | None:
    """``applications.submit`` and ``decide`` in one read and one statement, committed when it
    returns; None, with nothing written, for an application this path does not decide (a lottery,
    an ineligible applicant): the caller runs the session path for those."""
    now = utcnow()
    pool = await rt.fast.pool()
    row = await pool.fetchrow(_SCHEME, *_args(_SCHEME_NAMES, {"slug": slug}))
    if row is None:
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    scheme = Scheme(**{name: row[name] for name in _SCHEME_COLUMNS})
    scheme.categories, scheme.postcodes = json.loads(row["categories"]), json.loads(row["postcodes"])
    values = applications.application_values(scheme, details, now)
    if scheme.allocation != "first_come" or applications.eligibility_reasons(
            scheme, employees=details.employees, postcode=details.postcode):
        return None
    application_id, voucher_id, entry_id = row["new_application_id"], row["new_voucher_id"], row["new_entry_id"]
    voucher = vouchers.voucher_values(rt, scheme, application_id, values["kvk_number"], now)
    entry = ledger.entry_values(scheme_id=scheme.id, kind="issue", source=(ledger.BUDGET, scheme.id),
                                target=(ledger.VOUCHER, voucher_id), amount_cents=scheme.value_cents, places=1,
                                voucher_id=voucher_id) | {"created_at": now}
    message = outbox.message_values(values["email"], "voucher_issued", values["locale"], {})
    decided = {"status": "granted", "decided_at": now}
    who = audit.current_context()
    try:
        result = await pool.fetchrow(_APPLY, *_args(_APPLY_NAMES, {
            "scheme_id": scheme.id, "application_id": application_id, "public_id": values["public_id"],
            "kvk_number": values["kvk_number"], "company_name": values["company_name"],
            "employees": values["employees"], "postcode": values["postcode"],
            "contact_name": values["contact_name"], "email": values["email"], "purpose": values["purpose"],
            "locale": values["locale"], "now": now, "voucher_id": voucher_id, "code_hash": voucher["code_hash"],
            "code_salt": voucher["code_salt"], "expires_at": voucher["expires_at"], "entry_id": entry_id,
            "message_id": message["message_id"],
            "issued_mail": _json(vouchers.issued_mail(scheme, voucher_id, voucher["expires_at"], values["locale"],
                                                      values["contact_name"])),
            "waiting_mail": _json(applications.waiting_mail(scheme, values["public_id"], values["locale"],
                                                            values["contact_name"])),
            "actor": who.actor, "address": who.address,
            "received": _json(audit.inserted("application", application_id, values)),
            "issued_rows": _json([
                {"table_name": "voucher", "row_id": str(voucher_id),
                 "after": audit.inserted("voucher", voucher_id, voucher)},
                {"table_name": "ledger_entry", "row_id": str(entry_id),
                 "after": audit.inserted("ledger_entry", entry_id, entry)},
            ]),
            "granted_before": _json(audit.changed("application", {k: values[k] for k in decided})),
            "granted_after": _json(audit.changed("application", decided)),
            "waiting_before": _json(audit.changed("application", {"status": "received", "waitlist_number": None,
                                                                  "decided_at": None})),
            "decided_at": audit.changed("application", {"decided_at": now})["decided_at"],
        }))
    except asyncpg.RaiseError as exc:
        refused = _refused(exc)
        if refused is None:
            raise
        raise refused from None
    status, waiting_count = result[0], result[1]
    return applications.ApplicationState(
        application_id=values["public_id"], scheme=scheme.slug, status=status,
        waiting_list_position=waiting_count if status == "waiting" else None, reasons=[])
