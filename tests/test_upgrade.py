"""Upgrading while the service serves: additive migration first, then the new code (host by host,
behind the load balancer; on SQLite two server processes beside one file), then the cleanup
migration. Applications keep coming in on every host the whole time; not one request fails and not
one application is lost. The background process is upgraded too, after the web hosts.

The schema change is a test's own, in migrations written to a temporary versions directory beside
the service's (Alembic's ``version_locations``): version N of the app reads and writes
``application.intake``, version N+1 renames it to ``channel``. The two versions are the service
with a ``sitecustomize`` module on ``PYTHONPATH`` that maps the column its version knows, which is
how a new release would differ: its models name a column the old schema lacks.
"""

from __future__ import annotations

import asyncio
import itertools
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from service.check import reconcile
from service.migrate import alembic_config, upgrade
from service.models import Application
from service.runtime import Runtime
from service.settings import Settings
from tests.conftest import TEST_SECRET
from tests.helpers import admin_token, bearer, make_scheme, next_kvk
from tests.host_helpers import Host, Process, stop_all, vouchers_env

SERVICE_VERSIONS = Path(__file__).resolve().parent.parent / "service" / "migrations" / "versions"

MIGRATION = '''"""{doc}"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Wait at most this long for the table's lock (requests queue behind a waiting ALTER TABLE).
        op.execute("SET LOCAL lock_timeout = '5s'")
{upgrade}


def downgrade() -> None:
{downgrade}
'''

#: Version N's column (part of the schema before the upgrade).
BEFORE = ("the column version N uses", 'op.add_column("application", sa.Column("intake", sa.String(8)))',
          'op.drop_column("application", "intake")')
#: Additive: a new column with a default (no table rewrite on PostgreSQL); version N's statements
#: do not name it and keep working, and rows written without it (the driver's path) get the default.
ADDITIVE = ("additive: the column version N+1 uses",
            'op.add_column("application", sa.Column("channel", sa.String(8), server_default="api"))',
            'op.drop_column("application", "channel")')
#: Cleanup, once no process of version N is left: fill the new column, drop the old one.
CLEANUP = ("cleanup: version N's column goes",
           'op.execute("UPDATE application SET channel = coalesce(intake, \'api\') WHERE channel IS NULL")\n'
           'op.drop_column("application", "intake")',
           'op.add_column("application", sa.Column("intake", sa.String(8)))')

CODE = '''"""Version {version} of the service: its model of an application names ``{column}``."""
from sqlalchemy import String
from sqlalchemy.orm import mapped_column

from service.models import Application

Application.{column} = mapped_column(String(8), default="api")
'''


def write_migrations(folder: Path, head: str) -> list[str]:
    folder.mkdir()
    revisions = []
    for n, (doc, up, down) in enumerate([BEFORE, ADDITIVE, CLEANUP]):
        revision = f"upgrade_test_{n}"
        (folder / f"{revision}.py").write_text(MIGRATION.format(
            doc=doc, revision=revision, down=head, upgrade=textwrap.indent(up, "    "),
            downgrade=textwrap.indent(down, "    ")))
        revisions.append(head := revision)
    return revisions


def write_code(folder: Path, version: str, column: str) -> Path:
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(CODE.format(version=version, column=column))
    return folder


def ident(answer: httpx.Response) -> str:
    """The application's number, or what went wrong."""
    try:
        return answer.json()["application_id"]
    except (ValueError, KeyError):
        return answer.text[:300]


class LoadBalancer:
    """Sends each request to the next host in rotation. A host is taken out of rotation and
    drained (its requests in flight answered) before it is stopped, as a load balancer does."""

    def __init__(self, hosts: list[Host]) -> None:
        self.rotation = list(hosts)
        self.in_flight: Counter[str] = Counter()
        self._next = itertools.count()

    def pick(self) -> Host:
        return self.rotation[next(self._next) % len(self.rotation)]

    async def replace(self, old: Host, new: Host) -> None:
        await asyncio.to_thread(new.wait_ready)
        self.rotation.append(new)
        self.rotation.remove(old)
        while self.in_flight[old.url]:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(old.stop)


@pytest.fixture
def upgrade_db(database: tuple[str, str | None], tmp_path: Path) -> Iterator[tuple[Settings, list[str], object]]:
    """On PostgreSQL several hosts; on SQLite two server processes on one host, beside one file."""
    url, schema = database
    config = alembic_config(url, schema)
    head = ScriptDirectory.from_config(config).get_current_head()
    revisions = write_migrations(tmp_path / "versions", head)
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", f"{SERVICE_VERSIONS}:{tmp_path / 'versions'}")
    upgrade(url, schema)
    command.upgrade(config, revisions[0])  # the schema version N runs on
    settings = Settings(environment="test", database_url=url, database_schema=schema,
                        secret_key=TEST_SECRET, base_url="http://vouchers.test", background_tasks=False)
    yield settings, revisions, config


async def test_an_upgrade_under_load_loses_no_request_and_no_application(upgrade_db, tmp_path: Path) -> None:
    settings, revisions, config = upgrade_db
    old_code = write_code(tmp_path / "version-n", "N", "intake")
    new_code = write_code(tmp_path / "version-n1", "N+1", "channel")
    rt = Runtime.create(settings)
    hosts: list[Host] = []
    try:
        await make_scheme(rt, slug="upgrade", max_places=100)
        token = await admin_token(rt)

        def host(code: Path, name: str) -> Host:
            started = Host(vouchers_env(settings, PYTHONPATH=str(code)), tmp_path / name)
            hosts.append(started)
            return started

        def worker(code: Path, name: str) -> Process:
            """The background process (mail to files in its own folder, the sweep, sealing)."""
            started = Process(["worker"], vouchers_env(settings, PYTHONPATH=str(code), VOUCHERS_MAIL_BACKEND="file",
                                                       VOUCHERS_OUTBOX_INTERVAL_SECONDS="0.2",
                                                       VOUCHERS_SWEEP_INTERVAL_SECONDS="0.5"), tmp_path / name)
            hosts.append(started)
            return started

        old_worker = worker(old_code, "worker-n")
        first = [host(old_code, "a"), host(old_code, "b")]
        for started in first:
            started.wait_ready()
        balancer = LoadBalancer(first)
        answers: list[tuple[str, int, str]] = []  # (step, status, application id or error)
        step = "version N"
        running = True
        numbers = itertools.count()

        async def client() -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                while running:
                    n = next(numbers)
                    target = balancer.pick()
                    balancer.in_flight[target.url] += 1
                    try:
                        # Both ways in: the driver's (no key) and the ORM's (with a key), then a read.
                        r = await http.post(
                            f"{target.url}/api/v1/admin/schemes/upgrade/applications",
                            headers={**bearer(token), **({"Idempotency-Key": str(uuid.uuid4())} if n % 2 else {})},
                            json={"kvk_number": next_kvk(), "company_name": f"Firma {n}", "employees": 2,
                                  "postcode": "6811 AB", "contact_name": "Naam", "email": f"u{n}@example.org"})
                        answers.append((step, r.status_code, ident(r)))
                        if r.status_code == 201:
                            read = await http.get(f"{target.url}/api/v1/applications/{ident(r)}",
                                                  headers=bearer(token))
                            answers.append((step, read.status_code if ident(read) == ident(r) else -1, ident(read)))
                    except httpx.HTTPError as exc:
                        answers.append((step, 0, f"{exc.__class__.__name__} at {target.url}"))
                    finally:
                        balancer.in_flight[target.url] -= 1

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(1.0)
        step = "additive migration"
        await asyncio.to_thread(command.upgrade, config, revisions[1])
        step = "new code, host by host"
        for n, old in enumerate(first):
            await balancer.replace(old, host(new_code, f"new-{n}"))
        new_worker = worker(new_code, "worker-n1")
        old_worker.stop()
        step = "cleanup migration"
        await asyncio.to_thread(command.upgrade, config, revisions[2])
        await asyncio.sleep(1.0)
        running = False
        await asyncio.gather(*clients)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the new background process catches up
            async with rt.reader() as session:
                behind = await session.scalar(text(
                    "SELECT (SELECT count(*) FROM outbox_message WHERE status <> 'sent')"
                    " + (SELECT count(*) FROM audit_entry WHERE chain_seq IS NULL)"))
            if not behind:
                break
            await asyncio.sleep(0.2)
        assert behind == 0
        for process in (old_worker, new_worker):
            assert " failed" not in process.output(), process.output()

        failed = [answer for answer in answers if answer[1] not in (200, 201)]
        assert failed == []
        per_step = Counter(step for step, status, _ in answers if status == 201)
        assert all(per_step[s] for s in ("version N", "additive migration", "new code, host by host",
                                         "cleanup migration")), per_step
        acknowledged = {ident for _, status, ident in answers if status == 201}
        async with rt.reader() as session:
            stored = set(await session.scalars(select(Application.public_id)))
            assert acknowledged <= stored and len(stored) == len(acknowledged)
            assert await session.scalar(text("SELECT count(*) FROM application WHERE channel IS NULL")) == 0
            assert await reconcile(session) == []
            assert await session.scalar(select(func.count()).select_from(Application)) == len(acknowledged)
    finally:
        stop_all(hosts)
        await rt.close()
