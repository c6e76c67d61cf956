"""Each scheme's public figures and daily history as open data: CSV and JSON files at stable URLs,
described by a Frictionless data package (``data/datapackage.json``, a table schema per file, each
column described in Dutch and English) and by JSON Schemas for the JSON files. CC0, as Dutch
government open data usually is.

    data/datapackage.json                 every file, its columns, the licence
    data/figures.schema.json              JSON Schema of every <slug>/figures.json
    data/history.schema.json              JSON Schema of every <slug>/history.json
    data/<slug>/figures.csv | .json       the figures now: one row
    data/<slug>/history.csv | .json       the figures at the end of each day, oldest first

The columns are defined once here; the files, their descriptions and the site's open-data page all
come from that one list. Only fields of the public snapshot are written.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .snapshot import FiguresPoint, PublicSnapshot, SchemeFacts

__all__ = ("FIGURES", "HISTORY", "LICENCE", "Column", "write_open_data")

FOLDER = "data"
LICENCE = {
    "name": "CC0-1.0",
    "title": "Creative Commons Zero v1.0 Universal",
    "path": "https://creativecommons.org/publicdomain/zero/1.0/",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Frictionless field type: integer, string, date or datetime
    nl: str
    en: str
    nullable: bool = False
    minimum: int | None = None
    enum: tuple[str, ...] | None = None


FIGURES = (
    Column("scheme", "string", "Korte naam van de regeling (zoals in de adressen van de site).",
           "Short name of the scheme (as in the site's addresses)."),
    Column("taken_at", "datetime", "Moment van de cijfers, in UTC (ISO 8601).",
           "Moment of the figures, in UTC (ISO 8601)."),
    Column("status", "string", "upcoming: nog niet open; open: aanvragen kan; closed: gesloten.",
           "upcoming: not open yet; open: applications accepted; closed: closed.",
           enum=("upcoming", "open", "closed")),
    Column("max_places", "integer", "Aantal plaatsen (ondernemers) in de regeling.",
           "Number of places (entrepreneurs) in the scheme.", minimum=0),
    Column("places_used", "integer", "Gebruikte plaatsen: ondernemers met een voucher.",
           "Places used: entrepreneurs with a voucher.", minimum=0),
    Column("places_left", "integer", "Plaatsen die nog vrij zijn.", "Places still free.", minimum=0),
    Column("waiting_list", "integer", "Ondernemers op de wachtlijst.", "Entrepreneurs on the waiting list.",
           minimum=0),
    Column("budget_cents", "integer", "Budget van de regeling, in eurocent.", "Budget of the scheme, in euro cents.",
           minimum=0),
    Column("committed_cents", "integer", "Toegezegd: de waarde van de uitgegeven vouchers, in eurocent.",
           "Committed: the value of the vouchers issued, in euro cents.", minimum=0),
    Column("redeemed_cents", "integer", "Verzilverd: wat aanbieders met vouchers betaald kregen, in eurocent.",
           "Redeemed: what providers were paid with vouchers, in euro cents."),
    Column("value_cents", "integer", "Waarde van één voucher, in eurocent.", "Value of one voucher, in euro cents.",
           minimum=0),
)

HISTORY = (
    Column("scheme", "string", "Korte naam van de regeling.", "Short name of the scheme."),
    Column("day", "date", "De dag (tijd in Nederland); de cijfers zijn de stand aan het eind van die dag.",
           "The day (Dutch time); the figures are those at the end of that day."),
    Column("places_used", "integer", "Gebruikte plaatsen.", "Places used.", minimum=0),
    Column("waiting_list", "integer",
           "Ondernemers op de wachtlijst; leeg voor dagen waarvan de dienst dit niet bijhield.",
           "Entrepreneurs on the waiting list; empty for days the service did not keep it.",
           nullable=True, minimum=0),
    Column("committed_cents", "integer", "Toegezegd, in eurocent.", "Committed, in euro cents.", minimum=0),
    Column("redeemed_cents", "integer", "Verzilverd, in eurocent.", "Redeemed, in euro cents."),
)

TABLES = {"figures": FIGURES, "history": HISTORY}


def _figures_row(scheme: SchemeFacts, snapshot: PublicSnapshot) -> dict[str, object]:
    return {
        "scheme": scheme.slug, "taken_at": snapshot.taken_at, "status": scheme.status,
        "max_places": scheme.max_places, "places_used": scheme.places_used,
        "places_left": max(scheme.max_places - scheme.places_used, 0),
        "waiting_list": scheme.waiting_list_length, "budget_cents": scheme.budget_cents,
        "committed_cents": scheme.committed_cents, "redeemed_cents": scheme.redeemed_cents,
        "value_cents": scheme.value_cents,
    }


def _history_row(scheme: SchemeFacts, point: FiguresPoint) -> dict[str, object]:
    return {"scheme": scheme.slug, "day": point.day, "places_used": point.places_used,
            "waiting_list": point.waiting_list, "committed_cents": point.committed_cents,
            "redeemed_cents": point.redeemed_cents}


def _text(value: object) -> object:
    """Values as the files write them: dates in ISO 8601, times in UTC with a Z."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _csv(columns: tuple[Column, ...], rows: Iterable[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(c.name for c in columns)
    for row in rows:
        writer.writerow("" if row[c.name] is None else _text(row[c.name]) for c in columns)
    return out.getvalue()


def _json(table: str, scheme: SchemeFacts, snapshot: PublicSnapshot, rows: list[dict[str, object]]) -> str:
    document = {
        "scheme": scheme.slug,
        "taken_at": _text(snapshot.taken_at),
        "license": LICENCE["name"],
        "described_by": ["../datapackage.json", f"../{table}.schema.json"],
        "rows": [{k: _text(v) for k, v in row.items()} for row in rows],
    }
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def _field(column: Column) -> dict[str, object]:
    constraints: dict[str, object] = {"required": not column.nullable}
    if column.minimum is not None:
        constraints["minimum"] = column.minimum
    if column.enum:
        constraints["enum"] = list(column.enum)
    return {"name": column.name, "type": column.type, "description": column.en, "description_nl": column.nl,
            "constraints": constraints}


def table_schema(columns: tuple[Column, ...]) -> dict[str, object]:
    """A Frictionless table schema; an empty cell is a missing value."""
    return {"fields": [_field(c) for c in columns], "missingValues": [""]}


def _json_type(column: Column) -> dict[str, object]:
    kind: dict[str, object] = {"type": "integer"} if column.type == "integer" else {"type": "string"}
    if column.type == "date":
        kind["pattern"] = r"^\d{4}-\d{2}-\d{2}$"
    elif column.type == "datetime":
        kind["pattern"] = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
    if column.minimum is not None:
        kind["minimum"] = column.minimum
    if column.enum:
        kind["enum"] = list(column.enum)
    if column.nullable:
        kind = {"anyOf": [kind, {"type": "null"}]}
    return {**kind, "description": column.en, "description_nl": column.nl}


def json_schema(table: str) -> dict[str, object]:
    """The JSON Schema (2020-12) of every ``<slug>/<table>.json``."""
    columns = TABLES[table]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{table}.json",
        "type": "object",
        "required": ["scheme", "taken_at", "license", "described_by", "rows"],
        "additionalProperties": False,
        "properties": {
            "scheme": {"type": "string"},
            "taken_at": {"type": "string"},
            "license": {"const": LICENCE["name"]},
            "described_by": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": {
                "type": "object",
                "required": [c.name for c in columns],
                "additionalProperties": False,
                "properties": {c.name: _json_type(c) for c in columns},
            }},
        },
    }


def datapackage(snapshot: PublicSnapshot) -> dict[str, object]:
    resources = []
    for scheme in snapshot.schemes:
        for table, columns in TABLES.items():
            resources.append({
                "name": f"{scheme.slug}-{table}",
                "path": f"{scheme.slug}/{table}.csv",
                "title": f"{scheme.name_en}: {table}",
                "format": "csv", "mediatype": "text/csv", "encoding": "utf-8",
                "schema": table_schema(columns),
            })
    return {
        "name": "vouchers-public-figures",
        "title": "Public figures of the voucher schemes / Openbare cijfers van de voucherregelingen",
        "created": _text(snapshot.taken_at),
        "licenses": [LICENCE],
        "resources": resources,
    }


def write_open_data(snapshot: PublicSnapshot, src_dir: Path) -> None:
    """Write the open-data files into the site's sources; mkdocs copies them as they are."""
    folder = Path(src_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def write(path: Path, content: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8", newline="")

    for scheme in snapshot.schemes:
        figures = [_figures_row(scheme, snapshot)]
        history = [_history_row(scheme, point) for point in scheme.history]
        for table, rows in (("figures", figures), ("history", history)):
            write(folder / scheme.slug / f"{table}.csv", _csv(TABLES[table], rows))
            write(folder / scheme.slug / f"{table}.json", _json(table, scheme, snapshot, rows))
    write(folder / "datapackage.json", json.dumps(datapackage(snapshot), ensure_ascii=False, indent=1) + "\n")
    for table in TABLES:
        write(folder / f"{table}.schema.json", json.dumps(json_schema(table), ensure_ascii=False, indent=1) + "\n")
