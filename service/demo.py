"""Demo data for ``make run``: a provider, a coach token and a few vouchers to try at once."""

from __future__ import annotations

from sqlalchemy import select

from . import applications, municipality, providers, schemes, staff
from .codes import format_code
from .db import run_in_transaction
from .models import Provider, ProviderUser, Scheme, Voucher
from .models_admin import StaffUser
from .runtime import Runtime

DEMO_KVK = "90000001"
DEMO_COACH_EMAIL = "coach@example.org"
DEMO_STAFF_EMAIL = "beheerder@example.org"


async def create_demo(rt: Runtime) -> str:
    async def work(session):  # type: ignore[no-untyped-def]
        scheme = await session.scalar(select(Scheme).order_by(Scheme.id))
        if scheme is None:
            return "load a scheme first (vouchers scheme load schemes/arnhem-2021.toml)"
        provider = await session.scalar(select(Provider).where(Provider.kvk_number == DEMO_KVK))
        lines = []
        if provider is None:
            provider = await providers.add_provider(session, providers.ProviderDetails(
                name="Demo Coaching Arnhem", kvk_number=DEMO_KVK, email="coach@example.org",
                iban="NL91ABNA0417164300", website="https://example.org",
                description="Loopbaancoaching en financieel advies voor zzp'ers."))
            enrolment = await providers.enrol(session, scheme, provider, list(scheme.categories))
            await providers.decide_enrolment(session, enrolment.id, approve=True)
        token = await providers.create_token(session, rt, role="coach", name="demo coach", provider_id=provider.id)
        lines.append(f"Demo provider: {provider.name} ({provider.slug})")
        lines.append(f"Coach API token: {token}")
        if await session.scalar(select(ProviderUser.id).where(ProviderUser.email == DEMO_COACH_EMAIL)) is None:
            password = staff.new_password()
            await staff.create_user(session, provider_id=provider.id, email=DEMO_COACH_EMAIL, name="Demo Coach",
                                    password=password)
            lines.append(f"Coach sign-in at {rt.link('/coach/login')}: {DEMO_COACH_EMAIL} / {password}")
        if await session.scalar(select(StaffUser.id).where(StaffUser.email == DEMO_STAFF_EMAIL)) is None:
            user = await municipality.create_staff(session, rt, email=DEMO_STAFF_EMAIL, name="Demo Beheerder",
                                                   role="beheerder")
            lines.append(f"Municipality staff ({DEMO_STAFF_EMAIL}, beheerder): set a password and an "
                         f"authenticator app at {await municipality.setup_link(session, rt, user)}")
        if schemes.scheme_status(scheme) == "open" and scheme.allocation == "first_come":
            for n in range(3):
                kvk = f"9100000{n}"
                if await session.scalar(select(Voucher.id).where(Voucher.kvk_number == kvk)) is not None:
                    continue
                details = applications.ApplicantDetails(
                    kvk_number=kvk, company_name=f"Demo Onderneming {n + 1}", employees=n, postcode="6811 AB",
                    contact_name=f"Demo Ondernemer {n + 1}", email=f"ondernemer{n + 1}@example.org")
                application = await applications.submit(session, scheme, details)
                await applications.decide(session, rt, scheme, application, employees=n, postcode="6811 AB")
                voucher = await session.scalar(select(Voucher).where(Voucher.application_id == application.id))
                if voucher is not None:
                    lines.append(f"Sample voucher: {format_code(rt.keys.code_for(voucher.code_salt))}"
                                 f"  ->  {rt.link('/v/' + format_code(rt.keys.code_for(voucher.code_salt)))}")
        return "\n".join(lines)

    return await run_in_transaction(rt.sessionmaker, work)
