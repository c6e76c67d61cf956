"""Processes of the service as hosts run them: ``vouchers serve`` and ``vouchers worker`` in
working directories of their own, sharing only the secret and the database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from service.settings import Settings
from tests.conftest import free_port, wait_healthy

LOOKUP_LIMIT = 5
PROXY = "127.0.0.1"
"""The load balancer's address: the tests' requests come from it, some naming a client."""


def vouchers_env(settings: Settings, **extra: str) -> dict[str, str]:
    """What a host is configured with: the shared secret and database, nothing else shared."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith("VOUCHERS_")}
    return {**plain, "VOUCHERS_ENVIRONMENT": "test", "VOUCHERS_SECRET_KEY": settings.secret_key,
            "VOUCHERS_DATABASE_URL": settings.database_url,
            **({"VOUCHERS_DATABASE_SCHEMA": settings.database_schema} if settings.database_schema else {}),
            "VOUCHERS_BASE_URL": settings.base_url, "VOUCHERS_FAILED_LOOKUP_LIMIT": str(LOOKUP_LIMIT),
            "VOUCHERS_SITE_REBUILD": "false",
            # Pools sized so that every host and background process fits the one server together.
            **({"VOUCHERS_DB_PROCESSES": str(settings.db_processes)} if settings.db_processes else {}),
            "VOUCHERS_DB_POOL_SIZE": str(settings.db_pool_size),
            "VOUCHERS_DB_MAX_OVERFLOW": str(settings.db_max_overflow),
            "VOUCHERS_DB_DRIVER_CONNECTIONS": str(settings.db_driver_connections),
            "VOUCHERS_TRUSTED_PROXIES": PROXY, **extra}


class Process:
    """A ``vouchers`` command running in a working directory of its own (a host's local disk)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.log = tempfile.TemporaryFile()  # a file, not a pipe nobody reads
        self.process = subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=cwd, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if self.log.closed:
            return self.kept
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        """kill -9, as a crashed host or an out-of-memory killer would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        if not self.log.closed:
            self.kept = self.output()
            self.log.close()


def stop_all(processes: list[Process]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


class Host(Process):
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port)], {**env, "VOUCHERS_BACKGROUND_TASKS": "false"}, cwd)

    def wait_ready(self) -> None:
        wait_healthy(self.url, self.process, 60, self.output)


async def fire(requests: list[tuple[str, str, dict]], limit: int = 48) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=limit)) as http:
        return await asyncio.gather(*(http.request(method, url, **kwargs) for method, url, kwargs in requests))


