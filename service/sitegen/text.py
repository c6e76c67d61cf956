"""Escaping and Dutch/English formatting for the generated pages.

Everything that comes from the snapshot passes through here before it reaches
Markdown or HTML: provider texts are written by outsiders, so they must show as
text and never become markup or links.
"""

import datetime
import html
import re
import urllib.parse
import zoneinfo

from markupsafe import Markup

AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,78}[a-z0-9])?")

# Runs of ordinary white space (not the no-break space, which money relies on).
_SPACE = re.compile(r"[ \t\r\n\f\v]+")
# Characters Python-Markdown (with the tables extension) treats as syntax.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|])")

_MONTHS = {
    "nl": ("januari", "februari", "maart", "april", "mei", "juni", "juli",
           "augustus", "september", "oktober", "november", "december"),
    "en": ("January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December"),
}

CATEGORY_LABELS = {
    "nl": {"coaching": "coaching", "retraining": "bij- en omscholing",
           "financial_advice": "financieel advies"},
    "en": {"coaching": "coaching", "retraining": "retraining and further training",
           "financial_advice": "financial advice"},
}


def md(value: object) -> Markup:
    """Make any value safe as inline Markdown text: no tags, no links, no emphasis.

    The result is Markup, meaning "ready to print": templates print it unchanged."""
    text = _SPACE.sub(" ", str(value)).strip()
    return Markup(_MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)))


def h(value: object) -> Markup:
    """Escape a value for a raw HTML block, where Markdown does not apply."""
    return Markup(html.escape(str(value), quote=True))


def paragraphs(value: str) -> Markup:
    """Turn free text into escaped <p> elements with no blank lines between them,
    so that the result stays one raw HTML block for Markdown."""
    parts = [_SPACE.sub(" ", p).strip() for p in re.split(r"\n\s*\n", value)]
    return Markup("".join(f"<p>{html.escape(p)}</p>" for p in parts if p))


def safe_url(url: str | None) -> str | None:
    """Return the URL with risky characters percent-encoded, or None when it is not
    a plain web address (a javascript: link in a provider's website must not work)."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in ("https", "http") or not parts.netloc:
        return None
    return urllib.parse.quote(parts.geturl(), safe=":/?#@!$&;=%,~+-._")


def link(text: object, url: str | None) -> Markup:
    """A Markdown link, or just the escaped text when the URL is not acceptable."""
    target = safe_url(url)
    return Markup(f"[{md(text)}]({target})") if target else md(text)


def button(text: object, url: str | None) -> Markup:
    """The page's call to action: a link styled as a button (plain text if the URL
    is not usable, so a bad configuration shows instead of linking somewhere odd)."""
    target = safe_url(url)
    if not target:
        return md(text)
    return Markup(f"[{md(text)}]({target}){{ .md-button .md-button--primary }}")


def email_link(address: str) -> Markup:
    """A mailto link for a plain address; anything odd is shown as text only."""
    if re.fullmatch(r"[^@\s<>()\[\]\\\"',;:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", address):
        return Markup(f"[{md(address)}](mailto:{address})")
    return md(address)


def phone_link(number: str) -> Markup:
    """A tel: link so that people on a phone can call with one tap."""
    digits = re.sub(r"[^\d+]", "", number)
    return Markup(f"[{md(number)}](tel:{digits})") if digits else md(number)


def lines(value: str) -> Markup:
    """An address written over several lines, as one line for running text."""
    return md(", ".join(part.strip() for part in value.splitlines() if part.strip()))


def number(value: int, lang: str) -> str:
    """1.000 in Dutch, 1,000 in English."""
    grouped = f"{value:,}"
    return grouped.replace(",", ".") if lang == "nl" else grouped


def money(cents: int, lang: str, *, whole: bool = False) -> str:
    """€ 405.000,00 in Dutch and €405,000.00 in English (whole=True drops the cents).

    The Dutch space after the euro sign is a no-break space (U+00A0), so that a
    line never ends with a lone "€"."""
    euros, rest = divmod(abs(cents), 100)
    sign = "-" if cents < 0 else ""
    if lang == "nl":
        amount = number(euros, lang) + ("" if whole else f",{rest:02d}")
        return f"{sign}€\u00a0{amount}"
    amount = number(euros, lang) + ("" if whole else f".{rest:02d}")
    return f"{sign}€{amount}"


def day(value: datetime.date, lang: str) -> str:
    """3 maart 2025 / 3 March 2025."""
    return f"{value.day} {_MONTHS[lang][value.month - 1]} {value.year}"


def moment(value: datetime.datetime, lang: str) -> str:
    """A date and time in Arnhem's own time zone; naive times are taken as local."""
    if value.tzinfo is not None:
        value = value.astimezone(AMSTERDAM)
    joiner = "om" if lang == "nl" else "at"
    suffix = " uur" if lang == "nl" else ""
    return f"{day(value, lang)} {joiner} {value:%H:%M}{suffix}"


def category(code: str, lang: str) -> str:
    """The reader's word for a kind of spend; unknown codes are shown as they are."""
    return CATEGORY_LABELS[lang].get(code, code)


def categories(codes: tuple[str, ...], lang: str) -> str:
    """A readable list: 'coaching, bij- en omscholing en financieel advies'."""
    words = [category(c, lang) for c in codes]
    if len(words) < 2:
        return "".join(words)
    conjunction = " en " if lang == "nl" else " and "
    return ", ".join(words[:-1]) + conjunction + words[-1]


def postcode_ranges(postcodes: tuple[str, ...]) -> str:
    """Compress a long list of 4-digit areas into ranges: '6811–6846, 6851'."""
    numbers = sorted({int(p) for p in postcodes if re.fullmatch(r"\d{4}", p.strip())})
    others = sorted({p.strip() for p in postcodes if not re.fullmatch(r"\d{4}", p.strip())})
    ranges: list[list[int]] = []
    for n in numbers:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    parts = [str(a) if a == b else f"{a}–{b}" for a, b in ranges]
    return ", ".join(parts + others)


def check_slug(slug: str, what: str) -> str:
    """Slugs become file names and anchors, so refuse anything that is not plain."""
    if not SLUG.fullmatch(slug):
        raise ValueError(f"{what} slug {slug!r} is not url-safe (use a-z, 0-9 and -)")
    return slug
