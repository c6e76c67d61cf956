"""Demo data for ``make run``: a provider with offers, a coach token and a few vouchers to try at once.

``create_demo`` makes what is missing and prints credentials; ``demo_credentials`` prints fresh ones
again at any time (a new coach password and token: the old ones stop working), because what
``make run`` printed is gone once it scrolled away."""

from __future__ import annotations

from sqlalchemy import select, update

from . import applications, municipality, offers, providers, revocations, schemes, staff
from .codes import format_code
from .db import run_in_transaction
from .models import ApiToken, Application, Offer, Provider, ProviderUser, Scheme, Voucher, utcnow
from .models_admin import StaffUser
from .runtime import Runtime

DEMO_KVK = "90000001"
DEMO_COACH_EMAIL = "coach@example.org"
DEMO_STAFF_EMAIL = "beheerder@example.org"
DEMO_TOKEN_NAME = "demo coach"
DEMO_VOUCHER_KVKS = tuple(f"9100000{n}" for n in range(3))
DEMO_OFFERS = (
    ("Loopbaancoaching voor zzp'ers", "coaching", 750_00, "4 gesprekken van 1 uur",
     "Samen kijken we waar u met uw bedrijf naartoe wilt en wat de eerste stappen zijn."),
    ("Cursus boekhouden en btw", "retraining", 450_00, "3 middagen",
     "Leer zelf uw administratie bijhouden en uw btw-aangifte doen."),
    ("Financieel advies: grip op uw cijfers", "financial_advice", 600_00, "2 gesprekken en een rapport",
     "Een adviseur bekijkt uw cijfers en geeft advies over prijzen, reserves en financiering."),
)


class DemoMissing(RuntimeError):
    """There are no demo data yet to print credentials for."""


async def create_demo(rt: Runtime) -> str:
    async def work(session):  # type: ignore[no-untyped-def]
        scheme = await session.scalar(select(Scheme).order_by(Scheme.id))
        if scheme is None:
            return "load a scheme first (vouchers scheme load schemes/arnhem-2021.toml)"
        provider = await session.scalar(select(Provider).where(Provider.kvk_number == DEMO_KVK))
        if provider is None:
            provider = await providers.add_provider(session, providers.ProviderDetails(
                name="Demo Coaching Arnhem", kvk_number=DEMO_KVK, email="coach@example.org",
                iban="NL91ABNA0417164300", website="https://example.org",
                description="Loopbaancoaching en financieel advies voor zzp'ers."))
            enrolment = await providers.enrol(session, scheme, provider, list(scheme.categories))
            await providers.decide_enrolment(session, enrolment.id, approve=True)
        # Without offers the entrepreneur's online redemption (/mijn-voucher/aanbod) has nothing to show.
        if await session.scalar(select(Offer.id).where(Offer.provider_id == provider.id).limit(1)) is None:
            for title, category, price, duration, description in DEMO_OFFERS:
                if category in scheme.categories:
                    await offers.publish_offer(session, provider.id, offers.OfferIn(
                        scheme=scheme.slug, title=title, category=category, price_cents=price, duration=duration,
                        description=description))
        if await session.scalar(select(ProviderUser.id).where(ProviderUser.email == DEMO_COACH_EMAIL)) is None:
            await staff.create_user(session, provider_id=provider.id, email=DEMO_COACH_EMAIL, name="Demo Coach",
                                    password=staff.new_password())
        if await session.scalar(select(StaffUser.id).where(StaffUser.email == DEMO_STAFF_EMAIL)) is None:
            await municipality.create_staff(session, rt, email=DEMO_STAFF_EMAIL, name="Demo Beheerder",
                                            role="beheerder")
        if schemes.scheme_status(scheme) == "open" and scheme.allocation == "first_come":
            for n, kvk in enumerate(DEMO_VOUCHER_KVKS):
                if await session.scalar(select(Application.id).where(Application.kvk_number == kvk)) is not None:
                    continue
                details = applications.ApplicantDetails(
                    kvk_number=kvk, company_name=f"Demo Onderneming {n + 1}", employees=n, postcode="6811 AB",
                    contact_name=f"Demo Ondernemer {n + 1}", email=f"ondernemer{n + 1}@example.org")
                # A scheme that demands eHerkenning gets demo vouchers as if the firm had signed in
                # at the development broker (its pseudonyms are made the same way).
                proof = applications.LoginProof(kvk_number=kvk, level="EH3", acting_person=f"demo-person-{kvk}") \
                    if scheme.proof == "eherkenning" else None
                application = await applications.submit(session, scheme, details, proof)
                await applications.decide(session, rt, scheme, application, employees=n, postcode="6811 AB")
        return await _credentials(session, rt)

    return await run_in_transaction(rt.sessionmaker, work)


async def demo_credentials(rt: Runtime) -> str:
    """Fresh credentials for the demo accounts; raises DemoMissing before ``vouchers demo`` ran."""
    return await run_in_transaction(rt.sessionmaker, lambda session: _credentials(session, rt))


async def _credentials(session, rt: Runtime) -> str:  # type: ignore[no-untyped-def]
    provider = await session.scalar(select(Provider).where(Provider.kvk_number == DEMO_KVK))
    if provider is None:
        raise DemoMissing("no demo data yet: run `vouchers demo` (or `make run`) first")
    # A new token replaces the last one, so demo tokens do not pile up.
    await session.execute(update(ApiToken).where(ApiToken.provider_id == provider.id, ApiToken.name == DEMO_TOKEN_NAME,
                                                 ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
    await revocations.announce(session)
    token = await providers.create_token(session, rt, role="coach", name=DEMO_TOKEN_NAME, provider_id=provider.id)
    password = await staff.reset_password(session, DEMO_COACH_EMAIL)
    lines = [f"Demo provider: {provider.name} ({provider.slug})",
             f"Coach API token: {token}",
             f"Coach sign-in at {rt.link('/coach/login')}: {DEMO_COACH_EMAIL} / {password}"]
    user = await session.scalar(select(StaffUser).where(StaffUser.email == DEMO_STAFF_EMAIL))
    if user is not None and user.activated_at is None:
        lines.append(f"Municipality staff ({DEMO_STAFF_EMAIL}, beheerder): set a password and an "
                     f"authenticator app at {await municipality.setup_link(session, rt, user)}")
    elif user is not None:
        # Resetting it here would throw away the authenticator app the developer already set up.
        lines.append(f"Municipality staff ({DEMO_STAFF_EMAIL}, beheerder) is set up; a new setup link: "
                     f"vouchers staff reset --email {DEMO_STAFF_EMAIL}")
    samples = await session.scalars(select(Voucher).join(Application, Application.id == Voucher.application_id)
                                    .where(Application.kvk_number.in_(DEMO_VOUCHER_KVKS)).order_by(Voucher.id))
    for voucher in samples:
        code = format_code(rt.keys.code_for(voucher.code_salt))
        lines.append(f"Sample voucher: {code}  ->  {rt.link('/v/' + code)}")
    lines.append("Lost these? `vouchers demo credentials` prints fresh ones (the coach password and token change).")
    return "\n".join(lines)
