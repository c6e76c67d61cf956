"""Tests for the public information site (service.sitegen).

One realistic site (two schemes, 100 providers plus one with hostile texts) is built
once per module; the file checks its content, then opens every page in Chromium.
"""

import csv
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import msgspec
import pytest

from service.sitegen import build_site, site_server, snapshot_from_json, snapshot_to_json, write_sources
from service.sitegen import text
from tests.browser import DESKTOP, PHONE, assert_accessible, chromium, guarded_page, serve_in_thread
from tests.site_snapshot import lottery_scheme, make_snapshot

ROOT = Path(__file__).resolve().parents[1]
SCHEME_PAGE = Path("regelingen/ondernemersvoucher-2025/index.html")


@dataclasses.dataclass(frozen=True)
class Built:
    out: Path
    work: Path
    seconds: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    out = build_site(make_snapshot(providers=100, hostile=True), base / "out",
                     work_dir=base / "work", site_url="http://127.0.0.1/")
    return Built(out=out, work=base / "work", seconds=time.monotonic() - started)


def read(built: Built, path: Path | str) -> str:
    return (built.out / path).read_text(encoding="utf-8")


def page_paths(built: Built) -> list[str]:
    """URL paths of every built page, Dutch and English ("" is the Dutch home page)."""
    folders = (index.parent.relative_to(built.out).as_posix() for index in built.out.rglob("index.html"))
    return sorted("" if folder == "." else folder + "/" for folder in folders)


# --- building ------------------------------------------------------------------------

def test_full_build_takes_seconds_not_minutes(built: Built) -> None:
    assert built.seconds < 30, f"build of 100 providers took {built.seconds:.1f} s"


def test_plain_mkdocs_build_of_the_hand_written_pages_passes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "verschijnen zodra de dienst de site bouwt" in (tmp_path / "out" / "index.html").read_text()


def test_generated_sources_stay_out_of_the_committed_site_folder(built: Built) -> None:
    assert (built.work / "src" / "regelingen" / "ondernemersvoucher-2025.en.md").is_file()
    assert not (ROOT / "site" / "regelingen" / "ondernemersvoucher-2025.md").exists()
    assert "<!-- snapshot:home -->" in (ROOT / "site" / "index.md").read_text()


def test_every_dutch_page_has_an_english_twin(built: Built) -> None:
    dutch = [p.relative_to(built.out) for p in built.out.rglob("index.html")
             if p.relative_to(built.out).parts[0] != "en"]
    assert len(dutch) == 9
    assert [p for p in dutch if not (built.out / "en" / p).is_file()] == []


def test_html_lang_matches_the_language(built: Built) -> None:
    for page in built.out.rglob("*.html"):
        relative = page.relative_to(built.out)
        expected = "en" if relative.parts[0] == "en" else "nl"
        assert re.search(r'<html lang="([a-z]+)"', page.read_text())[1] == expected, relative


def test_unsafe_or_duplicate_slugs_are_refused(tmp_path: Path) -> None:
    snapshot = make_snapshot(providers=2)
    evil = msgspec.structs.replace(snapshot, schemes=(msgspec.structs.replace(lottery_scheme(), slug="../x"),))
    with pytest.raises(ValueError, match="not url-safe"):
        write_sources(evil, tmp_path / "src")
    twice = msgspec.structs.replace(snapshot, providers=snapshot.providers[:1] * 2)
    with pytest.raises(ValueError, match="duplicate provider"):
        write_sources(twice, tmp_path / "src")


def test_the_committed_site_folder_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refusing"):
        write_sources(make_snapshot(providers=1), ROOT / "site")
    with pytest.raises(ValueError, match="refusing"):
        build_site(make_snapshot(providers=1), ROOT)


def test_snapshot_survives_json() -> None:
    snapshot = make_snapshot(providers=3)
    assert snapshot_from_json(snapshot_to_json(snapshot)) == snapshot


# --- content -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("cents", "lang", "expected"),
    [(40_500_000, "nl", "€\u00a0405.000,00"), (40_500_000, "en", "€405,000.00"), (5, "nl", "€\u00a00,05"),
     (123_456_789, "en", "€1,234,567.89")],
)
def test_money_is_written_the_local_way(cents: int, lang: str, expected: str) -> None:
    assert text.money(cents, lang) == expected


def test_postcodes_are_shown_as_ranges() -> None:
    assert text.postcode_ranges(("6813", "6811", "6812", "6820", "6822", "6821", "6830")) == "6811–6813, 6820–6822, 6830"


def test_scheme_page_shows_the_figures_with_their_moment(built: Built) -> None:
    nl = read(built, SCHEME_PAGE)
    for expected in ("€\u00a0405.000,00", "€\u00a0162.000,00", "€\u00a043.210,50", "€\u00a0243.000,00", "120 van de 300",
                     "Nog vrij: 180", "Stand op 14 maart 2025 om 14:05 uur", "6811–6846", "€\u00a01.350,00",
                     "10% van elke rekening", "binnen 6 weken", "14 026", "Postbus 9029, 6800 EL Arnhem"):
        assert expected in nl, expected
    en = read(built, Path("en") / SCHEME_PAGE)
    for expected in ("€405,000.00", "€162,000.00", "€43,210.50", "120 of the 300", "Still free: 180",
                     "Figures of 14 March 2025 at 14:05"):
        assert expected in en, expected


def test_scheme_page_has_accessible_charts_and_a_table(built: Built) -> None:
    nl = read(built, SCHEME_PAGE)
    assert nl.count('<svg class="vz-chart"') == 2
    assert '<title id="chart-ondernemersvoucher-2025-places-title">' in nl
    assert '<desc id="chart-ondernemersvoucher-2025-money-desc">' in nl
    assert '<th scope="row">14 maart 2025</th><td>120</td><td>0</td><td>€\u00a0162.000,00</td>' in nl
    assert '<th scope="row">1 maart 2025</th><td>24</td><td>onbekend</td>' in nl


def test_the_places_chart_shows_the_waiting_list_in_both_languages(built: Built) -> None:
    nl = read(built, SCHEME_PAGE)
    start = nl.index('<svg class="vz-chart"')
    places = nl[start:nl.index("</svg>", start)]
    assert places.count("<polyline") == 2 and ">Wachtlijst</text>" in places
    assert "Op 14 maart 2025 stonden 0 ondernemers op de wachtlijst." in places
    # Days without a known waiting list are left out of its line: 14 days, 11 of them known.
    waiting_line = re.findall(r'<polyline points="([^"]+)"', places)[1]
    assert len(waiting_line.split()) == 11
    en = read(built, Path("en") / SCHEME_PAGE)
    assert ">Waiting list</text>" in en and "entrepreneurs were on the waiting list" in en
    assert '<th scope="col">Waiting list</th>' in en and "<td>unknown</td>" in en


def test_lottery_scheme_publishes_its_seed_hash(built: Built) -> None:
    page = read(built, "regelingen/innovatievoucher-2026/index.html")
    assert lottery_scheme().lottery_seed_hash in page
    assert "loten" in page and "SHA-256" in page


def test_home_page_shows_the_open_scheme_and_one_action(built: Built) -> None:
    home = read(built, "index.html")
    assert 'href="https://vouchers.example.nl/regelingen/ondernemersvoucher-2025?lang=nl"' in home
    assert "Vraag de voucher aan" in home
    assert "Binnenkort open" in home
    english = read(built, "en/index.html")
    assert "Apply for the voucher" in english
    assert 'href="https://vouchers.example.nl/regelingen/ondernemersvoucher-2025?lang=en"' in english


def test_providers_have_anchors_offers_and_are_searchable(built: Built) -> None:
    page = read(built, "aanbieders/index.html")
    assert page.count('<h2 id="aanbieder-') == 100
    assert "€\u00a0450,00, 3 sessies van 1 uur" in page
    assert 'href="https://aanbieder1.example.nl/"' in page
    assert "Klarendal Advies 7" in read(built, "search/search_index.json")


def test_hostile_provider_texts_show_as_text(built: Built) -> None:
    for path in ("aanbieders/index.html", "en/aanbieders/index.html"):
        page = read(built, path)
        assert "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;" in page
        assert "[hier](javascript:alert(1)) voor **korting**" in page
        assert "&lt;b&gt;Vet&lt;/b&gt;" in page and "&lt;i&gt;Aanbod&lt;/i&gt;" in page
        assert "<script>alert" not in page and "<img src=x" not in page
        assert not re.search(r"href=\"\s*javascript", page, re.I)


def test_privacy_and_contact_pages_carry_the_contact_facts(built: Built) -> None:
    privacy = read(built, "privacy/index.html")
    assert 'href="mailto:fg@arnhem.nl"' in privacy and "Autoriteit Persoonsgegevens" in privacy
    assert "Bezwaarschriftencommissie" in read(built, "contact/index.html")
    assert 'href="tel:14026"' in read(built, "en/toegankelijkheid/index.html")


def test_site_and_service_share_the_logo_colours_and_contact_footer(built: Built) -> None:
    static = ROOT / "service" / "static"
    for name in ("logo.svg", "brand.css"):
        assert (built.out / "assets" / name).read_bytes() == (static / name).read_bytes(), name
    assert "--md-primary-fg-color: var(--brand)" in (static / "brand.css").read_text()
    assert "--accent: var(--brand)" in (static / "style.css").read_text()
    base = (ROOT / "service" / "templates" / "base.html").read_text()
    assert "/static/brand.css" in base and "/static/logo.svg" in base and "contact.email" in base
    for path in ("index.html", "en/index.html", "contact/index.html", SCHEME_PAGE):
        html = read(built, path)
        assert 'data-md-color-primary="custom"' in html and 'data-md-color-accent="custom"' in html, path
        assert re.search(r'<img src="[./]*assets/logo\.svg" alt=""', html), path
        assert re.search(r'href="[./]*assets/brand\.css"', html), path
        assert 'href="tel:14026"' in html and "mailto:ondernemersvoucher@arnhem.nl" in html, path


def test_the_site_asks_no_other_host_for_anything(built: Built) -> None:
    """Stylesheets, scripts, images, fonts and icons all come from the site itself."""
    for page in built.out.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        loads = re.findall(r'<(?:link|script|img|source|iframe)\b[^>]*\b(?:src|href)="([^"]+)"', html)
        # Built for http://127.0.0.1/ (its canonical and alternate links name that host).
        assert [url for url in loads if re.match(r"(https?:)?//", url)
                and not url.startswith("http://127.0.0.1/")] == [], page
    for sheet in built.out.rglob("*.css"):
        assert not re.search(r"url\(['\"]?(https?:)?//", sheet.read_text(encoding="utf-8")), sheet


# --- in the browser ------------------------------------------------------------------

@pytest.fixture(scope="module")
def site_url(built: Built):
    with serve_in_thread(site_server(built.out)) as url:
        yield url


@pytest.fixture(scope="module")
def browser_context():
    with chromium() as context:
        yield context


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "390px"])
def test_every_page_is_accessible_and_stays_local(built: Built, site_url: str, browser_context,
                                                  viewport: tuple[int, int]) -> None:
    # The missing page is one folder deep: the 404 page must still find its styles.
    with guarded_page(browser_context, viewport=viewport) as page:
        for path in [*page_paths(built), "no-such-page/"]:
            response = page.goto(site_url + path)
            assert response.status == (404 if path == "no-such-page/" else 200), path
            # axe skips closed <details>; open them so the figures table is checked too.
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            name = path.strip("/").replace("/", "-") or "home"
            assert_accessible(page, f"site/{name}-{viewport[0]}")


@pytest.mark.browser
def test_the_site_wears_the_services_red(site_url: str, browser_context) -> None:
    with guarded_page(browser_context) as page:
        page.goto(site_url)
        header = page.evaluate("getComputedStyle(document.querySelector('.md-header')).backgroundColor")
        button = page.evaluate("getComputedStyle(document.querySelector('.md-button--primary')).backgroundColor")
    assert header == button == "rgb(138, 15, 36)"  # Arnhem red, the service's --brand


@pytest.mark.browser
def test_search_finds_a_provider(site_url: str, browser_context) -> None:
    with guarded_page(browser_context) as page:
        page.goto(site_url + "aanbieders/")
        page.locator("input.md-search__input").fill("Klarendal")
        result = page.locator(".md-search-result__item").first
        result.wait_for(timeout=10_000)
        assert "Klarendal" in result.inner_text()


# --- open data -----------------------------------------------------------------------

OPEN_DATA_SCHEMES = ("ondernemersvoucher-2025", "innovatievoucher-2026")


def check_cell(field: dict, value: str) -> object:
    """One CSV cell against a Frictionless field: its type and constraints; returns the value."""
    constraints = field.get("constraints", {})
    if value == "":
        assert not constraints.get("required"), f"{field['name']} is required"
        return None
    kind = field["type"]
    if kind == "integer":
        assert re.fullmatch(r"-?\d+", value), (field["name"], value)
        parsed: object = int(value)
    elif kind == "date":
        parsed = datetime.date.fromisoformat(value)
    elif kind == "datetime":
        assert value.endswith("Z"), value
        parsed = datetime.datetime.fromisoformat(value)
    else:
        assert kind == "string", kind
        parsed = value
    if "minimum" in constraints:
        assert parsed >= constraints["minimum"], (field["name"], value)  # type: ignore[operator]
    if "enum" in constraints:
        assert value in constraints["enum"], (field["name"], value)
    return parsed


def test_open_data_files_are_at_stable_urls_and_validate_against_their_description(built: Built) -> None:
    data = built.out / "data"
    package = json.loads((data / "datapackage.json").read_text())
    assert package["licenses"][0]["name"] == "CC0-1.0"
    resources = {r["path"]: r for r in package["resources"]}
    expected = {f"{slug}/{table}.csv" for slug in OPEN_DATA_SCHEMES for table in ("figures", "history")}
    assert set(resources) == expected
    for path, resource in resources.items():
        fields = resource["schema"]["fields"]
        assert all(f["description"] and f["description_nl"] for f in fields), path
        with (data / path).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == [f["name"] for f in fields], path
        assert all(len(row) == len(fields) for row in rows), path
        parsed = [{f["name"]: check_cell(f, cell) for f, cell in zip(fields, row)} for row in rows[1:]]
        # The JSON twin has the same rows and conforms to its JSON Schema.
        table = path.split("/")[1].removesuffix(".csv")
        schema = json.loads((data / f"{table}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        document = json.loads((data / path.replace(".csv", ".json")).read_text())
        jsonschema.Draft202012Validator(schema).validate(document)
        assert len(document["rows"]) == len(parsed), path
        for from_json, from_csv in zip(document["rows"], parsed):
            assert {k: v for k, v in from_json.items()} == {
                k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, (datetime.date, datetime.datetime)) else v)
                for k, v in from_csv.items()}, path
    figures = (data / "ondernemersvoucher-2025" / "figures.csv").read_text().splitlines()
    assert figures[1] == "ondernemersvoucher-2025,2025-03-14T13:05:00Z,open,300,120,180,0,40500000,16200000,4321050,135000"
    history = (data / "ondernemersvoucher-2025" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 14 and history[-1].startswith("ondernemersvoucher-2025,2025-03-14,120,")
    assert (data / "innovatievoucher-2026" / "history.csv").read_text().splitlines() == [
        "scheme,day,places_used,waiting_list,committed_cents,redeemed_cents"]


def test_a_wrong_file_fails_the_validation(built: Built) -> None:
    """The check above would notice a wrong value: a negative count breaks the JSON Schema."""
    schema = json.loads((built.out / "data" / "history.schema.json").read_text())
    document = json.loads((built.out / "data" / "ondernemersvoucher-2025" / "history.json").read_text())
    document["rows"][0]["places_used"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
    field = {"name": "places_used", "type": "integer", "constraints": {"required": True, "minimum": 0}}
    with pytest.raises(AssertionError):
        check_cell(field, "")


def test_the_open_data_page_links_the_files_and_describes_every_column(built: Built) -> None:
    nl, en = read(built, "open-data/index.html"), read(built, "en/open-data/index.html")
    for slug in OPEN_DATA_SCHEMES:
        for name in ("figures.csv", "figures.json", "history.csv", "history.json"):
            assert f'href="../data/{slug}/{name}"' in nl and f'href="../../data/{slug}/{name}"' in en
    assert "Gebruikte plaatsen: ondernemers met een voucher." in nl and "Places used: entrepreneurs with a voucher." in en
    assert "Ondernemers op de wachtlijst" in nl and "Entrepreneurs on the waiting list" in en
    for page in (nl, en):
        assert 'href="https://creativecommons.org/publicdomain/zero/1.0/"' in page and "CC0 1.0" in page
    assert 'href="../../open-data/">Open data</a>' in read(built, SCHEME_PAGE)
