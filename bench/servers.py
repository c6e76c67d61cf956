"""Start the servers the way production does (granian via ``vouchers serve``), wait until they
answer, and stop them again. Only 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ("Server", "bare_server", "free_port", "service_server")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process (granian's main process and its workers in their own process group)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError(f"{name} exited at start; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not answer within 60 s; see {log}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            # granian's main process stops its workers on SIGINT; the group is ours alone.
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _here(env: dict[str, str]) -> dict[str, str]:
    """Run the code of this tree (PYTHONPATH before the venv's editable install)."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)}


def service_server(env: dict[str, str], workers: int, log: Path, *, count_dir: Path | None = None,
                   sql_log: bool = False) -> Server:
    """``vouchers serve``; with ``count_dir``, its web processes count their SQL statements there
    (``bench/hook/sitecustomize.py``, see ``bench/sqlcount.py``), and with ``sql_log`` also write
    their text."""
    port = free_port()
    cmd = [str(BIN / "vouchers"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    env = _here({**env, "VOUCHERS_BASE_URL": f"http://127.0.0.1:{port}"})
    if count_dir is not None:
        env["BENCH_SQL_COUNT_DIR"] = str(count_dir)
        env["BENCH_SQL_LOG"] = "1" if sql_log else ""
        env["PYTHONPATH"] = os.pathsep.join((str(ROOT / "bench" / "hook"), env["PYTHONPATH"]))
    return Server("vouchers serve", cmd, env, port, log)


def bare_server(workers: int, log: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.bare", "--port", str(port), "--workers", str(workers)]
    return Server("bare litestar", cmd, _here(dict(os.environ)), port, log)
