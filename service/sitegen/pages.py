"""Write the site's Markdown sources for one snapshot into a work folder.

The hand-written pages in site/ hold marked blocks:

    <!-- snapshot:contact -->
    placeholder text for a plain `mkdocs build`
    <!-- /snapshot:contact -->

In the work copy each block is replaced by the template `<lang>/<name>.md` from
service/site_templates/, rendered with the snapshot. Scheme pages are generated
whole. The committed site/ folder is only ever read.
"""

import functools
import re
import shutil
from pathlib import Path

import jinja2
from markupsafe import Markup

from .. import links
from . import chart, opendata, text
from .snapshot import ProviderFacts, PublicSnapshot, SchemeFacts

ROOT = Path(__file__).resolve().parents[2]
HAND_WRITTEN = ROOT / "site"
TEMPLATES = ROOT / "service" / "site_templates"
# The service's own logo and colours, so that the site and the service look like one municipality's.
BRAND_FILES = (ROOT / "service" / "static" / "logo.svg", ROOT / "service" / "static" / "brand.css")
LANGUAGES = ("nl", "en")
BLOCK = re.compile(r"<!-- snapshot:(?P<name>[a-z-]+) -->\n.*?<!-- /snapshot:(?P=name) -->", re.S)

CHART_TEXT = {
    "nl": {
        "places_title": "Gebruikte plaatsen van de {max} plaatsen",
        "places_desc": "Van {first} tot en met {last}. Op {last} waren {used} van de {max} plaatsen gebruikt.",
        "waiting_desc": " Op {last} stonden {waiting} ondernemers op de wachtlijst.",
        "places_line": "Gebruikte plaatsen",
        "waiting_line": "Wachtlijst",
        "money_title": "Toegezegd en verzilverd geld, van het budget van {budget}",
        "money_desc": "Van {first} tot en met {last}. Op {last} was {committed} toegezegd "
                      "en {redeemed} verzilverd, van het budget van {budget}.",
        "committed": "Toegezegd",
        "redeemed": "Verzilverd",
    },
    "en": {
        "places_title": "Places used out of {max} places",
        "places_desc": "From {first} to {last}. On {last}, {used} of the {max} places were used.",
        "waiting_desc": " On {last}, {waiting} entrepreneurs were on the waiting list.",
        "places_line": "Places used",
        "waiting_line": "Waiting list",
        "money_title": "Money committed and redeemed, out of the budget of {budget}",
        "money_desc": "From {first} to {last}. On {last}, {committed} was committed "
                      "and {redeemed} redeemed, out of the budget of {budget}.",
        "committed": "Committed",
        "redeemed": "Redeemed",
    },
}


def write_sources(snapshot: PublicSnapshot, src_dir: Path) -> None:
    """Copy site/ to src_dir (replacing what was there) and fill in the snapshot."""
    _check_slugs(snapshot)
    src_dir = Path(src_dir).resolve()
    refuse_to_touch(src_dir)
    if src_dir.exists():
        shutil.rmtree(src_dir)
    shutil.copytree(HAND_WRITTEN, src_dir)
    for brand_file in BRAND_FILES:
        shutil.copyfile(brand_file, src_dir / "assets" / brand_file.name)
    for page in src_dir.rglob("*.md"):
        lang = "en" if page.name.endswith(".en.md") else "nl"
        source = page.read_text(encoding="utf-8")
        filled = BLOCK.sub(lambda m: _render(f"{lang}/{m['name']}.md", snapshot, lang), source)
        if "<!-- snapshot:" in filled:
            raise ValueError(f"{page.relative_to(src_dir)}: a snapshot block is not closed as "
                             "<!-- /snapshot:NAME --> on its own line")
        page.write_text(filled, encoding="utf-8")
    for scheme in snapshot.schemes:
        for lang in LANGUAGES:
            suffix = ".en.md" if lang == "en" else ".md"
            page = src_dir / "regelingen" / f"{scheme.slug}{suffix}"
            page.write_text(_render(f"{lang}/scheme.md", snapshot, lang, scheme=scheme), encoding="utf-8")
    opendata.write_open_data(snapshot, src_dir)


def refuse_to_touch(folder: Path) -> None:
    """Generated files must never land in the committed site/ folder, and a folder
    that is emptied before a build must not hold the project itself."""
    if folder == HAND_WRITTEN or HAND_WRITTEN in folder.parents or folder in ROOT.parents or folder == ROOT:
        raise ValueError(f"refusing to write generated files into {folder}")


def scheme_pages(snapshot: PublicSnapshot) -> list[str]:
    """The generated scheme pages, as paths for the mkdocs nav."""
    return [f"regelingen/{s.slug}.md" for s in snapshot.schemes]


def _check_slugs(snapshot: PublicSnapshot) -> None:
    """Slugs become file names and anchors: refuse unsafe or duplicate ones early."""
    for kind, items in (("scheme", snapshot.schemes), ("provider", snapshot.providers)):
        slugs = [text.check_slug(item.slug, kind) for item in items]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"duplicate {kind} slugs in snapshot")
    if "index" in {s.slug for s in snapshot.schemes}:
        raise ValueError("scheme slug 'index' would replace the schemes overview")


def _render(template: str, snapshot: PublicSnapshot, lang: str, **extra: object) -> str:
    context = {"snapshot": snapshot, "taken_at": text.moment(snapshot.taken_at, lang), **extra}
    return _environment(lang).get_template(template).render(context).strip() + "\n"


def _finalize(value: object) -> object:
    """Every value printed in a template is escaped as Markdown text unless it was
    already made safe (Markup), so forgetting a filter cannot inject markup."""
    return value if isinstance(value, Markup) else text.md(value)


@functools.cache
def _environment(lang: str) -> jinja2.Environment:
    """A Jinja environment whose filters format for one language."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=functools.partial(text.money, lang=lang),
        number=functools.partial(text.number, lang=lang),
        day=functools.partial(text.day, lang=lang),
        moment=functools.partial(text.moment, lang=lang),
        category=functools.partial(text.category, lang=lang),
        categories=functools.partial(text.categories, lang=lang),
        postcodes=text.postcode_ranges,
        h=text.h,
        paragraphs=text.paragraphs,
    )
    env.globals.update(
        link=text.link,
        button=text.button,
        # The service would otherwise pick the browser's language: a Dutch page leads to the Dutch form.
        in_language=functools.partial(links.with_lang, lang=lang),
        email_link=text.email_link,
        phone_link=text.phone_link,
        lines=text.lines,
        scheme_name=lambda scheme: scheme.name_en if lang == "en" else scheme.name,
        scheme_summary=lambda scheme: scheme.summary_en if lang == "en" else scheme.summary,
        scheme_names=functools.partial(_scheme_names, lang=lang),
        providers_of=_providers_of,
        sorted_providers=_sorted_providers,
        charts=functools.partial(_charts, lang=lang),
        open_data_tables=opendata.TABLES,
        open_data_licence=opendata.LICENCE,
    )
    return env


def _scheme_names(slugs: tuple[str, ...], snapshot: PublicSnapshot, lang: str) -> str:
    """Schemes named in the reader's language, for providers and offers that refer to
    them by slug (an unknown slug is shown as it is)."""
    names = {s.slug: s.name_en if lang == "en" else s.name for s in snapshot.schemes}
    return ", ".join(names.get(slug, slug) for slug in slugs)


def _sorted_providers(snapshot: PublicSnapshot) -> list[ProviderFacts]:
    return sorted(snapshot.providers, key=lambda p: (p.name.casefold(), p.slug))


def _providers_of(snapshot: PublicSnapshot, scheme: SchemeFacts) -> list[ProviderFacts]:
    return [p for p in _sorted_providers(snapshot) if scheme.slug in p.scheme_slugs]


def _charts(scheme: SchemeFacts, lang: str) -> Markup:
    """Two charts for a scheme page: places against the cap, money against the budget."""
    if not scheme.history:
        return Markup("")
    words = CHART_TEXT[lang]
    days = [point.day for point in scheme.history]
    last = scheme.history[-1]
    facts = {
        "first": text.day(days[0], lang), "last": text.day(days[-1], lang),
        "max": text.number(scheme.max_places, lang), "used": text.number(last.places_used, lang),
        "budget": text.money(scheme.budget_cents, lang, whole=True),
        "committed": text.money(last.committed_cents, lang),
        "redeemed": text.money(last.redeemed_cents, lang),
    }
    waiting = [p.waiting_list for p in scheme.history]
    if last.waiting_list is not None:
        facts["waiting"] = text.number(last.waiting_list, lang)
    common = {"days": days, "label_day": functools.partial(text.day, lang=lang)}
    places = chart.line_chart(
        chart_id=f"chart-{scheme.slug}-places",
        title=words["places_title"].format(**facts),
        desc=words["places_desc"].format(**facts) + words["waiting_desc"].format(**facts) if "waiting" in facts
        else words["places_desc"].format(**facts),
        # The waiting list shares the scale of the places: both count entrepreneurs.
        series=[chart.Series(words["places_line"], [p.places_used for p in scheme.history]),
                *([chart.Series(words["waiting_line"], waiting)] if any(w is not None for w in waiting) else [])],
        maximum=scheme.max_places,
        label_value=functools.partial(text.number, lang=lang),
        **common,
    )
    money = chart.line_chart(
        chart_id=f"chart-{scheme.slug}-money",
        title=words["money_title"].format(**facts),
        desc=words["money_desc"].format(**facts),
        series=[
            chart.Series(words["committed"], [p.committed_cents for p in scheme.history]),
            chart.Series(words["redeemed"], [p.redeemed_cents for p in scheme.history]),
        ],
        maximum=scheme.budget_cents,
        label_value=lambda cents: text.money(cents, lang, whole=True),
        **common,
    )
    return Markup(f'<figure class="vz-figure">\n{places}\n</figure>\n\n'
                  f'<figure class="vz-figure">\n{money}\n</figure>')
