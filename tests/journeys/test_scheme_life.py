"""The life of a scheme through the user interfaces only: people in a browser (the coach and the
entrepreneurs at a phone's width, staff at a desktop's), the operator at the command line, mail
read from the loopback SMTP server the service sends to. On SQLite and on PostgreSQL.

axe-core (WCAG 2.1 A and AA) checks every page a person comes to; a step that leaves a page
unchecked fails. At the end `vouchers check` and `vouchers audit verify` find nothing wrong.
"""

from __future__ import annotations

import datetime as dt
import http.server
import re
import time
from functools import partial
from pathlib import Path

import pyotp
import pytest

from tests.browser import DESKTOP, PHONE, serve_in_thread
from tests.conftest import ROOT
from tests.journeys.harness import Journey, Person, mail_body

pytestmark = pytest.mark.browser

STAFF = "sanne.beheer@arnhem.example"
STAFF_PASSWORD = "lange-zin-voor-beheer-2026"
BAKER = "info@bakkerijhetzuiden.example"
TRANSLATOR = "office@translation-sonsbeek.example"
WHOLESALER = "inkoop@groothandel-velperpoort.example"
PROVIDER = "info@loopbaanpraktijk-rijn.example"
COLLEAGUE = "joris@loopbaanpraktijk-rijn.example"
PROVIDER_PASSWORD = "rijn-praktijk-wachtwoord-2026"
COLLEAGUE_PASSWORD = "joris-eigen-wachtwoord-2026"


def test_a_scheme_from_start_to_council_report(journey: Journey, tmp_path: Path) -> None:
    service = journey.service

    with journey.step("the operator migrates the database and starts the service"):
        service.cli("db", "upgrade")
        service.start()

    with journey.step("a municipality staff account is set up from its one-time link"):
        staff = journey.person("staff", DESKTOP)
        secret = set_up_staff(journey, staff)

    with journey.step("the operator loads the scheme"):
        out = service.cli("scheme", "load", str(ROOT / "schemes" / "arnhem-2021.toml")).stdout
        assert "arnhem-2021" in out

    with journey.step("the operator builds the public site"):
        site_dir = tmp_path / "site"
        site = build_site(journey, site_dir)

    with journey.step("an entrepreneur applies in Dutch from the site's button and confirms by mail"):
        baker = journey.person("baker", PHONE)
        apply_from_site(journey, baker, site, lang="nl", kvk="30000001", company="Bakkerij Het Zuiden",
                                     employees="3", postcode="6811 AB", name="Fatima el Amrani", email=BAKER)

    with journey.step("another entrepreneur applies in English and confirms by mail"):
        translator = journey.person("translator", PHONE)
        translator_code = apply_from_site(journey, translator, site, lang="en", kvk="30000002", company="Translation Bureau Sonsbeek",
                        employees="2", postcode="6814 AH", name="Pieter de Vries", email=TRANSLATOR)

    with journey.step("staff sign in with password and code and see both vouchers on the dashboard"):
        sign_in_staff(journey, staff, secret)
        staff.click("link", "Ondernemersvoucher Arnhem")
        staff.page.wait_for_url("**/beheer/regelingen/arnhem-2021")
        staff.check("staff-dashboard")

    with journey.step("an applicant the register lists with 25 employees is refused and sees what the register said"):
        wholesaler = journey.person("wholesaler", PHONE)
        wholesaler.goto("/regelingen/arnhem-2021/aanvragen?lang=nl")
        wholesaler.check("wholesaler-form")
        fill_application(wholesaler, lang="nl", kvk="30000003", company="Groothandel Velperpoort", employees="5",
                         postcode="6811 AB", name="Henk Jansen", email=WHOLESALER)
        confirm_application(journey, wholesaler, WHOLESALER, lang="nl")
        wholesaler.page.get_by_role("heading", name="U kunt geen voucher krijgen").wait_for()
        wholesaler.check("wholesaler-refused")
        refusal = wholesaler.text()
        assert "25" in refusal and "6811 AB" in refusal, refusal
        assert "25" in mail_body(journey.mail(WHOLESALER, "aanvraag"))

    with journey.step("a provider signs up, staff approve it, its contact sets a password and invites a colleague"):
        coach = journey.person("coach", PHONE)
        join_provider(journey, staff, coach)

    with journey.step("the provider publishes an offer"):
        coach.goto("/coach/offers")
        coach.check("coach-offers")
        coach.page.get_by_label("Regeling").select_option("arnhem-2021")
        coach.fill("Titel", "Loopbaancoaching, drie gesprekken")
        coach.page.get_by_label("Soort").select_option(label="Coaching")
        coach.fill("Prijs", "450,00")
        coach.fill("Duur of aantal sessies", "3 gesprekken van 1 uur")
        coach.fill("Korte beschrijving", "Samen kijken we naar uw volgende stap.")
        coach.click("button", "Aanbod publiceren")
        coach.page.get_by_role("heading", name="Loopbaancoaching, drie gesprekken").wait_for()
        coach.check("coach-offer-published")

    with journey.step("the baker reserves the offer and the provider confirms delivery"):
        baker.goto("/mijn-voucher")
        baker.check("baker-my-voucher-before")
        baker.click("link", "Kies een aanbod")
        baker.check("baker-offers")
        baker.click("link", "Kies Loopbaancoaching, drie gesprekken")
        baker.check("baker-offer")
        baker.page.get_by_role("button", name=re.compile("Reserveer")).click()
        baker.page.wait_for_url("**/mijn-voucher/reserveringen/**")
        baker.check("baker-reservation")
        requested = journey.mail(PROVIDER, "reservering")
        coach.goto(journey.link(requested, "/coach/reservations"))
        coach.check("coach-reservations")
        coach.click("button", "Levering bevestigen")
        coach.page.get_by_role("status").wait_for()
        coach.check("coach-reservation-confirmed")
        journey.mail(BAKER, "van uw voucher afgeschreven")

    with journey.step("a coach scans the translator's QR code and records a session"):
        coach.goto(f"/v/{translator_code}")
        coach.check("coach-voucher")
        assert "Geldig" in coach.text()
        coach.fill("Bedrag van de factuur", "250,00")
        coach.page.get_by_label("Wat hebt u geleverd?").select_option(label="Coaching")
        coach.fill("Datum van de sessie", time.strftime("%Y-%m-%d"))
        coach.fill("Factuurnummer of kenmerk", "LR-2026-014")
        coach.click("button", "Vastleggen en betalen met voucher")
        coach.page.get_by_role("heading", name="Vastgelegd").wait_for()
        coach.check("coach-recorded")

    with journey.step("the baker's history shows each event once and adds up to the balance"):
        baker.goto("/mijn-voucher")
        baker.check("baker-my-voucher-after")
        history = baker.page.get_by_role("table", name="Wat er met uw voucher is gebeurd")
        amounts = [cents(t) for t in history.locator("tbody td.num").all_inner_texts()]
        assert amounts.count(-45000) == 1, amounts  # the confirmed reservation is one event
        balance = baker.page.get_by_role("table", name="Uw saldo")
        available = cents(balance.get_by_role("row", name=re.compile("Beschikbaar")).locator("td").inner_text())
        assert sorted(amounts) == [-45000, 135000] and sum(amounts) == available == 90000, (amounts, available)
        assert cents(history.locator("tfoot td").inner_text()) == available

    with journey.step("the translator reports the session from the mail and staff reverse it"):
        recorded = journey.mail(TRANSLATOR, "voucher")
        translator.goto(journey.link(recorded, "/report/"))
        translator.check("translator-report")
        translator.fill("What is wrong?", "I did not have a session with this coach.")
        translator.click("button", "Report this redemption")
        translator.page.get_by_role("status").wait_for()
        translator.check("translator-reported")
        staff.goto("/beheer/meldingen")
        staff.check("staff-reports")
        staff.page.get_by_label("De verzilvering terugdraaien").check()
        staff.fill("Reden (gaat naar de ondernemer)", "De coach kon het gesprek niet aantonen.")
        staff.click("button", "Besluit opslaan")
        confirm_if_asked(staff, "staff-reverse-confirm")
        staff.check("staff-reports-done")
        journey.mail(TRANSLATOR, "report")

    with journey.step("next month the operator makes the payout batch and the provider reads the statement"):
        sepa = tmp_path / "uitbetaling.xml"
        month = time.strftime("%Y-%m")
        service.cli("payout", "batch", "--month", month, "--out", str(sepa),
                    "--debtor-iban", "NL91ABNA0417164300", env=next_month())
        xml = sepa.read_text(encoding="utf-8")
        assert "<InstdAmt" in xml and "450.00" in xml, xml
        coach.goto(f"/coach/statement?month={month}")
        coach.check("coach-statement")
        assert "450,00" in coach.text()

    with journey.step("staff open the council report"):
        staff.goto("/beheer/rapportage/arnhem-2021")
        staff.check("staff-council-report")
        report = staff.text()
        assert "€ 450,00" in report, report

    with journey.step("the rebuilt site shows the new figures"):
        site = build_site(journey, tmp_path / "site-again")
        public = journey.person("public", DESKTOP)
        public.goto(site)
        public.check("public-site-home")
        assert "298 van de 300 plaatsen" in public.text(), public.text()
        public.click("link", "Deelnemende aanbieders")
        public.check("public-site-providers")
        assert "Loopbaanpraktijk Rijn" in public.text()

    with journey.step("staff revoke the baker's voucher and the baker sees why"):
        staff.goto("/beheer/vouchers")
        staff.check("staff-find-voucher")
        staff.page.locator("#q").fill("Bakkerij Het Zuiden")
        staff.click("button", "Zoeken")
        staff.check("staff-found-vouchers")
        staff.page.get_by_role("link", name=re.compile(r"^voucher \d+$")).click()
        staff.check("staff-voucher")
        staff.page.locator("#revoke_reason").fill("Het bedrijf is verhuisd naar buiten Arnhem.")
        staff.click("button", "Intrekken")
        confirm_if_asked(staff, "staff-revoke-confirm")
        staff.check("staff-voucher-revoked")
        journey.mail(BAKER, "ingetrokken")
        baker.goto("/mijn-voucher")
        baker.check("baker-revoked")
        assert "verhuisd naar buiten Arnhem" in baker.text()
        assert baker.page.locator("img[src*='qr']").count() == 0

    with journey.step("the stored figures match the ledger and the audit log is intact"):
        service.cli("check")
        service.cli("audit", "verify")


# --- steps that more than one journey could use ----------------------------------------------


def set_up_staff(journey: Journey, staff: Person) -> str:
    """`vouchers staff add` prints a one-time link; the staff member chooses a password and adds
    the key to an authenticator app (here: pyotp reads the key the page shows)."""
    out = journey.service.cli("staff", "add", "--email", STAFF, "--role", "beheerder", "--name", "Sanne de Boer").stdout
    link = re.search(r"https?://\S+/beheer/instellen/\S+", out)
    assert link, out
    staff.goto(link.group(0) + "?lang=nl")
    staff.check("staff-setup")
    secret = staff.page.locator(".code").inner_text().replace(" ", "")
    staff.page.locator("#password").fill(STAFF_PASSWORD)  # its label also holds the hint
    staff.fill("Nieuw wachtwoord nog een keer", STAFF_PASSWORD)
    staff.fill("Code van 6 cijfers", pyotp.TOTP(secret).now())
    staff.click("button", "Opslaan en naar inloggen")
    staff.page.wait_for_url("**/beheer/inloggen**")
    staff.check("staff-login-after-setup")
    return secret


def sign_in_staff(journey: Journey, staff: Person, secret: str) -> None:
    staff.goto("/beheer")
    staff.page.wait_for_url("**/beheer/inloggen**")
    staff.check("staff-login")
    staff.fill("E-mailadres", STAFF)
    staff.fill("Wachtwoord", STAFF_PASSWORD)
    staff.click("button", "Volgende")
    staff.page.wait_for_url("**/beheer/inloggen/code")
    staff.check("staff-code")
    staff.fill("Code van 6 cijfers", next_totp(secret))
    staff.click("button", "Inloggen")
    staff.page.wait_for_url("**/beheer")
    staff.check("staff-home")


def next_totp(secret: str) -> str:
    """A code the account has not used yet: each 30-second step's code works once, and setting up
    the account used the current one."""
    return pyotp.TOTP(secret).at(time.time() + 30)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def build_site(journey: Journey, out: Path) -> str:
    """`vouchers site build`, served as the municipality's web server would serve the folder."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(out)))
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    journey.service.cli("site", "build", "--out", str(out), "--site-url", url)
    journey.stack.enter_context(serve_in_thread(server))
    return url


def apply_from_site(journey: Journey, person: Person, site: str, *, lang: str, kvk: str, company: str,
                    employees: str, postcode: str, name: str, email: str) -> str:
    """From the public site's button to the voucher code on "my voucher"; returns the code."""
    dutch = lang == "nl"
    person.goto(site if dutch else site + "en/")
    person.check(f"{person.name}-site-home")
    person.click("link", "Vraag de voucher aan" if dutch else "Apply for the voucher")
    person.page.wait_for_url(journey.service.url + "/**")
    person.check(f"{person.name}-scheme-start")
    assert ("Ondernemersvoucher Arnhem" if dutch else "Arnhem entrepreneur voucher") in person.text()
    person.click("link", "Vraag de voucher aan" if dutch else "Apply for the voucher")
    person.page.wait_for_url("**/aanvragen")
    person.check(f"{person.name}-form")
    fill_application(person, lang=lang, kvk=kvk, company=company, employees=employees, postcode=postcode,
                     name=name, email=email)
    confirm_application(journey, person, email, lang=lang)
    person.page.get_by_role("heading", name="Uw vouchercode" if dutch else "Your voucher code").wait_for()
    person.check(f"{person.name}-my-voucher")
    code = person.page.locator(".code-large").inner_text().strip()
    issued = journey.mail(email, "Uw voucher voor" if dutch else "Your voucher for")
    assert code in mail_body(issued)
    return code


def fill_application(person: Person, *, lang: str, kvk: str, company: str, employees: str, postcode: str,
                     name: str, email: str) -> None:
    dutch = lang == "nl"
    labels = (["KvK-nummer", "Bedrijfsnaam", "Hoeveel mensen werken er in uw bedrijf?", "Postcode van uw bedrijf",
               "Uw naam", "E-mailadres", "Waarvoor wilt u de voucher gebruiken?"] if dutch else
              ["KvK number", "Company name", "How many people work at your company?", "Postcode of your business",
               "Your name", "E-mail address", "What do you want to use the voucher for?"])
    values = [kvk, company, employees, postcode, name, email, "Coaching om nieuwe klanten te vinden"]
    for label, value in zip(labels, values, strict=True):
        person.fill(label, value)
    person.click("button", "Aanvraag versturen" if dutch else "Send application")
    person.page.get_by_role("heading", name="Kijk in uw e-mail" if dutch else "Check your e-mail").wait_for()
    person.check(f"{person.name}-check-mail")


def confirm_application(journey: Journey, person: Person, email: str, *, lang: str) -> None:
    """The link in the mail opens a page whose button confirms (a mail scanner's visit does not)."""
    dutch = lang == "nl"
    confirm = journey.mail(email, "Bevestig uw e-mailadres" if dutch else "Confirm your e-mail address")
    person.goto(journey.link(confirm, "/aanvraag/bevestigen/"))
    person.check(f"{person.name}-confirm")
    person.click("button", "Mijn e-mailadres bevestigen" if dutch else "Confirm my e-mail address")
    person.page.wait_for_load_state()


def join_provider(journey: Journey, staff: Person, coach: Person) -> None:
    """The provider signs up on the web, confirms its address, is approved on /beheer, sets its
    password from the mail and invites a colleague, who sets one too."""
    coach.goto("/coach/apply?lang=nl")
    coach.check("coach-apply")
    coach.page.locator("#scheme").select_option("arnhem-2021")
    for field, value in (("#name", "Loopbaanpraktijk Rijn"), ("#contact_name", "Ria Rijn"), ("#kvk_number", "40000001"),
                         ("#email", PROVIDER), ("#description", "Loopbaancoaching voor zzp'ers."),
                         ("#iban", "NL02ABNA0123456789")):
        coach.page.locator(field).fill(value)
    coach.page.locator("#cat_coaching").check()
    coach.page.locator("main form button[type=submit]").click()
    coach.page.wait_for_load_state()
    coach.check("coach-applied")
    confirm = journey.mail(PROVIDER, "Bevestig uw e-mailadres")
    coach.goto(journey.link(confirm, "/coach/bevestigen/"))
    coach.check("coach-confirm-address")
    coach.click("button", "Mijn e-mailadres bevestigen")
    coach.page.wait_for_load_state()
    coach.check("coach-address-confirmed")

    staff.goto("/beheer/aanbieders")
    staff.check("staff-providers")
    assert "Loopbaanpraktijk Rijn" in staff.text()
    staff.page.locator("input[type=radio][value=approve]").first.check()
    staff.page.locator("main form button[type=submit]").first.click()
    staff.page.get_by_role("heading", name="Aanbieder goedkeuren?").wait_for()
    staff.check("staff-confirm-provider")
    staff.click("button", "Ja, goedkeuren")
    staff.page.wait_for_url("**/beheer/aanbieders?*")
    staff.check("staff-provider-approved")

    approved = journey.mail(PROVIDER, "Ondernemersvoucher Arnhem")
    choose_password(coach, journey.link(approved, "/coach/wachtwoord/"), PROVIDER_PASSWORD)
    sign_in_coach(coach, PROVIDER, PROVIDER_PASSWORD)

    coach.goto("/coach/team")
    coach.check("coach-team")
    coach.page.locator("#name").fill("Joris Rijn")
    coach.page.locator("#email").fill(COLLEAGUE)
    coach.page.locator("form[action='/coach/team'] button").click()
    coach.page.wait_for_load_state()
    coach.check("coach-team-invited")
    assert "Joris Rijn" in coach.text()
    colleague = journey.person("colleague", PHONE)
    invited = journey.mail(COLLEAGUE, "Loopbaanpraktijk Rijn")
    choose_password(colleague, journey.link(invited, "/coach/wachtwoord/"), COLLEAGUE_PASSWORD)
    sign_in_coach(colleague, COLLEAGUE, COLLEAGUE_PASSWORD)


def choose_password(person: Person, link: str, password: str) -> None:
    person.goto(link)
    person.check(f"{person.name}-choose-password")
    person.page.locator("#password").fill(password)
    person.page.locator("#repeat").fill(password)
    person.page.locator("main form button[type=submit]").click()
    person.page.wait_for_load_state()
    person.check(f"{person.name}-password-chosen")


def sign_in_coach(person: Person, email: str, password: str) -> None:
    person.goto("/coach/login?lang=nl")
    person.check(f"{person.name}-coach-login")
    person.fill("E-mailadres", email)
    person.fill("Wachtwoord", password)
    person.click("button", "Inloggen")
    person.page.wait_for_url("**/coach")
    person.check(f"{person.name}-coach-home")


def confirm_if_asked(person: Person, label: str) -> None:
    """Irreversible staff actions ask for confirmation first, saying what will happen."""
    button = person.page.get_by_role("button", name=re.compile("^Ja"))
    if button.count():
        person.check(label)
        button.click()
        person.page.wait_for_load_state()


def cents(text: str) -> int:
    """"€ -450,00" or "-€ 1.350,00" as cents."""
    clean = text.replace("\u00a0", " ").replace("€", "").replace(".", "").replace(" ", "").strip()
    negative = clean.startswith(("-", "−"))
    whole, _, part = clean.lstrip("-−").partition(",")
    value = int(whole or 0) * 100 + int(part or 0)
    return -value if negative else value


def next_month() -> dict[str, str]:
    """The environment of a command run on the first day of next month (libfaketime)."""
    import libfaketime

    today = dt.date.today()
    first = (today.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    library = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    return {"LD_PRELOAD": str(library), "FAKETIME": f"+{(first - today).days}d", "DONT_FAKE_MONOTONIC": "1"}
