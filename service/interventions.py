"""The municipality's decisions and interventions, as plain domain functions (no web imports),
and their previews: what an action will do, told before it is done. An action and its preview
refuse through the same check of ``service.refusals``.

Each goes through the same domain functions as everything else (``vouchers.end_voucher``,
``vouchers.reverse_redemption``, ``schemes.move_to_reserve``, ``applications.decide``,
``providers.decide_enrolment``), leaves a ledger entry, and mails whom it concerns through the
one outbox. The audit log records every row it changes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import applications, ledger, outbox, providers, schemes, staff, validity, vouchers
from .refusals import (
    ENDABLE,
    UNDECIDED,
    check_closable,
    check_endable,
    check_pending,
    check_reversible,
    check_undecided,
    movable,
)
from .errors import N_, InvalidInput, NotFound, Refused
from .models import Application, Enrolment, Provider, ProviderUser, Redemption, Scheme, Voucher, utcnow
from .models_admin import FlagReview
from .runtime import Runtime

__all__ = (
    "UNDECIDED",
    "Fact",
    "preview_close",
    "preview_decision",
    "preview_move",
    "preview_provider_decision",
    "preview_reverse",
    "preview_revoke",
    "close_scheme",
    "decide_application",
    "decide_provider",
    "extend_voucher",
    "move_money",
    "review_report",
    "reverse",
    "revoke",
)

@dataclass(frozen=True)
class Fact:
    """One consequence of an action, told before it is done: a message id with its parameters
    (``*_cents`` are amounts of money, dates are days)."""

    message: str
    params: dict[str, Any] = field(default_factory=dict)


FINAL = Fact(N_("This cannot be undone."))


def _reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) < 3:
        raise InvalidInput("reason-required", N_("Give a reason (at least 3 characters)."), field="reason")
    if len(reason) > 1000:
        raise InvalidInput("reason-too-long", N_("The reason can be at most 1000 characters."), field="reason")
    return reason


async def revoke(session: AsyncSession, rt: Runtime, voucher_id: int, *, reason: str) -> Voucher:
    """Revoke a voucher: unspent money and an unused place go back (``vouchers.end_voucher``,
    which also mails the holder and moves the waiting list up)."""
    return await vouchers.end_voucher(session, rt, voucher_id, status="revoked", reason=_reason(reason))


async def reverse(session: AsyncSession, redemption_id: int, *, reason: str) -> Redemption:
    """Reverse any redemption at any time (the municipality's right) and tell the provider."""
    redemption = await vouchers.reverse_redemption(session, redemption_id, reason=_reason(reason), provider_id=None)
    provider = await session.get_one(Provider, redemption.provider_id)
    outbox.enqueue(session, to=provider.email, template="admin_redemption_reversed", locale=provider.locale,
                   provider_name=provider.name, amount_cents=redemption.amount_cents,
                   reference=redemption.reference, reason=redemption.reversal_reason or "")
    return redemption


async def extend_voucher(session: AsyncSession, voucher_id: int, *, until: dt.date, reason: str,
                         now: dt.datetime | None = None) -> Voucher:
    """Let a voucher be used until the end of ``until`` (Dutch time). Only a voucher that has not
    ended can be extended, and only to a later date; a zero-amount ledger entry records it."""
    reason = _reason(reason)
    now = now or utcnow()
    if until >= dt.date.max:  # the calendar has no day after it to end on
        raise InvalidInput("date-too-late", N_("Choose an earlier date."), field="until")
    new_expiry = validity.end_after(until)
    if new_expiry <= now:
        raise InvalidInput("date-in-past", N_("Choose a date in the future."), field="until")
    voucher = await session.get(Voucher, voucher_id)
    if voucher is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    scheme = await session.get_one(Scheme, voucher.scheme_id)
    if scheme.closed_at is not None:
        raise vouchers.scheme_closed()
    old_expiry = voucher.expires_at
    result = await session.execute(
        update(Voucher)
        .where(Voucher.id == voucher_id, Voucher.status.in_(ENDABLE), Voucher.expires_at > now,
               Voucher.expires_at < new_expiry)
        .values(expires_at=new_expiry)
        .returning(Voucher.id)
    )
    if result.first() is None:
        await session.refresh(voucher)
        if voucher.status not in ENDABLE or voucher.expires_at <= now:
            raise Refused("voucher-ended", N_("This voucher has already ended."))
        raise InvalidInput("date-not-later", N_("Choose a date after the current expiry date."), field="until")
    ledger.post(session, scheme_id=voucher.scheme_id, kind="extend", source=(ledger.VOUCHER, voucher.id),
                target=(ledger.VOUCHER, voucher.id), amount_cents=0, voucher_id=voucher.id,
                memo=f"last day {validity.last_day(old_expiry).isoformat()} -> {until.isoformat()}: {reason}")
    await session.refresh(voucher)
    application = await session.get_one(Application, voucher.application_id)
    outbox.enqueue(session, to=application.email, template="admin_voucher_extended", locale=application.locale,
                   contact_name=application.contact_name, until=until.isoformat(), reason=reason)
    return voucher


async def close_scheme(session: AsyncSession, scheme_id: int, *, reason: str, now: dt.datetime | None = None) -> Scheme:
    """Close a scheme early: no applications, no redemptions, no new vouchers from here on.
    Vouchers keep their money until they expire (the sweep returns it to the budget).

    The enrolments are marked first (``Enrolment.scheme_closed_at``): a redemption changes its
    enrolment's row and not the scheme's, so that row is where it meets the close. The order,
    enrolments then scheme, is the order in which a reversal locks them."""
    reason = _reason(reason)
    now = now or utcnow()
    # In the order of their ids, as a group of redemptions locks them (``fastwrite._LOCK_ROWS``).
    await session.execute(select(Enrolment.id).where(Enrolment.scheme_id == scheme_id).order_by(Enrolment.id)
                          .with_for_update())
    await session.execute(
        update(Enrolment).where(Enrolment.scheme_id == scheme_id, Enrolment.scheme_closed_at.is_(None))
        .values(scheme_closed_at=now)
    )
    result = await session.execute(
        update(Scheme).where(Scheme.id == scheme_id, Scheme.closed_at.is_(None)).values(closed_at=now)
        .returning(Scheme.id)
    )
    if result.first() is None:
        check_closable(await session.get(Scheme, scheme_id, populate_existing=True))
    ledger.post(session, scheme_id=scheme_id, kind="close", source=(ledger.BUDGET, scheme_id),
                target=(ledger.BUDGET, scheme_id), amount_cents=0, memo=f"closed early: {reason}")
    scheme = await session.get_one(Scheme, scheme_id)
    await session.refresh(scheme)
    return scheme


async def move_money(session: AsyncSession, scheme_id: int, amount_cents: int, *, to_reserve: bool,
                     memo: str) -> Scheme:
    """Move money between the budget and the reserve (``schemes.move_to_reserve``)."""
    memo = _reason(memo)
    if amount_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount")
    scheme = await session.get(Scheme, scheme_id)
    if scheme is None:
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    await schemes.move_to_reserve(session, scheme, amount_cents if to_reserve else -amount_cents, memo=memo)
    await session.refresh(scheme)
    return scheme


async def decide_application(session: AsyncSession, rt: Runtime, application_id: int, *, approve: bool,
                             reason: str = "") -> Application:
    """Decide an application the register could not decide.

    Approving means staff have checked the firm's figures themselves: the scheme's own rules
    then decide as for any application (a voucher, the lottery or the waiting list, each with
    its mail). Refusing mails the applicant the reason given.
    """
    query = select(Application).where(Application.id == application_id).execution_options(populate_existing=True)
    if not rt.settings.is_sqlite:
        query = query.with_for_update()
    application = check_undecided(await session.scalar(query))
    scheme = await session.get_one(Scheme, application.scheme_id)
    if approve:
        await applications.decide(
            session, rt, scheme, application,
            employees=application.registry_employees if application.registry_employees is not None
            else application.employees,
            postcode=application.registry_postcode or application.postcode)
    else:
        applications.reject(session, scheme, application, [_reason(reason)])
        await session.flush()
    return application


async def decide_provider(session: AsyncSession, rt: Runtime, enrolment_id: int, *, approve: bool,
                          reason: str = "") -> Enrolment:
    """Approve or refuse a provider's request to take part, and mail the provider the decision
    (the pages, the admin API and the CLI all decide here). An approved provider's contact who
    has no password yet gets a one-time link to choose one in the same mail."""
    enrolment = check_pending(await session.get(Enrolment, enrolment_id))
    provider = await session.get_one(Provider, enrolment.provider_id)
    if provider.email_confirmed_at is None:
        raise Refused("provider-unconfirmed", N_("The provider has not yet confirmed its e-mail address."))
    reason = reason.strip() if approve else _reason(reason)
    enrolment = await providers.decide_enrolment(session, enrolment_id, approve=approve, reason=reason)
    scheme = await session.get_one(Scheme, enrolment.scheme_id)
    link: dict[str, int] = {}
    if approve:
        contact = await session.scalar(select(ProviderUser).where(
            ProviderUser.provider_id == provider.id, ProviderUser.email == provider.email.strip().lower(),
            ProviderUser.password_hash.is_(None), ProviderUser.disabled_at.is_(None)))
        if contact is not None:
            link = {"account_link_id": (await staff.setup_link(session, rt, contact)).id, "hours": staff.SETUP_HOURS}
    outbox.enqueue(session, to=provider.email, template="admin_enrolment_decided", locale=provider.locale,
                   provider_name=provider.name, scheme_name=schemes.scheme_name(scheme, provider.locale),
                   approved=approve, reason=reason, **link)
    return enrolment


async def review_report(session: AsyncSession, redemption_id: int, *, reverse_it: bool, reason: str,
                        decided_by: str) -> FlagReview:
    """Decide on a redemption an entrepreneur reported: reverse it, or keep it. The entrepreneur
    is told the decision and the reason."""
    reason = _reason(reason)
    redemption = await session.get(Redemption, redemption_id)
    if redemption is None or redemption.flagged_at is None:
        raise NotFound("redemption-not-found", N_("There is no such redemption."))
    if await session.get(FlagReview, redemption_id) is not None:
        raise Refused("report-decided", N_("This report has already been decided."))
    if reverse_it:
        redemption = await reverse(session, redemption_id, reason=reason)
    review = FlagReview(redemption_id=redemption_id, decision="reversed" if reverse_it else "kept", reason=reason,
                        decided_by=decided_by, decided_at=utcnow())
    session.add(review)
    await session.flush()
    voucher = await session.get_one(Voucher, redemption.voucher_id)
    application = await session.get_one(Application, voucher.application_id)
    provider = await session.get_one(Provider, redemption.provider_id)
    outbox.enqueue(session, to=application.email, template="admin_report_decided", locale=application.locale,
                   contact_name=application.contact_name, provider_name=provider.name,
                   amount_cents=redemption.amount_cents, reversed=reverse_it, reason=reason)
    return review


# --- what an action will do, told before it is done (the same checks, nothing changed) ----------


async def _waiting(session: AsyncSession, scheme_id: int) -> int:
    return await session.scalar(select(func.count()).select_from(Application).where(
        Application.scheme_id == scheme_id, Application.status == "waiting")) or 0


async def preview_close(session: AsyncSession, scheme_id: int, *, reason: str) -> list[Fact]:
    """What closing a scheme does to the vouchers, providers and waiting list it has now."""
    _reason(reason)
    scheme = check_closable(await session.get(Scheme, scheme_id))
    count, unspent = (await session.execute(
        select(func.count(), func.coalesce(func.sum(Voucher.balance_cents + Voucher.held_cents), 0))
        .where(Voucher.scheme_id == scheme_id, Voucher.status.in_(ENDABLE)))).one()
    enrolled = await session.scalar(select(func.count()).select_from(Enrolment).where(
        Enrolment.scheme_id == scheme_id, Enrolment.status == "approved")) or 0
    return [
        Fact(N_("Nobody can apply for %(scheme)s any more, and no new vouchers are issued."), {"scheme": scheme.name}),
        Fact(N_("Vouchers that can be used now: %(count)s, with %(unspent_cents)s unspent. From now on they "
                "cannot be used; the money goes back to the budget when each voucher expires."),
             {"count": count, "unspent_cents": unspent}),
        Fact(N_("Providers taking part: %(count)s. They can no longer record redemptions."), {"count": enrolled}),
        Fact(N_("Entrepreneurs on the waiting list: %(count)s. They will not get a voucher."),
             {"count": await _waiting(session, scheme_id)}),
        FINAL,
    ]


async def preview_revoke(session: AsyncSession, voucher_id: int, *, reason: str) -> list[Fact]:
    """What revoking a voucher gives back, as ``vouchers.end_voucher`` will."""
    _reason(reason)
    voucher = await session.get(Voucher, voucher_id)
    if voucher is None:
        raise NotFound("voucher-not-found", N_("There is no voucher with this code."))
    check_endable(voucher, status="revoked", now=utcnow())
    application = await session.get_one(Application, voucher.application_id)
    facts = [
        Fact(N_("Voucher %(id)s of %(company)s (KvK %(kvk)s) ends now and can no longer be used."),
             {"id": voucher.id, "company": application.company_name, "kvk": voucher.kvk_number}),
        Fact(N_("%(amount_cents)s goes back to the budget."),
             {"amount_cents": voucher.balance_cents + voucher.held_cents}),
    ]
    if voucher.held_cents:
        facts.append(Fact(N_("Reservations with providers (%(held_cents)s) are cancelled."),
                          {"held_cents": voucher.held_cents}))
    if voucher.holds_place and voucher.redeemed_cents == 0:
        facts.append(Fact(N_("Nothing was redeemed, so the place goes back too. Entrepreneurs on the waiting "
                             "list: %(count)s."), {"count": await _waiting(session, voucher.scheme_id)}))
    return [*facts, Fact(N_("The entrepreneur gets an e-mail with the reason.")), FINAL]


async def preview_reverse(session: AsyncSession, redemption_id: int, *, reason: str) -> list[Fact]:
    """Where the money of a reversed redemption goes, as ``vouchers.reverse_redemption`` decides."""
    _reason(reason)
    redemption = check_reversible(await session.get(Redemption, redemption_id), provider_id=None, now=utcnow())
    voucher = await session.get_one(Voucher, redemption.voucher_id)
    provider = await session.get_one(Provider, redemption.provider_id)
    application = await session.get_one(Application, voucher.application_id)
    facts = [Fact(N_("%(amount_cents)s that %(provider)s recorded on %(date)s (reference %(reference)s) is taken "
                     "back from the provider."),
                  {"amount_cents": redemption.amount_cents, "provider": provider.name,
                   "date": redemption.created_at.date(), "reference": redemption.reference})]
    if vouchers.effective_status(voucher) in ("active", "used_up"):
        facts.append(Fact(N_("The money goes back to the voucher of %(company)s: its balance becomes "
                             "%(balance_cents)s."),
                          {"company": application.company_name,
                           "balance_cents": voucher.balance_cents + redemption.amount_cents}))
    else:
        facts.append(Fact(N_("The voucher of %(company)s can no longer be used, so the money goes back to the "
                             "budget."), {"company": application.company_name}))
    return [*facts, Fact(N_("The provider gets an e-mail with the reason.")), FINAL]


async def preview_move(session: AsyncSession, scheme_id: int, amount_cents: int, *, to_reserve: bool,
                       memo: str) -> list[Fact]:
    """The budget and reserve after a move, refused as ``schemes.move_to_reserve`` would refuse it."""
    _reason(memo)
    if amount_cents <= 0:
        raise InvalidInput("amount-not-positive", N_("The amount must be more than zero."), field="amount")
    scheme = await session.get(Scheme, scheme_id)
    if scheme is None:
        raise NotFound("scheme-not-found", N_("There is no scheme with this name."))
    delta = amount_cents if to_reserve else -amount_cents
    budget, reserve = scheme.budget_cents - delta, scheme.reserve_cents + delta
    if not movable(scheme.budget_cents, scheme.reserve_cents, scheme.committed_cents, delta):
        raise Refused("not-enough-money", N_("There is not enough uncommitted money for this move."))
    return [
        Fact(N_("%(amount_cents)s moves from the budget to the reserve.") if to_reserve
             else N_("%(amount_cents)s moves from the reserve to the budget."), {"amount_cents": amount_cents}),
        Fact(N_("The budget becomes %(budget_cents)s (now %(old_cents)s) and the reserve %(reserve_cents)s."),
             {"budget_cents": budget, "old_cents": scheme.budget_cents, "reserve_cents": reserve}),
        Fact(N_("Money left for new vouchers becomes %(left_cents)s."),
             {"left_cents": budget - scheme.committed_cents}),
    ]


async def preview_decision(session: AsyncSession, application_id: int, *, approve: bool,
                           reason: str = "") -> list[Fact]:
    """What deciding an undecided application leads to for the applicant."""
    application = check_undecided(await session.get(Application, application_id))
    who = {"number": application.public_id, "company": application.company_name}
    if not approve:
        return [Fact(N_("Application %(number)s of %(company)s is refused."), who),
                Fact(N_("The entrepreneur gets an e-mail with this reason: %(reason)s"), {"reason": _reason(reason)}),
                FINAL]
    scheme = await session.get_one(Scheme, application.scheme_id)
    facts = [Fact(N_("Application %(number)s of %(company)s is approved: the scheme's rules then decide with the "
                     "figures you checked (%(employees)s people, postcode %(postcode)s)."),
                  {**who, "employees": application.registry_employees if application.registry_employees is not None
                   else application.employees, "postcode": application.registry_postcode or application.postcode})]
    if scheme.allocation == "lottery":
        facts.append(Fact(N_("If the figures meet the rules, the application takes part in the lottery.")))
    elif scheme.places_used < scheme.max_places and scheme.committed_cents + scheme.value_cents <= scheme.budget_cents:
        facts.append(Fact(N_("If the figures meet the rules, a voucher of %(value_cents)s is issued and the "
                             "entrepreneur gets it by e-mail. Places left: %(places)s."),
                          {"value_cents": scheme.value_cents, "places": scheme.max_places - scheme.places_used}))
    else:
        facts.append(Fact(N_("No place or money is left: if the figures meet the rules, the entrepreneur joins "
                             "the waiting list.")))
    return [*facts, FINAL]


async def preview_provider_decision(session: AsyncSession, enrolment_id: int, *, approve: bool,
                                    reason: str = "") -> list[Fact]:
    """What deciding a provider's request to take part means for the provider."""
    enrolment = check_pending(await session.get(Enrolment, enrolment_id))
    provider = await session.get_one(Provider, enrolment.provider_id)
    scheme = await session.get_one(Scheme, enrolment.scheme_id)
    who = {"provider": provider.name, "kvk": provider.kvk_number, "scheme": scheme.name}
    if not approve:
        return [Fact(N_("%(provider)s (KvK %(kvk)s) may not take part in %(scheme)s."), who),
                Fact(N_("The provider gets an e-mail with this reason: %(reason)s"), {"reason": _reason(reason)}),
                FINAL]
    return [Fact(N_("%(provider)s (KvK %(kvk)s) takes part in %(scheme)s and can record redemptions from now on."),
                 who),
            Fact(N_("The provider gets an e-mail with the decision.")), FINAL]
