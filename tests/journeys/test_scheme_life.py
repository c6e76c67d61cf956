"""The life of a scheme through the user interfaces only: people in a browser (the coach and the
entrepreneurs at a phone's width, staff at a desktop's), the operator at the command line, mail
read from the loopback SMTP server the service sends to. On SQLite and on PostgreSQL.

axe-core (WCAG 2.1 A and AA) checks every page a person comes to; a step that leaves a page
unchecked fails. At the end `vouchers check` and `vouchers audit verify` find nothing wrong.
"""

from __future__ import annotations

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
        baker_code = apply_from_site(journey, baker, site, lang="nl", kvk="30000001", company="Bakkerij Het Zuiden",
                                     employees="3", postcode="6811 AB", name="Fatima el Amrani", email=BAKER)

    with journey.step("another entrepreneur applies in English and confirms by mail"):
        translator = journey.person("translator", PHONE)
        apply_from_site(journey, translator, site, lang="en", kvk="30000002", company="Translation Bureau Sonsbeek",
                        employees="2", postcode="6814 AH", name="Pieter de Vries", email=TRANSLATOR)

    with journey.step("staff sign in with password and code and see both vouchers on the dashboard"):
        sign_in_staff(journey, staff, secret)
        staff.click("link", "Ondernemersvoucher Arnhem")
        staff.page.wait_for_url("**/beheer/regelingen/arnhem-2021")
        staff.check("staff-dashboard")
        assert baker_code  # used by the coach later in the journey


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

    confirm = journey.mail(email, "Bevestig uw e-mailadres" if dutch else "Confirm your e-mail address")
    person.goto(journey.link(confirm, "/aanvraag/bevestigen/"))
    person.check(f"{person.name}-confirm")
    person.click("button", "Mijn e-mailadres bevestigen" if dutch else "Confirm my e-mail address")
    person.page.get_by_role("heading", name="Uw vouchercode" if dutch else "Your voucher code").wait_for()
    person.check(f"{person.name}-my-voucher")
    code = person.page.locator(".code-large").inner_text().strip()
    issued = journey.mail(email, "Uw voucher voor" if dutch else "Your voucher for")
    assert code in mail_body(issued)
    return code
