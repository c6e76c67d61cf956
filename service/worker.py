"""The background work: the outbox, the sweep, the audit log's sealing and the removal of ended
sessions, each every few seconds or minutes.

``vouchers serve`` runs it in one process of its own beside the web processes, at a lower CPU
priority (``Settings.background_nice``): on opening day the applicants' answers come first and
their mails follow in seconds, in the CPU time the requests leave. Measured on two cores, mail and
sealing took about a third of the server's CPU in the redemption runs when every web process did
them in between requests (BENCHMARKS.md). ``vouchers worker`` runs the same loop alone, for hosts
that run the web processes some other way; an app made by ``create_app`` with
``background_tasks`` on runs it inside its own process instead.

Every task claims its rows in the database, never in memory, so several of these may run at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import msgspec

from . import audit, health, logs, outbox, sessions, sweep
from .db import transaction
from .runtime import Runtime
from .settings import Settings

__all__ = ("Beside", "main", "purge_sessions", "run_forever", "tasks")

log = logging.getLogger(__name__)


async def _every(seconds: float, work: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await _run_job(work, name)
        await asyncio.sleep(seconds)


async def purge_sessions(rt: Runtime) -> int:
    """Delete sessions that were revoked or ran past a timeout."""
    async with transaction(rt.sessionmaker) as session:
        return await sessions.purge_expired(session, rt.settings)


async def _run_job(work: Callable[[], Awaitable[object]], name: str) -> None:
    """One run of a job, and its line (``service.logs``): INFO when it did something, ERROR with the
    failure's types and frames when it failed, DEBUG when there was nothing to do (or nothing to
    count, as a heartbeat)."""
    started = time.perf_counter()
    fields: dict[str, object] = {"request_id": secrets.token_hex(8), "job": name, "actor": "system"}
    try:
        done = await work()
    except Exception as exc:  # keep the loop alive; the next round tries again
        logs.event(log, logging.ERROR, "job", **fields, status="failed",
                   duration_ms=round((time.perf_counter() - started) * 1000, 1), **logs.failure_fields(exc))
        return
    if isinstance(done, msgspec.Struct):  # a report of counts, such as the sweep's
        done = sum(v for v in msgspec.structs.astuple(done) if isinstance(v, int) and not isinstance(v, bool))
    count = done if isinstance(done, int) and not isinstance(done, bool) else None
    level = logging.DEBUG if not count else logging.INFO
    logs.event(log, level, "job", **fields, status="ok", done=count,
               duration_ms=round((time.perf_counter() - started) * 1000, 1))


def tasks(rt: Runtime) -> list[asyncio.Task[None]]:
    """Start the loops on the running event loop: the jobs, the heartbeat, and the site's (only when
    ``site_rebuild`` is on)."""
    s = rt.settings
    return [
        asyncio.create_task(_every(s.outbox_interval_seconds, lambda: outbox.send_due(rt), "outbox")),
        asyncio.create_task(_every(s.sweep_interval_seconds, lambda: sweep.sweep(rt), "sweep")),
        asyncio.create_task(_every(s.audit_seal_interval_seconds, lambda: audit.seal_all(rt.sessionmaker),
                                   "audit seal")),
        asyncio.create_task(_every(s.sweep_interval_seconds, lambda: purge_sessions(rt), "session purge")),
        asyncio.create_task(_every(s.heartbeat_interval_seconds, lambda: health.beat(rt), "heartbeat")),
    ] + _site_task(rt)


def _site_task(rt: Runtime) -> list[asyncio.Task[None]]:
    """Keep the public site current (``service.sitegen.keeper``); one process of several builds."""
    if not rt.settings.site_rebuild:
        return []
    from .sitegen import keeper  # mkdocs is only loaded where the site is built

    return [asyncio.create_task(keeper.keep_current(rt))]


async def _orphaned(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)


async def run_forever(rt: Runtime, *, parent: int | None = None) -> None:
    """Run the loops until SIGTERM or SIGINT, or until the process ``parent`` is gone, then stop
    them and close the runtime."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = tasks(rt)
    if parent is not None:
        watch = asyncio.create_task(_orphaned(parent))
        watch.add_done_callback(lambda _: stop.set())
        running.append(watch)
    try:
        await stop.wait()
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await rt.close()


def main(settings: Settings, *, nice: int = 0, parent: int | None = None) -> None:
    """The background process: lower its CPU priority by ``nice``, then run until stopped (or
    until ``parent``, the process that started it, is gone)."""
    if nice:
        os.nice(nice)
    audit.set_context(audit.AuditContext().actor)  # "system", as inside a web process
    logs.configure(settings)
    asyncio.run(run_forever(Runtime.create(settings), parent=parent))


class Beside:
    """The background process of ``vouchers serve``: ``vouchers worker`` at a lower priority,
    started again a second after it fails or is killed (mail waits in the outbox meanwhile), and
    stopped with the server. It stops by itself if the server is killed outright, and for good
    when it is told to stop (Ctrl-C reaches it with the server)."""

    RESTART_DELAY_SECONDS = 1.0

    def __init__(self, nice: int) -> None:
        self.command = [sys.executable, "-m", "service.cli", "worker", "--nice", str(nice),
                        "--parent", str(os.getpid())]
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._keep_running, name="vouchers-background", daemon=True)

    def start(self) -> Beside:
        """Start the process here, before the web processes are forked: ``Popen`` waits for the
        end of a pipe that a process forked meanwhile would keep open for as long as it lives,
        and the thread would never get to ``wait``."""
        self.process = subprocess.Popen(self.command)
        self._thread.start()
        return self

    def _keep_running(self) -> None:
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            if code == 0:  # asked to stop
                return
            if not self._stopping.is_set():
                log.error("the background process ended with %s; starting it again", code)
                self._stopping.wait(self.RESTART_DELAY_SECONDS)
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process = subprocess.Popen(self.command)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout=timeout)
