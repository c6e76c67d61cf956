"""Several hosts on one PostgreSQL: three ``vouchers serve`` processes on their own ports, each in
its own working directory (so they share no local file), sharing only the secret and the database,
and background processes (``vouchers worker``) beside them, as a municipality would run it behind a
load balancer. Nothing may depend on memory that one process has and another has not."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import func, select, update

from service.check import reconcile
from service.codes import format_code
from service.migrate import upgrade
from service.models import ApiToken, Application, OutboxMessage, Provider, Redemption, Scheme, Voucher, utcnow
from service.runtime import Runtime
from service.settings import Settings
from tests.coach_helpers import PASSWORD, make_staff
from tests.conftest import TEST_SECRET, SmtpSink, free_port
from tests.host_helpers import LOOKUP_LIMIT, Host, Process, fire, stop_all, vouchers_env
from tests.helpers import admin_token, bearer, make_provider, make_scheme, make_voucher, new_pg_schema, next_kvk

pytestmark = pytest.mark.postgres

HOSTS = 3
_slugs = (f"hosts-{n}" for n in itertools.count(1))


class Cluster:
    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root
        self.hosts: list[Host] = []
        self.workers: list[Process] = []

    def start_hosts(self, n: int) -> None:
        self.hosts = [Host(vouchers_env(self.settings), self.root / f"host{i}") for i in range(n)]
        for host in self.hosts:
            host.wait_ready()

    def start_worker(self, smtp: SmtpSink, **settings: str) -> Process:
        """``vouchers worker`` on a host of its own, polling the outbox often (the test waits for it)."""
        worker = Process(["worker"], vouchers_env(self.settings, VOUCHERS_MAIL_BACKEND="smtp",
                                                 VOUCHERS_SMTP_PORT=str(smtp.port),
                                                 VOUCHERS_OUTBOX_INTERVAL_SECONDS="0.2",
                                                 VOUCHERS_AUDIT_SEAL_INTERVAL_SECONDS="0.2", **settings),
                         self.root / f"worker{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def cli(self, host: int, *args: str) -> subprocess.CompletedProcess[str]:
        """An operator's command on one of the hosts."""
        return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=self.root / f"host{host}",
                              env=vouchers_env(self.settings), capture_output=True, text=True, timeout=120)

    def url(self, n: int) -> str:
        return self.hosts[n % len(self.hosts)].url

    def stop(self) -> None:
        stop_all([*self.workers, *self.hosts])
        self.workers = []


@pytest.fixture(scope="module")
def cluster(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    schema = new_pg_schema(pg_database, "hosts")
    upgrade(pg_database, schema)  # as the operator does: vouchers db upgrade
    settings = Settings(environment="test", database_url=pg_database, database_schema=schema,
                        secret_key=TEST_SECRET, base_url="http://vouchers.test", background_tasks=False,
                        failed_lookup_limit=LOOKUP_LIMIT,
                        # Sized as README's "How pools are sized" asks: the hosts, two background
                        # processes and this test's own runtime share one server's 100 connections.
                        db_processes=HOSTS + 3, db_pool_size=6, db_max_overflow=4, db_driver_connections=3)
    cluster = Cluster(settings, tmp_path_factory.mktemp("hosts"))
    try:
        cluster.start_hosts(HOSTS)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def rt(cluster: Cluster) -> AsyncIterator[Runtime]:
    runtime = Runtime.create(cluster.settings)
    yield runtime
    await runtime.close()


@pytest.fixture(autouse=True)
def stop_workers(cluster: Cluster) -> Iterator[None]:
    yield
    stop_all(cluster.workers)
    cluster.workers = []


def application(n: int, slug: str) -> dict:
    return {"kvk_number": next_kvk(), "company_name": f"Firma {n}", "employees": 2, "postcode": "6811 AB",
            "contact_name": "Naam", "email": f"{slug}-{n}@example.org"}


async def test_a_rush_over_every_host_keeps_the_cap_exact(cluster: Cluster, rt: Runtime) -> None:
    slug = next(_slugs)
    await make_scheme(rt, slug=slug, max_places=15)
    token = await admin_token(rt)
    # Both ways in on every host: the driver's path, and (with an Idempotency-Key) the session's.
    answers = await fire([("POST", f"{cluster.url(n)}/api/v1/admin/schemes/{slug}/applications", {
        "headers": {**bearer(token), **({"Idempotency-Key": str(uuid.uuid4())} if n % 4 == 3 else {})},
        "json": application(n, slug)}) for n in range(120)])
    assert [r.status_code for r in answers] == [201] * 120, {r.status_code: r.text for r in answers}
    statuses = Counter(r.json()["status"] for r in answers)
    assert statuses == {"granted": 15, "waiting": 105}
    async with rt.sessionmaker() as session:
        scheme_apps = select(Application).where(Application.email.like(f"{slug}-%"))
        granted = await session.scalar(select(func.count()).select_from(Voucher).join(
            Application, Voucher.application_id == Application.id).where(Application.email.like(f"{slug}-%")))
        assert granted == 15
        waiting = sorted(a.waitlist_number for a in await session.scalars(scheme_apps) if a.status == "waiting")
        assert waiting == list(range(1, 106))  # each place in the queue handed out once, over all hosts
        assert await reconcile(session) == []


def form_token(page: httpx.Response) -> str:
    """The CSRF token a page's form carries."""
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert match, "no CSRF token in the form"
    return match.group(1)


async def _sign_in(http: httpx.AsyncClient, url: str, email: str) -> None:
    form = await http.get(f"{url}/coach/login")
    r = await http.post(f"{url}/coach/login", data={"email": email, "password": PASSWORD, "next": "/coach",
                                                    "_csrf_token": form_token(form)})
    assert r.status_code == 303 and r.headers["location"] == "/coach", r.text


async def test_a_session_and_its_csrf_token_from_one_host_work_on_the_others(cluster: Cluster, rt: Runtime) -> None:
    scheme = await make_scheme(rt, slug=next(_slugs))
    provider, _ = await make_provider(rt, scheme)
    email = await make_staff(rt, provider.id)
    # One browser, one cookie jar; the load balancer sends each request to another host.
    async with httpx.AsyncClient(timeout=30) as http:
        await _sign_in(http, cluster.url(0), email)
        page = await http.get(f"{cluster.url(1)}/coach/settings")
        assert page.status_code == 200 and "Coach &amp; Co" in page.text
        # The form came from one host; the browser sends it to another.
        r = await http.post(f"{cluster.url(2)}/coach/settings", data={"locale": "en", "_csrf_token": form_token(page)})
        assert r.status_code == 303 and r.headers["location"] == "/coach/settings?done=true", r.text
    async with rt.reader() as session:
        assert (await session.get_one(Provider, provider.id)).locale == "en"


async def test_signing_out_on_one_host_ends_the_session_on_the_others(cluster: Cluster, rt: Runtime) -> None:
    """A copy of the session cookie taken before signing out (a second tab, a stolen cookie) must
    not keep working on another host."""
    scheme = await make_scheme(rt, slug=next(_slugs))
    provider, _ = await make_provider(rt, scheme)
    email = await make_staff(rt, provider.id)
    async with httpx.AsyncClient(timeout=30) as http:
        await _sign_in(http, cluster.url(0), email)
        copy = dict(http.cookies.items())
        page = await http.get(f"{cluster.url(1)}/coach/settings")
        r = await http.post(f"{cluster.url(1)}/coach/logout", data={"_csrf_token": form_token(page)})
        assert r.status_code == 303
    async with httpx.AsyncClient(timeout=30, cookies=copy) as replay:
        for n in range(HOSTS):
            r = await replay.get(f"{cluster.url(n)}/coach/settings")
            assert r.status_code in (302, 303) and r.headers["location"].startswith("/coach/login"), (n, r.status_code)


async def test_a_bearer_token_works_on_every_host_and_its_revocation_at_once(cluster: Cluster, rt: Runtime) -> None:
    scheme = await make_scheme(rt, slug=next(_slugs))
    _, code = await make_voucher(rt, scheme)
    provider, token = await make_provider(rt, scheme)
    for n in range(HOSTS):  # every host now knows the token (and may remember it)
        r = httpx.get(f"{cluster.url(n)}/api/v1/vouchers/{code}", headers=bearer(token))
        assert r.status_code == 200, r.text
    async with rt.reader() as session:
        token_id = await session.scalar(select(ApiToken.id).where(ApiToken.provider_id == provider.id))
    revoked = cluster.cli(0, "token", "revoke", str(token_id))
    assert revoked.returncode == 0, revoked.stderr
    for n in range(HOSTS):
        r = httpx.get(f"{cluster.url(n)}/api/v1/vouchers/{code}", headers=bearer(token))
        assert r.status_code == 401, (n, r.status_code)


async def test_failed_lookups_are_counted_over_every_host(cluster: Cluster, rt: Runtime) -> None:
    scheme = await make_scheme(rt, slug=next(_slugs))
    _, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    unknown = format_code(rt.keys.code_for(rt.keys.new_salt()))  # well formed, but no voucher has it
    answers = []
    for n in range(LOOKUP_LIMIT + HOSTS):
        answers.append(httpx.get(f"{cluster.url(n)}/api/v1/vouchers/{unknown}", headers=bearer(token)).status_code)
    assert 429 not in answers[:LOOKUP_LIMIT] and answers[LOOKUP_LIMIT:] == [429] * HOSTS, answers
    # The right code is refused too, on every host, until the window has passed.
    for n in range(HOSTS):
        assert httpx.get(f"{cluster.url(n)}/api/v1/vouchers/{code}", headers=bearer(token)).status_code == 429


async def test_a_forwarded_clients_guesses_are_counted_over_every_host(cluster: Cluster) -> None:
    """Behind the proxy (``VOUCHERS_TRUSTED_PROXIES``), application numbers guessed by one client
    count on every host, under the client's address, not the proxy's: another client goes on."""
    guesser, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    answers = [httpx.get(f"{cluster.url(n)}/aanvraag/A{n:07d}", headers=guesser).status_code
               for n in range(LOOKUP_LIMIT + HOSTS)]
    assert answers == [404] * LOOKUP_LIMIT + [429] * HOSTS, answers
    assert httpx.get(f"{cluster.url(0)}/aanvraag/B0000000", headers=other).status_code == 404


async def test_an_idempotency_key_used_on_one_host_replays_on_the_others(cluster: Cluster, rt: Runtime) -> None:
    scheme = await make_scheme(rt, slug=next(_slugs))
    voucher, code = await make_voucher(rt, scheme)
    _, token = await make_provider(rt, scheme)
    headers = {**bearer(token), "Idempotency-Key": str(uuid.uuid4())}
    body = {"amount_cents": 2500, "category": "coaching", "reference": "F-hosts"}
    answers = [httpx.post(f"{cluster.url(n)}/api/v1/vouchers/{code}/redemptions", headers=headers, json=body)
               for n in range(HOSTS)]
    assert [r.status_code for r in answers] == [201] * HOSTS and all(r.json() == answers[0].json() for r in answers)
    other = httpx.post(f"{cluster.url(1)}/api/v1/vouchers/{code}/redemptions", headers=headers,
                       json={**body, "amount_cents": 100})
    assert other.status_code == 422
    async with rt.reader() as session:
        assert await session.scalar(select(func.count()).select_from(Redemption)
                                    .where(Redemption.voucher_id == voucher.id)) == 1
        assert (await session.get_one(Voucher, voucher.id)).balance_cents == 135000 - 2500


class HoldingSink(SmtpSink):
    """The tests' SMTP server, which keeps the ``hold_at``-th message waiting for its answer, as a
    slow mail server would: the sender is then killed in the middle of its batch, before the mail
    server has accepted that message."""

    def __init__(self, hold_at: int) -> None:
        super().__init__()
        self.hold_at = hold_at
        self.holding = threading.Event()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        if len(self.messages) == self.hold_at and not self.holding.is_set():
            self.holding.set()
            await asyncio.sleep(3600)  # cancelled when the sender's connection is gone
        return await super().handle_DATA(server, session, envelope)


async def test_mail_goes_out_once_when_a_worker_is_killed_mid_batch_and_another_takes_over(
        cluster: Cluster, rt: Runtime) -> None:
    slug = next(_slugs)
    await make_scheme(rt, slug=slug, max_places=300)
    token = await admin_token(rt)
    answers = await fire([("POST", f"{cluster.url(n)}/api/v1/admin/schemes/{slug}/applications",
                           {"headers": bearer(token), "json": application(n, slug)}) for n in range(150)])
    assert {r.status_code for r in answers} == {201}
    sink = HoldingSink(hold_at=40)
    sink.start()
    try:
        first = cluster.start_worker(sink)
        assert await asyncio.to_thread(sink.holding.wait, 60), first.output()
        first.kill()
        cluster.start_worker(sink)
        recipients = {f"{slug}-{n}@example.org" for n in range(150)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with rt.reader() as session:
                pending = await session.scalar(select(func.count()).select_from(OutboxMessage).where(
                    OutboxMessage.status != "sent"))
            if not pending:
                break
            await asyncio.sleep(0.2)
        assert pending == 0
        per_recipient = Counter(m["To"] for m in sink.messages if m["To"] in recipients)
        assert set(per_recipient) == recipients
        assert [to for to, count in per_recipient.items() if count != 1] == []
        assert max(Counter(m["Message-ID"] for m in sink.messages).values()) == 1
    finally:
        sink.stop()


async def test_two_background_processes_seal_one_audit_chain(cluster: Cluster, rt: Runtime) -> None:
    slug = next(_slugs)
    await make_scheme(rt, slug=slug, max_places=300)
    token = await admin_token(rt)
    sink = SmtpSink()
    sink.start()
    try:
        cluster.start_worker(sink)
        cluster.start_worker(sink)
        for round_ in range(3):  # writes on every host while both seal
            answers = await fire([("POST", f"{cluster.url(n)}/api/v1/admin/schemes/{slug}/applications",
                                   {"headers": bearer(token), "json": application(100 * round_ + n, slug)})
                                  for n in range(40)])
            assert {r.status_code for r in answers} == {201}
            await asyncio.sleep(0.3)
        from service.models_admin import AuditEntry

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with rt.reader() as session:
                unsealed = await session.scalar(select(func.count()).select_from(AuditEntry)
                                                .where(AuditEntry.chain_seq.is_(None)))
            if not unsealed:
                break
            await asyncio.sleep(0.2)
        assert unsealed == 0
        verified = cluster.cli(1, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        sink.stop()


async def test_two_background_processes_give_each_freed_place_once_in_order(cluster: Cluster, rt: Runtime) -> None:
    """Unused vouchers expire and their places go to the waiting list, while two background
    processes sweep at the same moment: each place is given once, to the first in line."""
    slug = next(_slugs)
    await make_scheme(rt, slug=slug, max_places=10)
    token = await admin_token(rt)
    answers = [httpx.post(f"{cluster.url(n)}/api/v1/admin/schemes/{slug}/applications", headers=bearer(token),
                          json=application(n, slug), timeout=30) for n in range(20)]
    assert [r.json()["status"] for r in answers] == ["granted"] * 10 + ["waiting"] * 10
    async with rt.sessionmaker() as session, session.begin():
        expiring = list(await session.scalars(select(Voucher.id).join(Application, Voucher.application_id ==
                                                                   Application.id)
                                              .where(Application.email.like(f"{slug}-%")).limit(4)))
        await session.execute(update(Voucher).where(Voucher.id.in_(expiring)).values(expires_at=utcnow()))
    sink = SmtpSink()
    sink.start()
    try:
        for _ in range(2):
            cluster.start_worker(sink, VOUCHERS_SWEEP_INTERVAL_SECONDS="0.3")

        async def promoted() -> list[int]:
            async with rt.reader() as session:
                return sorted(await session.scalars(select(Application.waitlist_number).where(
                    Application.email.like(f"{slug}-%"), Application.status == "granted",
                    Application.waitlist_number.is_not(None))))

        deadline = time.monotonic() + 30
        while len(await promoted()) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # both have swept again since: nothing more moves
        assert await promoted() == [1, 2, 3, 4]
        async with rt.reader() as session:
            scheme = await session.scalar(select(Scheme).where(Scheme.slug == slug))
            assert (scheme.places_used, scheme.waiting_count) == (10, 6)
            assert await session.scalar(select(func.count()).select_from(Voucher).where(
                Voucher.scheme_id == scheme.id, Voucher.status == "active")) == 10
            assert await reconcile(session) == []
    finally:
        sink.stop()


async def _until(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


async def test_a_process_hears_each_revocation_and_remembers_no_token_while_it_cannot(cluster: Cluster) -> None:
    """The web processes remember checked tokens only while they hear revocations; a notice sent
    in a transaction arrives when it commits, and not when it rolls back."""
    from service import revocations
    from service.db import transaction

    heard = revocations.Revocations(cluster.settings)
    deaf = revocations.Revocations(msgspec.structs.replace(
        cluster.settings, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"))
    listening = [asyncio.create_task(heard.listen()), asyncio.create_task(deaf.listen())]
    rt = Runtime.create(cluster.settings)
    try:
        await _until(lambda: heard.current() is not None)
        before = heard.current()
        with contextlib.suppress(RuntimeError):
            async with transaction(rt.sessionmaker) as session:
                await revocations.announce(session)
                raise RuntimeError("rolled back")
        async with transaction(rt.sessionmaker) as session:
            await revocations.announce(session)
            await asyncio.sleep(0.2)
            assert heard.current() == before  # not before the commit
        await _until(lambda: heard.current() == before + 1)
        assert deaf.current() is None
    finally:
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
        await rt.close()
