"""Every message in the code and templates has Dutch text.

The messages are extracted in-process with Babel, using the mapping in ``babel.cfg`` (the same one
``pybabel extract -F babel.cfg`` uses), and checked against all ``service/locale/nl/LC_MESSAGES/*.po``
files merged, the way :mod:`service.i18n` loads them. When a check fails, the failure lists the
messages with the ``.po`` file to add them to and entries ready to paste.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
MAPPING = ROOT / "babel.cfg"
PO_DIR = ROOT / "service" / "locale" / "nl" / "LC_MESSAGES"
PO_REL = PO_DIR.relative_to(ROOT).as_posix()
#: ``_``, ``gettext``, ``ngettext`` … plus ``N_`` (marks a message without translating it), as ``-k N_``.
KEYWORDS = {**DEFAULT_KEYWORDS, "N_": None}
NL_PLURALS = 2
#: Which part's file a source belongs to, by a word in its path; anything else is core.
PARTS = ("coach", "entrepreneur", "admin")
#: A named %-placeholder with its conversion, e.g. ``%(amount)s``; ``%%`` and bare ``%`` are not.
PLACEHOLDER = re.compile(r"%\((\w+)\)[-#0 +]*(?:\d+)?(?:\.\d+)?[diouxXeEfFgGcrsa]")

HOW_TO = f"""\
Add the Dutch text to the .po file of the part of the service the string belongs to, in {PO_REL}/:
coach.po, entrepreneur.po or admin.po; core.po is only for the shared core (errors, start page, mails).
Every *.po file in that folder is merged when the service starts, so do not edit another part's file;
if your part's file does not exist yet, create it with the header of core.po (Language: nl,
Content-Type: text/plain; charset=UTF-8, Plural-Forms). Paste the entries below into that file and fill
in each msgstr: plain Dutch (level B1), address the reader as "u", keep every %(name)s placeholder
exactly, and do not mark entries fuzzy. You do not need `make messages` for this.
"""


@dataclass
class Extracted:
    """One message id as found in the sources (singular, or singular and plural)."""

    id: str | tuple[str, ...]
    locations: list[tuple[str, int]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.id[0] if isinstance(self.id, tuple) else self.id


def _prefixes(method_map: list[tuple[str, str]]) -> list[str]:
    """The fixed leading folders of each pattern (``service/templates`` for ``service/templates/**.html``)."""
    out = []
    for pattern, _method in method_map:
        fixed = []
        for part in pattern.split("/")[:-1]:
            if any(ch in part for ch in "*?["):
                break
            fixed.append(part)
        out.append("/".join(fixed))
    return out


def _extract() -> dict[str, Extracted]:
    with MAPPING.open(encoding="utf-8") as f:
        method_map, options_map = parse_mapping_cfg(f, str(MAPPING))
    prefixes = _prefixes(method_map)

    def descend(dirpath: str) -> bool:
        # Only walk folders a pattern can match (not .venv, build/node_modules, var, …).
        name = os.path.basename(dirpath)
        if name.startswith((".", "_")):
            return False
        rel = Path(dirpath).relative_to(ROOT).as_posix()
        return any(not p or rel == p or rel.startswith(p + "/") or p.startswith(rel + "/") for p in prefixes)

    found: dict[str, Extracted] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        ROOT, method_map, options_map, keywords=KEYWORDS, directory_filter=descend
    ):
        entry = found.setdefault(message[0] if isinstance(message, tuple) else message, Extracted(message))
        if isinstance(message, tuple) and not isinstance(entry.id, tuple):
            entry.id = message
        entry.locations.append((PurePosixPath(filename).as_posix(), lineno))
    return found


@dataclass
class PoEntry:
    file: str
    id: str | tuple[str, ...]
    string: str | tuple[str, ...]
    fuzzy: bool


def _read_catalogs() -> tuple[dict[str, list[PoEntry]], list[str]]:
    """All Dutch entries by message id (one per file that has it), and the files with a fuzzy header."""
    entries: dict[str, list[PoEntry]] = {}
    fuzzy_headers = []
    for po in sorted(PO_DIR.glob("*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale="nl", abort_invalid=True)
        if catalog.fuzzy:
            fuzzy_headers.append(po.name)
        for message in catalog:
            if not message.id:
                continue
            key = message.id[0] if isinstance(message.id, tuple) else message.id
            entries.setdefault(key, []).append(PoEntry(po.name, message.id, message.string, message.fuzzy))
    return entries, fuzzy_headers


@pytest.fixture(scope="module")
def extracted() -> dict[str, Extracted]:
    found = _extract()
    # Guard against a check that passes because nothing was extracted (a broken mapping or extractor).
    kinds = {PurePosixPath(path).suffix for entry in found.values() for path, _ in entry.locations}
    assert ".py" in kinds, f"no messages extracted from Python code with {MAPPING.name}"
    assert kinds & {".html", ".txt"}, f"no messages extracted from templates with {MAPPING.name}"
    return found


@pytest.fixture(scope="module")
def catalogs() -> tuple[dict[str, list[PoEntry]], list[str]]:
    assert PO_DIR.is_dir(), f"{PO_REL} does not exist"
    return _read_catalogs()


def _forms(string: str | tuple[str, ...]) -> tuple[str, ...]:
    return string if isinstance(string, tuple) else (string,)


def _translated(entry: PoEntry, extracted: Extracted) -> bool:
    forms = _forms(entry.string)
    needed = NL_PLURALS if isinstance(extracted.id, tuple) else 1
    return not entry.fuzzy and len(forms) >= needed and all(s.strip() for s in forms[:needed])


def _part_file(locations: list[tuple[str, int]]) -> str:
    for path, _ in locations:
        words = re.split(r"[/_.\-]", path.lower())
        for part in PARTS:
            if any(word.startswith(part) for word in words):
                return f"{part}.po"
    return "core.po"


def _snippet(items: list[Extracted]) -> str:
    catalog = Catalog(locale="nl")
    for item in items:
        catalog.add(item.id, locations=sorted(set(item.locations)), flags=("python-format",) if any(
            PLACEHOLDER.search(s) for s in _forms(item.id)) else ())
    buffer = io.BytesIO()
    write_po(buffer, catalog, omit_header=True, width=100, sort_output=True)
    return buffer.getvalue().decode("utf-8").strip()


def _placeholders(text: str) -> set[str]:
    return {m.group(0) for m in PLACEHOLDER.finditer(text)}


def test_every_message_has_dutch(extracted: dict[str, Extracted], catalogs) -> None:
    entries, _ = catalogs
    missing = [
        item for key, item in extracted.items()
        if not any(_translated(entry, item) for entry in entries.get(key, []))
    ]
    if not missing:
        return
    by_file: dict[tuple[str, bool], list[Extracted]] = {}
    for item in missing:
        present = entries.get(item.key)
        # An entry that is there but empty or fuzzy is fixed where it is; a new one goes to its part's file.
        target = (present[0].file, True) if present else (_part_file(item.locations), False)
        by_file.setdefault(target, []).append(item)
    report = [f"{len(missing)} message(s) have no Dutch translation (or only a fuzzy or empty one).", HOW_TO]
    for (po_file, present), items in sorted(by_file.items()):
        sources = ", ".join(sorted({path for item in items for path, _ in item.locations}))
        if present:
            note = f"already in this file but empty or fuzzy: fill in msgstr, remove '#, fuzzy'; from {sources}"
        elif po_file == "core.po":
            note = f"from {sources}; if this is not shared core text, use your part's own file instead"
        else:
            note = f"from {sources}"
        report.append(f"--> {PO_REL}/{po_file}  ({note})")
        report.append(_snippet(items) + "\n")
    pytest.fail("\n".join(report), pytrace=False)


def test_placeholders_match(extracted: dict[str, Extracted], catalogs) -> None:
    entries, _ = catalogs
    wrong = []
    for key, item in extracted.items():
        ids = _forms(item.id)
        for entry in entries.get(key, []):
            for i, text in enumerate(_forms(entry.string)):
                if not text:
                    continue
                english = ids[min(i, len(ids) - 1)]
                expected, got = _placeholders(english), _placeholders(text)
                if expected != got:
                    wrong.append(f"{entry.file}: msgid {english!r}\n  needs {sorted(expected)}, msgstr has {sorted(got)}: {text!r}")
    assert not wrong, (
        "These Dutch texts do not have the same %(name)s placeholders as the English message id. "
        "Keep each placeholder exactly as it is (name and letter), translate only the words around it:\n"
        + "\n".join(wrong)
    )


def test_no_fuzzy_entries(catalogs) -> None:
    entries, fuzzy_headers = catalogs
    fuzzy = sorted(f"{e.file}: {e.id!r}" for found in entries.values() for e in found if e.fuzzy)
    problems = [f"{name}: the header is marked '#, fuzzy'" for name in fuzzy_headers] + fuzzy
    assert not problems, (
        "Fuzzy entries are not used by the service (a guess by a tool, not a checked translation). "
        "Check the Dutch text, then remove the '#, fuzzy' line (and any '#| msgid' line):\n" + "\n".join(problems)
    )


def test_no_conflicting_translations(catalogs) -> None:
    """Each part keeps its own file; the same id with different Dutch in two files means one silently wins."""
    entries, _ = catalogs
    clashes = []
    for key, found in sorted(entries.items()):
        texts = {_forms(e.string) for e in found if not e.fuzzy and any(_forms(e.string))}
        if len(texts) > 1:
            clashes.append(f"{key!r}: " + "; ".join(f"{e.file} has {e.string!r}" for e in found))
    assert not clashes, (
        "The same message id has different Dutch text in more than one .po file. Keep it in one file "
        "(core.po for shared strings) or make the texts equal:\n" + "\n".join(clashes)
    )

