"""Sample the running server with py-spy (``pip install py-spy``) during a load run and
summarise where its time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ("Profiler", "summarise")

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on granian's main process and its workers for ``seconds``."""

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        exe = py_spy()
        if exe is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--subprocesses", "--rate", "200", "--nonblocking",
             "--duration", str(max(1, int(seconds))), "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self) -> str:
        try:
            _, err = self.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode(errors="replace")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def _area(frame: str) -> str:
    """Which part of the stack a frame belongs to."""
    checks = (("service/", "service (our code)"), ("sqlalchemy/orm", "SQLAlchemy ORM"),
              ("sqlalchemy/", "SQLAlchemy Core/engine"), ("asyncpg", "asyncpg"), ("aiosqlite", "aiosqlite"),
              ("sqlite3", "sqlite3"), ("litestar/", "Litestar"), ("msgspec", "msgspec"),
              ("asyncio/", "asyncio"), ("threading", "threads"))
    for needle, name in checks:
        if needle in frame:
            return name
    return "other"


def summarise(raw: Path, top: int = 25) -> str:
    """Inclusive and self time per function, and self time per area, from py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
        leaf = frames[-1]
        own[_short(leaf)] += count
        # Attribute self time to the innermost frame that belongs to a known area.
        area = next((a for a in (_area(f) for f in reversed(frames)) if a != "other"), "other")
        areas[area] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples (200 Hz, all server processes, idle threads left out)", "",
             "Self time by area (innermost known frame):"]
    lines += [f"  {n * 100 / total:5.1f}%  {a}" for a, n in areas.most_common()]
    lines += ["", f"Top {top} by self time:"]
    lines += [f"  {n * 100 / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", f"Top {top} by inclusive time:"]
    lines += [f"  {n * 100 / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)
