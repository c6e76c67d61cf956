"""Run wrk (the load generator) against a server on 127.0.0.1 with ``load.lua`` and read its
figures. wrk is Debian's package: ``apt-get install -y wrk``."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ("LoadResult", "require_wrk", "run_wrk")

SCRIPT = Path(__file__).with_name("load.lua")


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "bench needs wrk (the HTTP load generator with Lua scripting).\n"
            "Install Debian's package:  apt-get install -y wrk   (as root; run apt-get update first)"
        )
    return path


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    sent: int
    received: int
    connections: int
    wrk_cpu: float
    """wrk's CPU time over the run's wall time, in cores: well under 1 means wrk was not the limit."""
    rate: float = 0.0
    """The fixed rate the requests were sent at (0: as fast as the server answered)."""
    late: int = 0
    """At a fixed rate: requests sent more than 10 ms after their time because every connection was
    busy. Their latency, measured from the send, leaves that wait out: with more than a few, the
    rate was above what the server keeps up with."""
    max_late_ms: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def count(self, *codes: int) -> int:
        return sum(self.statuses.get(str(c), 0) for c in codes)

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("5"))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_wrk(base_url: str, *, path: str, body: str = "", items_file: Path | None = None, limit: int = 0,
            seconds: float, token: str | None = None, connections: int = 64, threads: int = 1,
            rate: float = 0.0, grace: float = 60.0, content_type: str = "",
            headers: dict[str, str] | None = None) -> LoadResult:
    """One bounded run: until ``limit`` requests (split over the threads, each item once) or
    ``seconds``, whichever comes first; every request sent has been answered when this returns
    (unless the server stopped answering, which shows as sent > received). With ``rate``, the
    requests are sent at that many per second rather than as fast as they are answered.
    ``content_type`` is the body's (JSON when empty); ``headers`` are sent with every request, with
    ``{item}`` and ``{1}``, ``{2}``, ... (the item's tab-separated fields) filled in."""
    assert base_url.startswith("http://127.0.0.1:"), "only loopback is ever a target"
    threads = max(1, min(threads, connections))
    safety = int(seconds + grace)
    header_file = None
    if headers:
        assert all("\n" not in f"{k}{v}" for k, v in headers.items())
        header_file = tempfile.NamedTemporaryFile("w", prefix="bench-headers-", suffix=".txt", delete=False)
        header_file.write("".join(f"{name}: {value}\n" for name, value in headers.items()))
        header_file.close()
    cmd = [
        require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{safety}s", "--timeout", "60s",
        "-s", str(SCRIPT), base_url, "--",
        str(items_file) if items_file else "-", path, body, str(limit), f"{seconds:.3f}", token or "-", str(threads),
        f"{rate:.3f}", content_type or "-", header_file.name if header_file else "-",
    ]
    try:
        return _run(cmd, threads, safety, connections, rate)
    finally:
        if header_file is not None:
            os.unlink(header_file.name)


def _run(cmd: list[str], threads: int, safety: int, connections: int, rate: float) -> LoadResult:
    before = os.times()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    interrupted = False
    fd = proc.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    hard_deadline = started + safety + 30
    while time.monotonic() < hard_deadline:
        if not selector.select(timeout=0.5):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
        if not interrupted and out.count(b"BENCH-THREAD-DONE") >= threads:
            # wrk's main thread sleeps for all of -d; SIGINT wakes it to collect the results.
            proc.send_signal(signal.SIGINT)
            interrupted = True
    else:
        proc.kill()
    selector.close()
    rest, err_bytes = proc.communicate(timeout=30)
    out += rest
    lines = out.decode(errors="replace").splitlines()
    err = err_bytes.decode(errors="replace")
    wall = time.monotonic() - started
    after = os.times()  # wrk has been reaped: its CPU time is in the children's times now
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    data = None
    for line in lines:
        if line.startswith("BENCH-JSON "):
            data = json.loads(line.removeprefix("BENCH-JSON "))
    if data is None:
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n{''.join(lines)}\n{err}")
    seconds_run = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return LoadResult(
        requests=data["requests"], seconds=seconds_run, rps=data["requests"] / seconds_run if seconds_run else 0.0,
        p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000, max_ms=lat["max"] / 1000,
        statuses={str(k): v for k, v in data["statuses"].items()},
        socket_errors={k: v for k, v in data["errors"].items() if k != "status"},
        sent=data["sent"], received=data["received"], connections=connections,
        wrk_cpu=round(cpu / wall, 3) if wall else 0.0, rate=rate, late=data["late"],
        max_late_ms=data["max_late_us"] / 1000,
    )
