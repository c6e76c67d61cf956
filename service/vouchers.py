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
from typing import Any

from sqlalchemy import and_, bindparam, case, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from . import audit, ledger, outbox, validity
from .codes import InvalidCode, normalise_code
from .errors import N_, DomainError, Forbidden, InvalidInput, NotFound, Refused, TooManyAttempts
from .fastpath import ScannedVoucher
from .models import Application, Enrolment, Hold, Provider, RateLimitCounter, Redemption, Scheme, Voucher, utcnow
from .runtime import Runtime

__all__ = (
    "ScannedVoucher",
    "confirm_hold",
    "create_hold",
    "effective_status",
    "end_voucher",
    "find_voucher",
    "issue_voucher",
    "own_contribution",
    "provider_not_approved",
    "redeem",
    "release_hold",
    "reverse_redemption",
    "scan",
    "scheme_closed",
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


async def issue_voucher(session: AsyncSession, rt: Runtime, scheme: Scheme, application: Application) -> Voucher:
    """Create the voucher for an application whose place and money the caller has just taken
    from the scheme (see ``applications.take_place``)."""
    now = utcnow()
    voucher = Voucher(**voucher_values(rt, scheme, application.id, application.kvk_number, now))
    session.add(voucher)
    await session.flush()
    ledger.post(
        session,
        scheme_id=scheme.id,
        kind="issue",
        source=(ledger.BUDGET, scheme.id),
        target=(ledger.VOUCHER, voucher.id),
        amount_cents=scheme.value_cents,
        places=1,
        voucher_id=voucher.id,
    )
    application.status = "granted"
    application.decided_at = now
    outbox.enqueue(session, to=application.email, template="voucher_issued", locale=application.locale,
                   **issued_mail(scheme, voucher.id, voucher.expires_at, application.locale, application.contact_name))
    return voucher


def voucher_values(rt: Runtime, scheme: Scheme, application_id: int, kvk_number: str,
                   now: dt.datetime) -> dict[str, Any]:
    """Every column of a new voucher but its id: a fresh code, the scheme's value, unspent."""
    salt = rt.keys.new_salt()
    return {
        "scheme_id": scheme.id, "application_id": application_id, "kvk_number": kvk_number,
        "code_hash": rt.keys.hash_of(rt.keys.code_for(salt)), "code_salt": salt, "status": "active",
        "value_cents": scheme.value_cents, "balance_cents": scheme.value_cents, "held_cents": 0,
        "redeemed_cents": 0, "returned_cents": 0, "holds_place": True, "issued_at": now,
        "expires_at": validity.issued_expiry(now, scheme.validity_days), "ended_at": None, "end_reason": None,
    }


def issued_mail(scheme: Scheme, voucher_id: int, expires_at: dt.datetime, locale: str,
                contact_name: str) -> dict[str, Any]:
    """The parameters of the ``voucher_issued`` mail (the code is derived when it is sent)."""
    return {"voucher_id": voucher_id, "scheme_name": scheme.name if locale == "nl" else scheme.name_en,
            "value_cents": scheme.value_cents, "expires_at": expires_at.isoformat(),
            "contact_name": contact_name}


def parse_code(code_text: str) -> str:
    try:
        return normalise_code(code_text)
    except InvalidCode:
        raise InvalidInput(
            "code-mistyped", N_("This is not a valid voucher code. Check it for typing errors."), field="code"
        ) from None


def check_attempts(rt: Runtime, attempts: int | None) -> None:
    if (attempts or 0) >= rt.settings.failed_lookup_limit:
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


async def _take_from_voucher(
    session: AsyncSession, voucher: Voucher, amount_cents: int, now: dt.datetime, *, to_held: bool
) -> None:
    new_balance = Voucher.balance_cents - amount_cents
    values = (
        {"balance_cents": new_balance, "held_cents": Voucher.held_cents + amount_cents}
        if to_held
        else {
            "balance_cents": new_balance,
            "redeemed_cents": Voucher.redeemed_cents + amount_cents,
            "status": case((new_balance + Voucher.held_cents == 0, "used_up"), else_="active"),
        }
    )
    result = await session.execute(
        update(Voucher)
        .where(
            Voucher.id == voucher.id,
            Voucher.status == "active",
            Voucher.expires_at > now,
            Voucher.balance_cents >= amount_cents,
        )
        .values(**values)
        .returning(Voucher.balance_cents, Voucher.held_cents, Voucher.redeemed_cents, Voucher.status)
    )
    row = result.first()
    if row is None:
        await session.refresh(voucher)
        raise refusal(voucher, amount_cents, now)
    # Keep the loaded voucher in step without another round trip.
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


# A redemption is the busiest write of the service, so it runs as SQLAlchemy Core statements built
# once here (their compiled form is cached; a request only binds values) on the session's
# connection, not through the ORM's unit of work, and feeds the audit log itself. The rules are
# the same conditional UPDATEs as everywhere else in this module; a confirmed hold pays the
# provider through the same helper.
_V, _S, _E = Voucher.__table__, Scheme.__table__, Enrolment.__table__
_A, _P = Application.__table__, Provider.__table__
_REDEEM_TERMS = (
    select(_S.c.closed_at, _S.c.categories, _S.c.own_contribution_percent, _S.c.provider_cap_cents,
           _E.c.id, _E.c.status, _E.c.categories, _E.c.cap_cents, _P.c.name, _A.c.email, _A.c.locale,
           _A.c.contact_name)
    .select_from(
        _V.join(_S, _S.c.id == _V.c.scheme_id).join(_A, _A.c.id == _V.c.application_id)
        .outerjoin(_E, and_(_E.c.scheme_id == _S.c.id, _E.c.provider_id == bindparam("provider_id")))
        .outerjoin(_P, _P.c.id == _E.c.provider_id)
    )
    .where(_V.c.id == bindparam("voucher_id"))
)
_REDEEM_SPEND = (
    update(_V)
    .where(_V.c.id == bindparam("voucher_id"), _V.c.status == "active", _V.c.expires_at > bindparam("now"),
           _V.c.balance_cents >= bindparam("amount"))
    .values(balance_cents=_V.c.balance_cents - bindparam("amount"),
            redeemed_cents=_V.c.redeemed_cents + bindparam("amount"),
            status=case((_V.c.balance_cents - bindparam("amount") + _V.c.held_cents == 0, "used_up"), else_="active"))
    .returning(_V.c.balance_cents, _V.c.held_cents, _V.c.redeemed_cents, _V.c.status)
)
_REDEEM_PAY = (
    update(_E).where(_E.c.id == bindparam("enrolment_id"), _E.c.status == "approved", _E.c.scheme_closed_at.is_(None))
    .values(received_cents=_E.c.received_cents + bindparam("amount")).returning(_E.c.received_cents)
)
# What the provider has received and what open holds set aside for it count alike against its cap.
_REDEEM_PAY_CAPPED = _REDEEM_PAY.where(_E.c.received_cents + _E.c.held_cents + bindparam("amount") <= bindparam("cap"))
_HOLD_FOR_PROVIDER = (
    update(_E).where(_E.c.id == bindparam("enrolment_id"), _E.c.status == "approved", _E.c.scheme_closed_at.is_(None))
    .values(held_cents=_E.c.held_cents + bindparam("amount")).returning(_E.c.held_cents)
)
_HOLD_FOR_PROVIDER_CAPPED = _HOLD_FOR_PROVIDER.where(
    _E.c.received_cents + _E.c.held_cents + bindparam("amount") <= bindparam("cap"))
# A confirmed hold moves what was set aside to what was received: the sum does not change, so
# the cap is only checked again in case the municipality lowered it meanwhile.
_PAY_HELD = (
    update(_E).where(_E.c.id == bindparam("enrolment_id"), _E.c.status == "approved", _E.c.scheme_closed_at.is_(None))
    .values(received_cents=_E.c.received_cents + bindparam("amount"), held_cents=_E.c.held_cents - bindparam("amount"))
    .returning(_E.c.received_cents, _E.c.held_cents)
)
_PAY_HELD_CAPPED = _PAY_HELD.where(_E.c.received_cents + _E.c.held_cents <= bindparam("cap"))
_REDEEM_RECORD = insert(Redemption.__table__).returning(Redemption.__table__.c.id)
_ENROLMENT_NOW = select(_E.c.status, _E.c.scheme_closed_at).where(_E.c.id == bindparam("enrolment_id"))


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


async def _pay_provider(session: AsyncSession, enrolment_id: int, amount_cents: int, cap_cents: int | None) -> None:
    """What the provider is owed grows, within the most one provider may receive, while the
    enrolment is approved and its scheme open (see ``Enrolment.scheme_closed_at``)."""
    conn = await session.connection()
    pay = _REDEEM_PAY if cap_cents is None else _REDEEM_PAY_CAPPED
    received = (await conn.execute(pay, {"enrolment_id": enrolment_id, "amount": amount_cents,
                                         "cap": cap_cents})).scalar()
    if received is None:
        # A new statement sees the row as the change that stopped this one left it.
        raise enrolment_refusal(*(await conn.execute(_ENROLMENT_NOW, {"enrolment_id": enrolment_id})).one())
    audit.record_update(session, "enrolment", enrolment_id, {"received_cents": received - amount_cents},
                        {"received_cents": received})


async def _hold_for_provider(session: AsyncSession, enrolment_id: int, amount_cents: int, cap_cents: int | None) -> None:
    """Set money aside for the provider, under the same rule as a redemption's payment."""
    conn = await session.connection()
    hold = _HOLD_FOR_PROVIDER if cap_cents is None else _HOLD_FOR_PROVIDER_CAPPED
    held = (await conn.execute(hold, {"enrolment_id": enrolment_id, "amount": amount_cents, "cap": cap_cents})).scalar()
    if held is None:
        raise enrolment_refusal(*(await conn.execute(_ENROLMENT_NOW, {"enrolment_id": enrolment_id})).one())
    audit.record_update(session, "enrolment", enrolment_id, {"held_cents": held - amount_cents}, {"held_cents": held})


async def _pay_held(session: AsyncSession, enrolment_id: int, amount_cents: int, cap_cents: int | None) -> None:
    conn = await session.connection()
    pay = _PAY_HELD if cap_cents is None else _PAY_HELD_CAPPED
    row = (await conn.execute(pay, {"enrolment_id": enrolment_id, "amount": amount_cents, "cap": cap_cents})).first()
    if row is None:
        raise enrolment_refusal(*(await conn.execute(_ENROLMENT_NOW, {"enrolment_id": enrolment_id})).one())
    received, held = row
    audit.record_update(session, "enrolment", enrolment_id,
                        {"received_cents": received - amount_cents, "held_cents": held + amount_cents},
                        {"received_cents": received, "held_cents": held})


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
    """Record what a coach delivered. The voucher pays the invoice less the own contribution.
    The mail to the entrepreneur names the provider (``provider_name``, or its registered name).

    Locks, in order: the voucher's row and the provider's enrolment; not the scheme's row, so
    coaches of different providers do not wait for each other. Returns the stored redemption
    (not in the session).
    """
    if invoice_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")
    now = utcnow()
    conn = await session.connection()
    terms = (await conn.execute(_REDEEM_TERMS, {"voucher_id": voucher.id, "provider_id": provider_id})).one()
    (closed_at, scheme_categories, own_percent, scheme_cap, enrolment_id, enrolment_status, enrolment_categories,
     enrolment_cap, registered_name, email, locale, contact_name) = terms
    if closed_at is not None:
        raise scheme_closed()
    if enrolment_id is None or enrolment_status != "approved":
        raise provider_not_approved()
    if category not in scheme_categories or category not in enrolment_categories:
        raise Refused(
            "category-not-allowed", N_("This voucher cannot be used for this kind of service."), field="category"
        )
    own = own_contribution(invoice_cents, own_percent)
    amount = invoice_cents - own
    if amount <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount_cents")

    spent = (await conn.execute(_REDEEM_SPEND, {"voucher_id": voucher.id, "now": now, "amount": amount})).first()
    if spent is None:
        await session.refresh(voucher)
        raise refusal(voucher, amount, now)
    balance, held, redeemed, status = spent
    for name, value in (("balance_cents", balance), ("held_cents", held), ("redeemed_cents", redeemed),
                        ("status", status)):
        set_committed_value(voucher, name, value)
    audit.record_update(session, "voucher", voucher.id,
                        {"balance_cents": balance + amount, "redeemed_cents": redeemed - amount, "status": "active"},
                        {"balance_cents": balance, "redeemed_cents": redeemed, "status": status})

    await _pay_provider(session, enrolment_id, amount, enrolment_cap if enrolment_cap is not None else scheme_cap)

    values = {"scheme_id": voucher.scheme_id, "voucher_id": voucher.id, "enrolment_id": enrolment_id,
              "provider_id": provider_id, "hold_id": None, "category": category, "invoice_cents": invoice_cents,
              "amount_cents": amount, "own_contribution_cents": own, "reference": reference,
              "session_date": session_date, "recorded_by": recorded_by, "created_at": now}
    redemption_id = (await conn.execute(_REDEEM_RECORD, values)).scalar_one()
    redemption = Redemption(id=redemption_id, **values)
    audit.record_insert(session, "redemption", redemption_id, values)
    await ledger.post_now(
        session, scheme_id=voucher.scheme_id, kind="redeem", source=(ledger.VOUCHER, voucher.id),
        target=(ledger.PROVIDER, enrolment_id), amount_cents=amount, voucher_id=voucher.id,
        redemption_id=redemption_id,
    )
    await outbox.enqueue_now(
        session, to=email, template="redemption_recorded", locale=locale,
        contact_name=contact_name, provider_name=provider_name or registered_name, amount_cents=amount,
        invoice_cents=invoice_cents, own_contribution_cents=own, category=category,
        report_redemption_id=redemption_id,
    )
    return redemption


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
    await _take_from_voucher(session, voucher, amount, now, to_held=True)
    cap = enrolment.cap_cents if enrolment.cap_cents is not None else scheme.provider_cap_cents
    await _hold_for_provider(session, enrolment.id, amount, cap)
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
            status=case((Voucher.balance_cents + new_held == 0, "used_up"), else_="active"),
        )
    )
    cap = enrolment.cap_cents if enrolment.cap_cents is not None else scheme.provider_cap_cents
    await _pay_held(session, enrolment.id, hold.amount_cents, cap)
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
    redemption = await session.get(Redemption, redemption_id)
    if redemption is None or (provider_id is not None and redemption.provider_id != provider_id):
        raise NotFound("redemption-not-found", N_("There is no such redemption."))
    voucher = await _lock_voucher(session, redemption.voucher_id)
    scheme = await session.get_one(Scheme, redemption.scheme_id)
    if provider_id is not None and now > redemption.created_at + dt.timedelta(days=scheme.reversal_days):
        raise Refused("reversal-period-over", N_("The period for reversing this redemption has ended."))
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
    from .applications import promote_waiting  # applications imports this module

    assert status in ("revoked", "expired")
    now = now or utcnow()
    voucher = await _lock_voucher(session, voucher_id)
    if voucher.status not in ("active", "used_up") or (status == "expired" and voucher.status != "active"):
        raise Refused("voucher-ended", N_("This voucher has already ended."))
    if status == "expired" and voucher.expires_at > now:
        raise Refused("voucher-not-expired", N_("This voucher has not expired yet."))
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
    await promote_waiting(session, rt, voucher.scheme_id)
    await session.refresh(voucher)
    return voucher
