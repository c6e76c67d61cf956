"""Progress of long commands: a bar on a terminal (rich), plain lines otherwise.

On a terminal an operator wants to see that a backup or a payout batch moves and how far it is;
in a cron job or CI log a bar's redraws are noise, so there a line is written at the start, at
every tenth of the way and at the end. Both go to standard error, so that standard output stays
the command's result (a CSV, a file name).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ("Progress", "progress")


class Progress:
    """What a long command reports to: :meth:`advance` by steps done, or :meth:`update` to a
    figure; the total may become known (or change) on the way."""

    def __init__(self, label: str, total: int | None, unit: str, stream: IO[str]) -> None:
        self.label, self.total, self.unit, self.stream = label, total, unit, stream
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._reported = 0
        self._started = time.monotonic()

    def advance(self, steps: int = 1) -> None:
        self.update(self.done + steps)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total)
            return
        if self.total:
            tenth = min(10, done * 10 // self.total)
            if tenth > self._reported and tenth < 10:
                self._reported = tenth
                self._line(f"{tenth * 10}% ({done}/{self.total} {self.unit})")

    def _line(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream, flush=True)

    def _finish(self) -> None:
        if self._bar is None:
            total = f"/{self.total}" if self.total else ""
            self._line(f"done ({self.done}{total} {self.unit} in {time.monotonic() - self._started:.1f} s)")


@contextmanager
def progress(label: str, total: int | None = None, unit: str = "items", *,
             stream: IO[str] | None = None) -> Iterator[Progress]:
    """``with progress("backup", total=pages, unit="pages") as p: … p.advance()``."""
    stream = stream or sys.stderr
    reporter = Progress(label, total, unit, stream)
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                 TimeElapsedColumn(), console=Console(file=stream), transient=False) as bar:
            reporter._bar, reporter._task = bar, bar.add_task(label, total=total)
            yield reporter
        return
    yield reporter
    reporter._finish()
