"""Applying to a scheme that demands eHerkenning, and "my voucher" through the same login, in real
browsers against `vouchers serve` and the development broker in its own process, on SQLite and on
PostgreSQL. A colleague of the firm signs in and sees the firm's voucher; a bad answer from the
broker gives a page that says what to do; staff sign in through the municipality's provider.
axe-core checks every page a person comes to, the broker's page too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import msgspec
import pytest

from service.settings import Settings
from tests.browser import DESKTOP, PHONE, require_browser
from tests.conftest import ROOT, BrokerProcess, SmtpSink, free_port
from tests.journeys.conftest import REGISTER
from tests.journeys.harness import Journey, Person, Service

pytestmark = pytest.mark.browser

BAKER = "info@bakkerijhetzuiden.example"


@pytest.fixture
def journey(settings: Settings, smtp_server: SmtpSink, tmp_path: Path) -> Iterator[Journey]:
    require_browser()
    from playwright.sync_api import sync_playwright

    register = tmp_path / "kvk.csv"
    register.write_text(REGISTER, encoding="utf-8")
    port = free_port()
    with ExitStack() as outer:
        broker = BrokerProcess(f"http://127.0.0.1:{port}", extra=["--register", str(register)])
        outer.callback(broker.stop)
        settings = broker.settings(msgspec.structs.replace(
            settings, base_url=f"http://127.0.0.1:{port}", registry_file=str(register), background_tasks=True,
            outbox_interval_seconds=0.3, sweep_interval_seconds=1.0), oidc_timeout_seconds=5.0)
        workdir = tmp_path / "operator"
        workdir.mkdir()
        service = Service(settings, port, workdir)
        with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="vouchers-journey-") as profiles, \
                ExitStack() as stack:
            stack.callback(service.stop)
            yield Journey(service, smtp_server, playwright, stack, Path(profiles))


def scheme_file(tmp_path: Path) -> Path:
    """The Arnhem scheme as a second scheme that demands eHerkenning at EH2+."""
    text = (ROOT / "schemes" / "arnhem-2021.toml").read_text(encoding="utf-8")
    text = text.replace('slug = "arnhem-2021"', 'slug = "arnhem-ehk"').replace(
        'validity_days = 180', 'validity_days = 180\nproof = "eherkenning"\neherkenning_level = "EH2+"')
    path = tmp_path / "arnhem-ehk.toml"
    path.write_text(text, encoding="utf-8")
    return path


def at_broker(person: Person, label: str, *, kvk: str = "", level: str = "", person_choice: str = "",
              fault: str = "", staff: dict[str, str] | None = None) -> None:
    """On the development broker's page, in Dutch as the service asked (checked with axe too):
    choose and sign in."""
    person.page.get_by_role("heading", name="Inloggen bij").wait_for()
    assert "Ontwikkelmakelaar" in person.text()
    person.check(f"{person.name}-broker-{label}")
    page = person.page
    if kvk:
        page.get_by_label("Bedrijf (KvK-nummer").select_option(kvk)
    if level:
        page.get_by_label("Betrouwbaarheidsniveau").select_option(level)
    if person_choice:
        page.get_by_label("Handelende persoon").select_option(person_choice)
    for field, value in (staff or {}).items():
        page.get_by_label(field).fill(value)
    if fault:
        page.get_by_label("Gedrag van de makelaar").select_option(fault)
    person.click("button", "Inloggen", exact=True)
    page.wait_for_url(person.service_url + "/**")


def test_applying_and_my_voucher_with_eherkenning(journey: Journey, tmp_path: Path) -> None:
    service = journey.service

    with journey.step("the operator migrates, starts the service and loads a scheme that demands eHerkenning"):
        service.cli("db", "upgrade")
        service.start()
        assert "arnhem-ehk" in service.cli("scheme", "load", str(scheme_file(tmp_path))).stdout

    with journey.step("the baker signs in with eHerkenning at the broker and applies; the KvK number is the login's"):
        baker = journey.person("baker", PHONE)
        baker.goto("/regelingen/arnhem-ehk/aanvragen?lang=nl")
        baker.page.get_by_role("heading", name="Eerst inloggen met eHerkenning").wait_for()
        baker.check("baker-sign-in-first")
        assert baker.page.get_by_label("KvK-nummer").count() == 0
        baker.click("button", "Inloggen met eHerkenning")
        at_broker(baker, "apply", kvk="30000001", level="EH3", person_choice="a")
        baker.page.wait_for_url("**/regelingen/arnhem-ehk/aanvragen")
        baker.check("baker-form-with-login")
        assert "30000001" in baker.text() and "niveau EH3" in baker.text()
        assert baker.page.get_by_label("KvK-nummer", exact=True).count() == 0
        for label, value in (("Bedrijfsnaam", "Bakkerij Het Zuiden"),
                             ("Hoeveel mensen werken er in uw bedrijf?", "3"),
                             ("Postcode van uw bedrijf", "6811 AB"), ("Uw naam", "Fatima el Amrani"),
                             ("E-mailadres", BAKER), ("Waarvoor wilt u de voucher gebruiken?", "Coaching")):
            baker.fill(label, value)
        baker.click("button", "Aanvraag versturen")
        baker.page.wait_for_url("**/mijn-voucher")
        baker.check("baker-my-voucher")
        assert "Ondernemersvoucher Arnhem" in baker.text()
        journey.mail(BAKER, "voucher")

    with journey.step("a colleague of the firm signs in to my voucher with eHerkenning and sees the firm's voucher"):
        colleague = journey.person("colleague", PHONE)
        colleague.goto("/mijn-voucher?lang=nl")
        colleague.check("colleague-sign-in")
        colleague.click("button", "Inloggen met eHerkenning")
        at_broker(colleague, "voucher", kvk="30000001", level="EH3", person_choice="b")
        colleague.page.wait_for_url("**/mijn-voucher")
        colleague.check("colleague-my-voucher")
        assert "Ondernemersvoucher Arnhem" in colleague.text()
        assert colleague.page.locator("img[src*='/mijn-voucher/qr']").count() >= 1

    with journey.step("the colleague signs out, at the broker too, and is back on the sign-in page"):
        colleague.click("button", "Uitloggen", exact=True)
        colleague.page.wait_for_url("**/mijn-voucher?uit=1")
        colleague.page.get_by_text("U bent uitgelogd.").wait_for()
        colleague.check("colleague-signed-out")

    with journey.step("a broker that sends an expired token: the page says what to do, nothing is recorded"):
        colleague.click("button", "Inloggen met eHerkenning")
        at_broker(colleague, "expired", kvk="30000001", fault="expired")
        colleague.page.get_by_role("heading", name="Inloggen met eHerkenning is niet gelukt").wait_for()
        colleague.check("colleague-broker-refused")
        assert "Er is niets vastgelegd" in colleague.text()

    with journey.step("staff sign in through the municipality's provider, with the role of their group"):
        staff = journey.person("staff", DESKTOP)
        staff.goto("/beheer?lang=nl")
        staff.page.wait_for_url("**/beheer/inloggen**")
        staff.check("staff-login")
        staff.click("button", "Inloggen met uw account van de gemeente")
        at_broker(staff, "staff", staff={"E-mailadres": "sanne@arnhem.example", "Naam": "Sanne de Boer",
                                         "Groepen (gescheiden door komma's)": "vouchers-beheerders"})
        staff.page.wait_for_url("**/beheer")
        staff.check("staff-home")
        staff.click("link", "Ondernemersvoucher Arnhem", exact=True)
        staff.check("staff-dashboard")

    with journey.step("the books agree"):
        assert service.cli("check").returncode == 0
        assert service.cli("audit", "verify").returncode == 0
