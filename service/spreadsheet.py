"""The one CSV convention of every download (council report, provider statement, CLI): what Dutch
Excel opens correctly by a double click. Semicolons between cells, a decimal comma, no thousands
separator, UTF-8 with a byte order mark (without it Excel reads the file as Windows-1252 and breaks
"é" and "€"), and CRLF line ends. The same convention in English too: a file is often passed on,
and a spreadsheet should not read it differently depending on who downloaded it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

__all__ = ("MEDIA_TYPE", "cell", "decimal", "euros", "write")

# Litestar adds "; charset=utf-8" to text/ types itself; naming it here as well would send it twice.
MEDIA_TYPE = "text/csv"
DELIMITER = ";"
DECIMAL = ","


def euros(cents: int) -> str:
    """``-1234,56``: never through a float."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}{DECIMAL}{part:02d}"


def decimal(value: float, places: int = 1) -> str:
    return f"{value:.{places}f}".replace(".", DECIMAL)


def cell(text: str) -> str:
    """Spreadsheets run cells starting with these as formulas; text from outside must not."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write(rows: Iterable[Sequence[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=DELIMITER, lineterminator="\r\n")
    writer.writerows(rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")
