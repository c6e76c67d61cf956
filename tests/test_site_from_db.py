"""The site built from a database full of personal data carries none of it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from service.db import run_in_transaction
from service.models import Offer
from service.sitegen import build_site
from service.sitegen.collect import collect_snapshot
from service.sitegen.daily import record_day
from tests.helpers import make_provider, make_scheme, make_voucher, reload
from service.models import Voucher
from service import vouchers


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_site_from_the_database_has_figures_and_no_personal_data(rt, tmp_path: Path) -> None:
    scheme = await make_scheme(rt)
    personal: list[str] = []
    codes = []
    for n in range(5):
        voucher, code = await make_voucher(rt, scheme, company_name=f"Geheimbedrijf{n} BV", contact_name=f"Persoon{n} Achternaam",
                                           email=f"geheim{n}@voorbeeld.nl")
        personal += [f"Geheimbedrijf{n}", f"Persoon{n}", f"geheim{n}@voorbeeld.nl", voucher.kvk_number]
        codes.append((voucher, code))
    provider, _ = await make_provider(rt, scheme, name="Zichtbare Coach")
    hidden, _ = await make_provider(rt, scheme, name="Nog Niet Goedgekeurd", approve=False)

    async def add_offers(session):
        session.add(Offer(provider_id=provider.id, scheme_id=scheme.id, title="Loopbaantraject", category="coaching",
                          price_cents=95000, duration="5 sessies", description="Vijf gesprekken"))
        session.add(Offer(provider_id=provider.id, scheme_id=scheme.id, title="Verborgen aanbod", category="coaching",
                          price_cents=100, duration="-", description="-", hidden_at=dt.datetime.now(dt.UTC),
                          hidden_by="municipality"))

    await run_in_transaction(rt.sessionmaker, add_offers)
    voucher, code = codes[0]

    async def redeem(session):
        fresh = await session.get_one(Voucher, voucher.id)
        await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name="Zichtbare Coach",
                              category="coaching", invoice_cents=25000, reference="F-PRIVATE-REF",
                              session_date=None, recorded_by="t")

    await run_in_transaction(rt.sessionmaker, redeem)
    assert (await reload(rt, Voucher, voucher.id)).redeemed_cents == 25000
    personal += [c for _, c in codes] + [c.replace("-", "") for _, c in codes] + ["F-PRIVATE-REF"]

    await record_day(rt.sessionmaker)
    async with rt.sessionmaker() as session:
        snapshot = await collect_snapshot(session, service_url="https://vouchers.example")
    [facts] = snapshot.schemes
    assert (facts.places_used, facts.committed_cents, facts.redeemed_cents) == (5, 675000, 25000)
    assert facts.history[-1].places_used == 5 and facts.history[-1].redeemed_cents == 25000
    assert [p.name for p in snapshot.providers] == ["Zichtbare Coach"]
    assert [o.title for o in snapshot.providers[0].offers] == ["Loopbaantraject"]

    out = build_site(snapshot, tmp_path / "site")
    checked = [p for p in out.rglob("*") if p.is_file()
               and p.suffix in (".html", ".json", ".xml", ".txt", ".svg", ".js", ".csv")]
    # The open data is guarded too: the figures and the history of the scheme, as CSV and JSON.
    assert {f"data/{scheme.slug}/{name}" for name in ("figures.csv", "figures.json", "history.csv", "history.json")} \
        <= {p.relative_to(out).as_posix() for p in checked}
    text = "\n".join(p.read_text(errors="replace") for p in checked)
    assert "Zichtbare Coach" in text and "Loopbaantraject" in text
    assert "Nog Niet Goedgekeurd" not in text and "Verborgen aanbod" not in text
    leaked = [item for item in personal if item in text]
    assert leaked == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_every_link_from_the_site_into_the_service_opens_in_the_page_language(rt, client, tmp_path: Path) -> None:
    """Built from the database, the site's links into the service all answer, and a Dutch page's
    button opens the Dutch form even for a browser that asks for English (and the other way round)."""
    import re

    scheme = await make_scheme(rt)
    service_url = str(client.base_url).rstrip("/")
    async with rt.sessionmaker() as session:
        snapshot = await collect_snapshot(session, service_url=service_url)
    out = build_site(snapshot, tmp_path / "site")
    found: dict[str, str] = {}
    for page in out.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        page_lang = re.search(r'<html lang="(\w+)"', html)[1]  # type: ignore[index]
        for href in re.findall(r'href="([^"]+)"', html):
            if href.startswith(service_url):
                found[href.replace("&amp;", "&")] = page_lang
    assert any(f"/regelingen/{scheme.slug}" in href for href in found)
    for href, page_lang in found.items():
        other = "en" if page_lang == "nl" else "nl"
        response = await client.get(href.removeprefix(service_url), headers={"Accept-Language": other})
        assert response.status_code == 200, href
        assert f'<html lang="{page_lang}">' in response.text, href
