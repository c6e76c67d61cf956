"""One translation mechanism for every page, mail and error: gettext catalogs read with Babel.

Message ids are English; ``locale/nl/LC_MESSAGES/*.po`` hold the Dutch text, which is
the default. The current language lives in a context variable, set per request by the web layer
and around mail rendering with :func:`use_locale`, so Jinja's i18n extension and Python code read
the same one.
"""

from __future__ import annotations

import datetime as dt
import functools
import gettext as _gettext
import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.numbers import format_percent as _format_percent

from . import validity

__all__ = (
    "DEFAULT_LOCALE",
    "LOCALES",
    "current_locale",
    "format_day",
    "format_last_day",
    "format_moment",
    "format_money",
    "format_month",
    "format_number",
    "format_percent",
    "localised",
    "gettext",
    "negotiate",
    "ngettext",
    "use_locale",
)

LOCALES = ("nl", "en")
DEFAULT_LOCALE = "nl"
LOCALE_DIR = Path(__file__).parent / "locale"
_BABEL_LOCALE = {"nl": "nl_NL", "en": "en_GB"}
_TIMEZONE = "Europe/Amsterdam"

_current: ContextVar[str] = ContextVar("locale", default=DEFAULT_LOCALE)


def _load(locale: str) -> _gettext.NullTranslations:
    """Merge every ``*.po`` file of a language: each part of the service keeps its own file
    (``core.po``, ``coach.po``, …), so parts can be translated without touching each other."""
    translations: _gettext.NullTranslations = _gettext.NullTranslations()
    for po in sorted((LOCALE_DIR / locale / "LC_MESSAGES").glob("*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale=locale)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        part = _gettext.GNUTranslations(buffer)
        part.add_fallback(translations)
        translations = part
    return translations


_TRANSLATIONS = {locale: _load(locale) for locale in LOCALES}


def current_locale() -> str:
    return _current.get()


@contextmanager
def use_locale(locale: str) -> Iterator[None]:
    token = _current.set(locale if locale in LOCALES else DEFAULT_LOCALE)
    try:
        yield
    finally:
        _current.reset(token)


def set_locale(locale: str) -> None:
    """Set the language for the rest of this task (one request)."""
    _current.set(locale if locale in LOCALES else DEFAULT_LOCALE)


def gettext(message: str) -> str:
    return _TRANSLATIONS[_current.get()].gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _TRANSLATIONS[_current.get()].ngettext(singular, plural, n)


def negotiate(accept_language: str | None) -> str:
    """Pick nl or en from an Accept-Language header; Dutch when nothing fits."""
    if not accept_language:
        return DEFAULT_LOCALE
    ranked = []
    for part in accept_language.split(","):
        lang, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            continue
        ranked.append((weight, lang.strip().lower()[:2]))
    for _weight, lang in sorted(ranked, reverse=True):
        if lang in LOCALES:
            return lang
    return DEFAULT_LOCALE


def format_money(cents: int) -> str:
    """``€ 1.350,00`` in Dutch, ``€1,350.00`` in English; never through a float."""
    return _money(cents, _current.get())


@functools.lru_cache(maxsize=4096)
def _money(cents: int, locale: str) -> str:
    # Babel takes about 0.1 ms a call, and pages and mails show the same few amounts again and again.
    return format_currency(Decimal(cents) / 100, "EUR", locale=_BABEL_LOCALE[locale])


def _parse(value: dt.date | dt.datetime | str) -> dt.date | dt.datetime:
    # Mail parameters are stored as JSON, so their dates arrive as ISO text.
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value) if "T" in value else dt.date.fromisoformat(value)
    return value


def format_day(day: dt.date | dt.datetime | str) -> str:
    """A day in the reader's language (``31 december 2027``); a moment counts in Dutch time."""
    day = _parse(day)
    if isinstance(day, dt.datetime):
        day = day.astimezone(ZoneInfo(_TIMEZONE)).date()
    return format_date(day, format="long", locale=_BABEL_LOCALE[_current.get()])


def format_last_day(expires_at: dt.datetime | dt.date | str) -> str:
    """The last day a voucher ending at ``expires_at`` can be used (``service.validity``); a date
    is taken to be that last day already."""
    end = _parse(expires_at)
    return format_day(validity.last_day(end) if isinstance(end, dt.datetime) else end)


def format_moment(moment: dt.datetime) -> str:
    return format_datetime(moment, format="medium", tzinfo=_TIMEZONE, locale=_BABEL_LOCALE[_current.get()])


def format_month(day: dt.date) -> str:
    """``december 2026`` / ``December 2026``: the standalone month name, as a heading uses it."""
    return format_date(day, format="LLLL yyyy", locale=_BABEL_LOCALE[_current.get()])


def format_number(value: int) -> str:
    """``1.234`` in Dutch, ``1,234`` in English."""
    return format_decimal(value, locale=_BABEL_LOCALE[_current.get()])


def format_percent(percent: float) -> str:
    """A share given in percent, with one decimal: ``12,5%`` in Dutch, ``12.5%`` in English."""
    return _format_percent(percent / 100, format="#,##0.0%", locale=_BABEL_LOCALE[_current.get()])


def localised(dutch: str, english: str | None) -> str:
    """A name kept in both languages (a scheme's), in the reader's; the Dutch one when there is no English."""
    return english if _current.get() == "en" and english else dutch
