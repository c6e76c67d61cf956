"""``vouchers``: every command an operator needs. Each one calls the same domain functions as the
API and the pages."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
import msgspec
from sqlalchemy import select

from . import applications, check, outbox, providers, schemes, sweep
from .db import run_in_transaction
from .errors import DomainError
from .models import Provider, Scheme
from .runtime import Runtime
from .settings import ConfigError, Settings

T = TypeVar("T")


def _runtime() -> Runtime:
    _audit_as_cli()
    try:
        return Runtime.create(Settings.from_env())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _run(work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run one async job with a fresh runtime; domain refusals become a clear error."""
    rt = _runtime()

    async def main() -> T:
        try:
            return await work(rt)
        finally:
            await rt.close()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None


def _in_transaction(work: Callable[[Any], Awaitable[T]]) -> T:
    return _run(lambda rt: run_in_transaction(rt.sessionmaker, lambda session: work((rt, session))))


@click.group()
def main() -> None:
    """Run the Arnhem entrepreneur-voucher service. Configure with VOUCHERS_* variables."""


def _port_free(host: str, port: int) -> None:
    """Refuse, in one line that says what to do, a port another program holds: the server would
    otherwise fail later with a long traceback."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # A server stopped a moment ago leaves its port in TIME_WAIT; that one is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"port {port} on {host} is not free ({exc.strerror}): stop the program that uses it, "
                f"or take another port: make run PORT={port + 1} (or vouchers serve --port {port + 1})") from None


def _connections_fit(workers: int, *, background: bool) -> None:
    """Refuse to start, in one message with the numbers and what to change, when the processes
    would open more connections than PostgreSQL takes (``service.pools``)."""
    from . import pools

    try:
        settings = Settings.from_env()
        processes = workers + (1 if background and settings.background_tasks else 0)
        asyncio.run(pools.check(settings, processes))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        raise click.ClickException(
            f"PostgreSQL did not answer the check of its connections ({type(exc).__name__}: {exc}): "
            "start it, or check VOUCHERS_DATABASE_URL") from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes; use PostgreSQL for more than one.")
@click.option("--check", is_flag=True, help="Only check that the port is free, then exit.")
def serve(host: str, port: int, workers: int, check: bool) -> None:
    """Serve the app with granian (production ASGI server), and the background work (mail, sweep,
    audit sealing) in one process beside it. Access logs stay off: URLs carry codes.

    Without VOUCHERS_BASE_URL, links in mail and QR codes point at this host and port. Refuses a
    database whose migrations are behind (run `vouchers db upgrade`); gives the web processes one
    PROMETHEUS_MULTIPROC_DIR, so /metrics adds up all of them."""
    import os

    _port_free(host, port)
    _connections_fit(workers, background=True)
    if check:
        return
    if not os.environ.get("VOUCHERS_BASE_URL"):
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        os.environ["VOUCHERS_BASE_URL"] = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"

    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    from . import worker

    from . import logs

    settings = _migrated_runtime().settings
    logs.configure(settings)
    if workers > 1 and settings.is_sqlite:
        click.echo("Note: with SQLite, several workers share one file; PostgreSQL is advised.", err=True)
    metrics_dir = _metrics_dir()
    broker = _development_broker(os.environ["VOUCHERS_BASE_URL"]) if (
        settings.environment == "development" and not settings.eherkenning_issuer) else None
    background = worker.Beside(settings.background_nice).start() if settings.background_tasks else None
    os.environ["VOUCHERS_BACKGROUND_TASKS"] = "false"  # the web processes leave it to that one
    try:
        Granian("service.asgi:app", address=host, port=port, workers=workers, interface=Interfaces.ASGI,
                log_access=False, log_level=LogLevels(settings.log_level.lower()),
                log_dictconfig=logs.granian_config(settings)).serve()
    finally:
        if background is not None:
            background.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
        metrics_dir()


def _metrics_dir() -> Callable[[], None]:
    """Set up PROMETHEUS_MULTIPROC_DIR for the web processes, whose counters /metrics adds up
    (``service.metrics``): a fresh folder of this server's own, removed when it stops; or the
    folder the operator named, emptied of an earlier run's files (one folder per server)."""
    import os
    import shutil
    import tempfile

    chosen = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        for old in Path(chosen).glob("*.db"):
            old.unlink()
        return lambda: None
    made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vouchers-metrics-")
    return lambda: shutil.rmtree(made, ignore_errors=True)


#: Which group of the development broker's staff page gives which role.
DEV_STAFF_ROLES = ("vouchers-beheerders=beheerder,vouchers-beoordelaars=beoordelaar,"
                   "vouchers-financieel=financieel,vouchers-lezers=lezer")


def _development_broker(base_url: str) -> Any:
    """Start the development broker (``vouchers dev-broker``) on a free loopback port beside the
    server, and point the eHerkenning and staff sign-in settings of the web processes at it."""
    import os
    import secrets
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret, staff_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    process = subprocess.Popen([
        sys.executable, "-m", "service.devbroker", "--port", str(port), "--parent", str(os.getpid()),
        "--client", f"vouchers:{secret}@{base_url}", "--staff-client", f"vouchers-staff:{staff_secret}@{base_url}"])
    issuer = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(issuer + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    os.environ.update({
        "VOUCHERS_EHERKENNING_ISSUER": issuer, "VOUCHERS_EHERKENNING_CLIENT_ID": "vouchers",
        "VOUCHERS_EHERKENNING_CLIENT_SECRET": secret, "VOUCHERS_STAFF_OIDC_ISSUER": issuer,
        "VOUCHERS_STAFF_OIDC_CLIENT_ID": "vouchers-staff", "VOUCHERS_STAFF_OIDC_CLIENT_SECRET": staff_secret,
    })
    os.environ.setdefault("VOUCHERS_STAFF_OIDC_ROLES", DEV_STAFF_ROLES)
    click.echo(f"Development broker (eHerkenning and staff sign-in, not for production): {issuer}")
    return process


@main.command("dev-broker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                              "help_option_names": []})
@click.pass_context
def dev_broker(ctx: click.Context) -> None:
    """Development only: an OpenID Connect provider on loopback that signs anyone in as a test firm
    (eHerkenning) or a staff member; `vouchers serve` starts one in development. Options:
    `vouchers dev-broker --help`."""
    from . import devbroker

    devbroker.main(list(ctx.args))


@main.command("worker")
@click.option("--nice", default=0, show_default=True, type=click.IntRange(0, 19),
              help="Lower this process's CPU priority by this much.")
@click.option("--parent", type=int, hidden=True, help="Stop when this process is gone (set by serve).")
def worker_command(nice: int, parent: int | None) -> None:
    """Run only the background work (mail, sweep, audit sealing) until stopped, for hosts whose web
    processes run without it (VOUCHERS_BACKGROUND_TASKS=false)."""
    from . import worker

    _connections_fit(1, background=False)
    worker.main(_migrated_runtime().settings, nice=nice, parent=parent)


def _migrated_runtime() -> Runtime:
    """A runtime, or a one-line refusal when the database's migrations are behind this code."""
    from .health import refuse_if_behind

    rt = _runtime()
    try:
        reason = refuse_if_behind(rt)
    except Exception as exc:  # unreachable, refused login, no such database
        raise click.ClickException(f"cannot reach the database of VOUCHERS_DATABASE_URL: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if reason:
        raise click.ClickException(reason)
    return rt


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables to the newest version."""
    from .migrate import upgrade

    settings = _runtime().settings
    if settings.is_sqlite:
        Path(settings.database_url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, settings.database_schema)
    click.echo("database is up to date")


@main.group()
def scheme() -> None:
    """Schemes (regelingen)."""


@scheme.command("load")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def scheme_load(files: tuple[Path, ...]) -> None:
    """Create schemes from TOML files, or update their rules. Every file is read and checked
    before the first is loaded; each is loaded in a transaction of its own."""
    from .progress import progress

    try:
        specs = [schemes.read_scheme_file(file) for file in files]
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None

    with progress("scheme load", total=len(specs), unit="files") as shown:
        for spec in specs:
            async def work(args: Any, spec: Any = spec) -> tuple[Scheme, bool]:
                _rt, session = args
                return await schemes.load_scheme(session, spec)

            loaded, created = _in_transaction(work)
            click.echo(f"{'created' if created else 'updated'} scheme {loaded.slug}")
            shown.advance()


@scheme.command("draw")
@click.argument("slug")
@click.option("--seed", required=True, help="The seed whose SHA-256 was published before the window opened.")
def scheme_draw(slug: str, seed: str) -> None:
    """Draw a lottery scheme after its window and print the order."""

    async def work(args: Any) -> applications.DrawResult:
        rt, session = args
        return await applications.draw(session, rt, await schemes.get_scheme(session, slug), seed)

    result = _in_transaction(work)
    click.echo(msgspec.json.format(msgspec.json.encode(result)).decode())


@scheme.command("summary")
@click.argument("slug")
def scheme_summary(slug: str) -> None:
    """Print a scheme's public figures as JSON."""

    async def work(rt: Runtime) -> schemes.SchemeSummary:
        async with rt.sessionmaker() as session:
            return await schemes.summary(session, await schemes.get_scheme(session, slug))

    click.echo(msgspec.json.format(msgspec.json.encode(_run(work))).decode())


@main.group()
def provider() -> None:
    """Providers (aanbieders)."""


@provider.command("add")
@click.option("--name", required=True)
@click.option("--kvk", "kvk_number", required=True, help="KvK number, 8 digits.")
@click.option("--email", required=True)
@click.option("--iban", required=True)
@click.option("--website")
@click.option("--description", default="")
@click.option("--locale", type=click.Choice(["nl", "en"]), default="nl", show_default=True,
              help="The language of the mails to the provider.")
@click.option("--scheme", "scheme_slug", help="Also enrol in this scheme.")
@click.option("--category", "categories", multiple=True, help="Category to enrol for (repeat).")
@click.option("--approve", is_flag=True, help="Approve the enrolment at once.")
def provider_add(name: str, kvk_number: str, email: str, iban: str, website: str | None, description: str,
                 locale: str, scheme_slug: str | None, categories: tuple[str, ...], approve: bool) -> None:
    """Register a provider, optionally enrolled in (and approved for) a scheme."""
    try:
        details = msgspec.convert(
            {"name": name, "kvk_number": kvk_number, "email": email, "iban": iban, "website": website,
             "description": description, "locale": locale}, providers.ProviderDetails)
    except msgspec.ValidationError as exc:
        raise click.ClickException(str(exc)) from None

    async def work(args: Any) -> str:
        _rt, session = args
        added = await providers.add_provider(session, details)
        text = f"provider {added.id} ({added.slug})"
        if scheme_slug:
            the_scheme = await schemes.get_scheme(session, scheme_slug)
            enrolment = await providers.enrol(session, the_scheme, added, list(categories) or list(the_scheme.categories))
            if approve:
                await providers.decide_enrolment(session, enrolment.id, approve=True)
            text += f", enrolment {enrolment.id} {'approved' if approve else 'pending'}"
        return text

    click.echo(_in_transaction(work))


@provider.command("approve")
@click.argument("enrolment_id", type=int)
def provider_approve(enrolment_id: int) -> None:
    """Approve a provider's enrolment in a scheme; the provider is mailed."""
    from .interventions import decide_provider

    async def work(args: Any) -> str:
        rt, session = args
        enrolment = await decide_provider(session, rt, enrolment_id, approve=True)
        return f"enrolment {enrolment.id}: {enrolment.status}"

    click.echo(_in_transaction(work))


@provider.command("refuse")
@click.argument("enrolment_id", type=int)
@click.option("--reason", required=True)
def provider_refuse(enrolment_id: int, reason: str) -> None:
    """Refuse a provider's enrolment in a scheme; the provider is mailed the reason."""
    from .interventions import decide_provider

    async def work(args: Any) -> str:
        rt, session = args
        enrolment = await decide_provider(session, rt, enrolment_id, approve=False, reason=reason)
        return f"enrolment {enrolment.id}: {enrolment.status}"

    click.echo(_in_transaction(work))


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(["coach", "admin"]), required=True)
@click.option("--name", required=True, help="Who or what uses the token.")
@click.option("--provider", "provider_slug", help="Provider slug (required for coach tokens).")
def token_create(role: str, name: str, provider_slug: str | None) -> None:
    """Create an API token and print it once; only its hash is kept."""

    async def work(args: Any) -> str:
        rt, session = args
        provider_id = None
        if provider_slug:
            provider_id = await session.scalar(select(Provider.id).where(Provider.slug == provider_slug))
            if provider_id is None:
                raise click.ClickException(f"no provider {provider_slug!r}")
        return await providers.create_token(session, rt, role=role, name=name, provider_id=provider_id)

    click.echo(_in_transaction(work))


@token.command("list")
def token_list() -> None:
    """Every API token: id, role, name, provider, whether it is revoked (never the token itself)."""
    from .models import ApiToken

    async def work(rt: Runtime) -> list[str]:
        async with rt.reader() as session:
            rows = await session.scalars(select(ApiToken).order_by(ApiToken.id))
            return [f"{t.id}\t{t.role}\t{t.name}\tprovider={t.provider_id or '-'}\t"
                    f"{'revoked ' + t.revoked_at.isoformat() if t.revoked_at else 'active'}" for t in rows]

    for line in _run(work):
        click.echo(line)


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke a token; every server refuses it at once (on SQLite within 15 seconds)."""

    async def work(args: Any) -> str:
        _rt, session = args
        revoked = await providers.revoke_token(session, token_id)
        return f"token {revoked.id} ({revoked.name}) revoked"

    click.echo(_in_transaction(work))


@main.command("check")
def check_command() -> None:
    """Reconcile stored figures with the ledger; exit 1 on any difference."""

    async def work(rt: Runtime) -> list[str]:
        async with rt.sessionmaker() as session, session.begin():
            return await check.reconcile(session)

    problems = _run(work)
    for problem in problems:
        click.echo(problem)
    if problems:
        sys.exit(1)
    click.echo("ledger and figures agree")


@main.command("sweep")
def sweep_command() -> None:
    """Lapse old holds, expire vouchers, promote the waiting list (also runs in the server)."""
    report = _run(lambda rt: sweep.sweep(rt))
    click.echo(json.dumps(msgspec.to_builtins(report)))


@main.group("registry")
def registry_group() -> None:
    """The trade register (KvK)."""


@registry_group.command("retry")
def registry_retry() -> None:
    """Decide the applications that are waiting for the trade register (also runs in the sweep)."""
    from . import registry

    report = _run(lambda rt: registry.retry_pending(rt))
    click.echo(f"decided {report.decided}, still waiting {report.still_pending}")


@main.group("outbox")
def outbox_group() -> None:
    """Mail."""


@outbox_group.command("send")
def outbox_send() -> None:
    """Send the mail that is due now (also runs in the server)."""
    click.echo(f"sent {_run(lambda rt: outbox.send_due(rt, batch=500))}")


@main.group()
def site() -> None:
    """The public information site (mkdocs)."""


@site.command("build")
@click.option("--out", "out_dir", default="build/site", show_default=True, type=click.Path(path_type=Path))
@click.option("--site-url", help="Where the site will be served, e.g. https://www.arnhem.nl/ondernemersvoucher/")
def site_build(out_dir: Path, site_url: str | None) -> None:
    """Take a public snapshot of the figures and providers and build the static site."""
    from .sitegen import build_site
    from .sitegen.collect import collect_snapshot
    from .sitegen.daily import record_day

    async def work(rt: Runtime) -> Any:
        await record_day(rt.sessionmaker)
        async with rt.sessionmaker() as session:
            return await collect_snapshot(session, service_url=rt.settings.base_url)

    from .progress import progress

    with progress("site build", total=2, unit="steps (figures, pages)") as shown:
        snapshot = _run(work)
        shown.advance()
        built = build_site(snapshot, out_dir, work_dir=Path("build/site-src"), site_url=site_url)
        shown.advance()
    click.echo(f"site built in {built}")


@site.command("serve")
@click.option("--dir", "site_dir", default="build/site", show_default=True, type=click.Path(path_type=Path))
@click.option("--port", default=8001, show_default=True, type=int)
def site_serve(site_dir: Path, port: int) -> None:
    """Preview the built site on 127.0.0.1."""
    from .sitegen import serve_site

    if not (site_dir / "index.html").exists():
        raise click.ClickException(f"no site in {site_dir}; run `vouchers site build` first")
    click.echo(f"serving {site_dir} on http://127.0.0.1:{port}/")
    serve_site(site_dir, port=port)


def _site_dir() -> Path:
    try:
        return Path(Settings.from_env().site_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@site.command("rollback")
def site_rollback() -> None:
    """Serve the previous build of the live site (VOUCHERS_SITE_DIR) again, and pause automatic
    builds until `vouchers site resume`. A second rollback undoes the first."""
    from .sitegen import live

    try:
        now_live = live.rollback(_site_dir())
    except live.SiteDirError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"serving {now_live} again; automatic builds paused (`vouchers site resume` starts them)")


@site.command("resume")
def site_resume() -> None:
    """Let the background process build the site again after a rollback."""
    from .sitegen import live

    live.resume(_site_dir())
    click.echo("automatic builds resumed; the next round builds if the figures or templates changed")


@site.command("publish")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "source", type=click.Path(file_okay=False, path_type=Path),
              help="A site folder or a built site (default: the live site in VOUCHERS_SITE_DIR).")
def site_publish(dest: Path, source: Path | None) -> None:
    """Copy the live site to DEST, rsync style: only changed files, each replaced atomically, and
    files the site no longer has deleted. Run it from cron or after a build to push the site to a
    web server's folder or a mounted share."""
    from .sitegen import live

    try:
        report = live.publish(source or _site_dir(), dest)
    except live.SiteDirError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"published to {dest}: {report.copied} copied, {report.unchanged} unchanged, "
               f"{report.deleted} deleted")


def _development_only() -> None:
    try:
        environment = Settings.from_env().environment
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if environment != "development":
        raise click.ClickException("demo data only in development (VOUCHERS_ENVIRONMENT=development)")


@main.group("demo", invoke_without_command=True)
@click.pass_context
def demo_command(ctx: click.Context) -> None:
    """Development only: a demo provider with offers, a coach token and sample vouchers to try."""
    from .demo import create_demo

    _development_only()
    if ctx.invoked_subcommand is None:
        click.echo(_run(create_demo))


@demo_command.command("credentials")
def demo_credentials_command() -> None:
    """Print fresh demo credentials: a new coach password and token, the staff setup link, sample codes."""
    from .demo import DemoMissing, demo_credentials

    try:
        click.echo(_run(demo_credentials))
    except DemoMissing as exc:
        raise click.ClickException(str(exc)) from None



# --- coaches: staff accounts, payouts, offers ---------------------------------------------

@provider.command("user-add")
@click.option("--provider", "provider_slug", required=True, help="Provider slug.")
@click.option("--email", required=True)
@click.option("--name", required=True, help="The staff member's name.")
def provider_user_add(provider_slug: str, email: str, name: str) -> None:
    """Create a staff account for a provider and print its first password once."""
    from . import staff

    password = staff.new_password()

    async def work(args: Any) -> str:
        _rt, session = args
        provider_id = await session.scalar(select(Provider.id).where(Provider.slug == provider_slug))
        if provider_id is None:
            raise click.ClickException(f"no provider {provider_slug!r}")
        user = await staff.create_user(session, provider_id=provider_id, email=email, name=name, password=password)
        return f"account {user.id} for {user.email}; password (shown once): {password}"

    click.echo(_in_transaction(work))


@main.group("payout")
def payout_group() -> None:
    """Paying providers."""


def _period(start: str | None, end: str | None, month: str | None) -> tuple[Any, Any]:
    import datetime as dt

    from . import payouts

    if month:
        return payouts.month_period(month)
    if not (start and end):
        raise click.UsageError("give --month, or --from and --to")
    return dt.date.fromisoformat(start), dt.date.fromisoformat(end)


@payout_group.command("batch")
@click.option("--from", "start", help="First day (YYYY-MM-DD).")
@click.option("--to", "end", help="Day after the last day (YYYY-MM-DD), exclusive.")
@click.option("--month", help="Instead of --from/--to: a month, YYYY-MM.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--debtor-name", envvar="VOUCHERS_PAYOUT_DEBTOR_NAME", default="Gemeente Arnhem", show_default=True)
@click.option("--debtor-iban", envvar="VOUCHERS_PAYOUT_DEBTOR_IBAN", required=True)
@click.option("--debtor-bic", envvar="VOUCHERS_PAYOUT_DEBTOR_BIC")
def payout_batch(start: str | None, end: str | None, month: str | None, out: Path, debtor_name: str,
                 debtor_iban: str, debtor_bic: str | None) -> None:
    """Pay every provider what is due for a finished period; write the SEPA pain.001 file."""
    from . import payouts

    period_start, period_end = _period(start, end, month)
    debtor = payouts.Debtor(name=debtor_name, iban=debtor_iban, bic=debtor_bic)

    from .progress import progress

    with progress("payout batch", unit="steps") as shown:
        async def work(args: Any) -> Any:
            _rt, session = args
            return await payouts.create_batch(session, start=period_start, end=period_end, debtor=debtor,
                                              created_by="cli", progress=shown.update)

        batch = _in_transaction(work)
    out.write_bytes(batch.sepa_xml)
    click.echo(msgspec.json.format(msgspec.json.encode(payouts.batch_summary(batch))).decode())


@payout_group.command("export")
@click.argument("batch_id", type=int)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def payout_export(batch_id: int, out: Path) -> None:
    """Write a batch's stored SEPA file again, byte for byte (a batch never changes)."""
    from .models import PayoutBatch

    async def work(rt: Runtime) -> bytes:
        async with rt.sessionmaker() as session:
            batch = await session.get(PayoutBatch, batch_id)
            if batch is None:
                raise click.ClickException(f"no batch {batch_id}")
            return batch.sepa_xml

    out.write_bytes(_run(work))
    click.echo(f"wrote {out}")


@payout_group.command("statement")
@click.option("--provider", "provider_slug", required=True)
@click.option("--month", help="YYYY-MM; the current month when left out.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of JSON.")
def payout_statement(provider_slug: str, month: str | None, as_csv: bool) -> None:
    """Print a provider's monthly statement."""
    from . import payouts

    start, end = payouts.month_period(month)

    async def work(rt: Runtime) -> Any:
        async with rt.sessionmaker() as session:
            provider_id = await session.scalar(select(Provider.id).where(Provider.slug == provider_slug))
            if provider_id is None:
                raise click.ClickException(f"no provider {provider_slug!r}")
            return await payouts.statement(session, provider_id, start, end)

    st = _run(work)
    if as_csv:
        headers = ["date", "kind", "redemption", "scheme", "category", "reference", "invoice", "paid", "batch"]
        click.echo(payouts.statement_csv(st, headers=headers, labels={}), nl=False)
    else:
        click.echo(msgspec.json.format(msgspec.json.encode(st)).decode())


@main.group("offer")
def offer_group() -> None:
    """Providers' offers."""


@offer_group.command("hide")
@click.argument("offer_id", type=int)
@click.option("--reason", required=True)
def offer_hide(offer_id: int, reason: str) -> None:
    """Hide an offer from entrepreneurs and the public site (the municipality's decision)."""
    from . import offers

    async def work(args: Any) -> str:
        _rt, session = args
        offer = await offers.hide_offer(session, offer_id, by="municipality", reason=reason)
        return f"offer {offer.id} hidden"

    click.echo(_in_transaction(work))


# --- municipality staff: staff accounts, audit log, privacy, interventions, reports ----------

def _audit_as_cli() -> None:
    """Everything a command changes is recorded in the audit log as done by ``cli:<user>``."""
    import getpass

    from . import audit

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    audit.set_context(f"cli:{user}", "local")


@main.group("staff")
def staff_group() -> None:
    """Municipality staff accounts (roles beheerder, beoordelaar, financieel, lezer)."""


@staff_group.command("add")
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(["beheerder", "beoordelaar", "financieel", "lezer"]))
@click.option("--name", default="", help="The staff member's name.")
def staff_add(email: str, role: str, name: str) -> None:
    """Create an account and print its one-time setup link (password and authenticator app)."""
    from . import municipality

    async def work(args: Any) -> str:
        rt, session = args
        user = await municipality.create_staff(session, rt, email=email, name=name, role=role)
        link = await municipality.setup_link(session, rt, user)
        return (f"account {user.id} for {user.email} ({user.role})\n"
                f"setup link (works once, for {municipality.SETUP_HOURS} hours): {link}")

    click.echo(_in_transaction(work))


@staff_group.command("reset")
@click.option("--email", required=True)
def staff_reset(email: str) -> None:
    """A lost phone or password: new authenticator key and setup link; the old password stops working."""
    from . import municipality

    async def work(args: Any) -> str:
        rt, session = args
        user = await municipality.reset_setup(session, rt, email)
        return f"setup link for {user.email}: {await municipality.setup_link(session, rt, user)}"

    click.echo(_in_transaction(work))


@staff_group.command("disable")
@click.option("--email", required=True)
@click.option("--enable", is_flag=True, help="Enable the account again instead.")
def staff_disable(email: str, enable: bool) -> None:
    """Stop (or allow again) an account from signing in."""
    from . import municipality

    async def work(args: Any) -> str:
        _rt, session = args
        user = await municipality.set_disabled(session, email, not enable)
        return f"{user.email}: {'enabled' if enable else 'disabled'}"

    click.echo(_in_transaction(work))


@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Seal what is waiting, then check the hash chain; exit 1 if any entry was changed,
    inserted or removed."""
    from . import audit

    async def work(rt: Runtime) -> Any:
        await audit.seal_all(rt.sessionmaker)
        async with rt.sessionmaker() as session:
            return await audit.verify(session)

    result = _run(work)
    for problem in result.problems:
        click.echo(problem)
    if not result.ok:
        sys.exit(1)
    click.echo(f"audit log intact: {result.entries} entries, head {result.head_hash}")


@audit_group.command("head")
def audit_head() -> None:
    """Print the chain's last place and hash; keep them outside the database to anchor the chain."""
    from .models_admin import AuditHead

    async def work(rt: Runtime) -> str:
        async with rt.sessionmaker() as session:
            head = await session.get(AuditHead, 1)
            return f"{head.seq} {head.hash}" if head else "0 " + "0" * 64

    click.echo(_run(work))


@main.group("privacy")
def privacy_group() -> None:
    """Personal data under the AVG."""


@privacy_group.command("purge")
@click.option("--after-days", type=click.IntRange(0), envvar="VOUCHERS_PRIVACY_RETENTION_DAYS", default=730,
              show_default=True, help="Days after a scheme ends that applicants' personal data is kept.")
def privacy_purge(after_days: int) -> None:
    """Erase or pseudonymise applicants' personal data of schemes that ended long enough ago."""
    from . import privacy
    from .progress import progress

    with progress("privacy purge", unit="applications") as shown:
        async def work(args: Any) -> Any:
            rt, session = args
            return await privacy.purge(session, rt, after_days=after_days, progress=shown.update)

        report = _in_transaction(work)
    click.echo(msgspec.json.encode(report).decode())


@privacy_group.command("export")
@click.argument("kvk_number")
def privacy_export(kvk_number: str) -> None:
    """Print, as JSON, everything held about one KvK number (a data-subject request)."""
    from . import privacy
    from .progress import progress

    async def work(args: Any) -> Any:
        rt, session = args
        return await privacy.export_subject(session, rt, kvk_number)

    with progress("privacy export", total=1, unit="subjects") as shown:
        found = _in_transaction(work)
        shown.advance()
    click.echo(msgspec.json.format(msgspec.json.encode(found)).decode())


@main.group("voucher")
def voucher_group() -> None:
    """The municipality's interventions on vouchers."""


@voucher_group.command("revoke")
@click.argument("voucher_id", type=int)
@click.option("--reason", required=True)
def voucher_revoke(voucher_id: int, reason: str) -> None:
    """Revoke a voucher: unspent money and an unused place go back; the holder is mailed."""
    from . import interventions

    async def work(args: Any) -> str:
        rt, session = args
        voucher = await interventions.revoke(session, rt, voucher_id, reason=reason)
        return f"voucher {voucher.id}: {voucher.status}"

    click.echo(_in_transaction(work))


@voucher_group.command("extend")
@click.argument("voucher_id", type=int)
@click.option("--until", required=True, help="Last day it can be used, YYYY-MM-DD.")
@click.option("--reason", required=True)
def voucher_extend(voucher_id: int, until: str, reason: str) -> None:
    """Let a voucher be used longer; the holder is mailed."""
    import datetime as dt

    from . import interventions

    try:
        day = dt.date.fromisoformat(until)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--until") from None

    async def work(args: Any) -> str:
        _rt, session = args
        voucher = await interventions.extend_voucher(session, voucher_id, until=day, reason=reason)
        from . import validity

        return f"voucher {voucher.id}: valid up to and including {validity.last_day(voucher.expires_at).isoformat()}"

    click.echo(_in_transaction(work))


@voucher_group.command("reverse-redemption")
@click.argument("redemption_id", type=int)
@click.option("--reason", required=True)
def voucher_reverse(redemption_id: int, reason: str) -> None:
    """Reverse any redemption (the municipality may at any time); the provider is mailed."""
    from . import interventions

    async def work(args: Any) -> str:
        _rt, session = args
        redemption = await interventions.reverse(session, redemption_id, reason=reason)
        return f"redemption {redemption.id} reversed"

    click.echo(_in_transaction(work))


@scheme.command("close")
@click.argument("slug")
@click.option("--reason", required=True)
def scheme_close(slug: str, reason: str) -> None:
    """Close a scheme early: no more applications, redemptions or vouchers."""
    from . import interventions

    async def work(args: Any) -> str:
        _rt, session = args
        found = await schemes.get_scheme(session, slug)
        closed = await interventions.close_scheme(session, found.id, reason=reason)
        return f"scheme {closed.slug} closed at {closed.closed_at.isoformat() if closed.closed_at else ''}"

    click.echo(_in_transaction(work))


@scheme.command("reserve")
@click.argument("slug")
@click.option("--amount-cents", required=True, type=click.IntRange(1))
@click.option("--to-budget", is_flag=True, help="Move from the reserve to the budget (default: to the reserve).")
@click.option("--memo", required=True, help="Why.")
def scheme_reserve(slug: str, amount_cents: int, to_budget: bool, memo: str) -> None:
    """Move money between a scheme's budget and its reserve."""
    from . import interventions

    async def work(args: Any) -> str:
        _rt, session = args
        found = await schemes.get_scheme(session, slug)
        moved = await interventions.move_money(session, found.id, amount_cents, to_reserve=not to_budget, memo=memo)
        return f"budget {moved.budget_cents}, reserve {moved.reserve_cents}"

    click.echo(_in_transaction(work))


@scheme.command("report")
@click.argument("slug")
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of JSON.")
def scheme_report(slug: str, as_csv: bool) -> None:
    """The report for the council (no personal data)."""
    from . import reports

    async def work(rt: Runtime) -> Any:
        async with rt.sessionmaker() as session:
            return await reports.council_report(session, await schemes.get_scheme(session, slug))

    report = _run(work)
    if as_csv:
        labels = {"section": "section", "item": "item", "euros": "amount_euros", "count": "count"}
        click.echo(reports.report_csv(report, labels), nl=False)
    else:
        click.echo(msgspec.json.format(msgspec.json.encode(report)).decode())


@main.group("application")
def application_group() -> None:
    """Applications the trade register could not decide."""


@application_group.command("decide")
@click.argument("public_id")
@click.option("--approve/--refuse", required=True)
@click.option("--reason", default="", help="Required when refusing; mailed to the applicant.")
def application_decide(public_id: str, approve: bool, reason: str) -> None:
    """Approve (the figures were checked) or refuse an undecided application."""
    from . import interventions
    from .models import Application

    async def work(args: Any) -> str:
        rt, session = args
        application_id = await session.scalar(select(Application.id).where(Application.public_id == public_id))
        if application_id is None:
            raise click.ClickException(f"no application {public_id!r}")
        decided = await interventions.decide_application(session, rt, application_id, approve=approve, reason=reason)
        return f"application {decided.public_id}: {decided.status}"

    click.echo(_in_transaction(work))



class _BackupGroup(click.Group):
    """``vouchers backup FILE`` makes a backup; ``vouchers backup verify FILE`` checks one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["make", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("vouchers backup", "FILE | verify FILE")


@main.group("backup", cls=_BackupGroup)
def backup_group() -> None:
    """Back up the database to FILE while the service runs (SQLite: its online backup API;
    PostgreSQL: pg_dump's custom format), or `verify FILE`: restore it into a scratch database and
    run `vouchers check` and `vouchers audit verify` there."""


def _backup_settings() -> Settings:
    _audit_as_cli()
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@backup_group.command("make", hidden=True)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def backup_make(file: Path) -> None:
    """Back up the database to FILE (replaced only once the backup is complete)."""
    from . import backup

    try:
        backup.backup(_backup_settings(), file)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up to {file} ({file.stat().st_size} bytes)")


@backup_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_verify(file: Path) -> None:
    """Restore FILE into a scratch database (removed afterwards), run `vouchers check` and
    `vouchers audit verify` on it; exit 1 if either finds something wrong."""
    from . import backup

    try:
        results = backup.verify(_backup_settings(), file)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    for command, code, output in results:
        click.echo(f"{command}: {'ok' if code == 0 else f'FAILED (exit {code})'}")
        for line in output.splitlines():
            click.echo(f"  {line}")
    if any(code != 0 for _, code, _ in results):
        sys.exit(1)
    click.echo(f"{file} restores, and its books and audit log are whole")


@main.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Restore even though a background process was seen moments ago.")
def restore_command(file: Path, yes: bool, force: bool) -> None:
    """Replace the database's contents with the backup in FILE. Stop the servers and workers
    first; afterwards run `vouchers db upgrade` if the backup is of an older version."""
    from . import backup
    from .health import refuse_if_behind, worker_last_seen

    settings = _backup_settings()
    try:
        seen = worker_last_seen(Runtime.create(settings))
    except Exception:  # noqa: BLE001 - an empty or older database has no heartbeat to read
        seen = None
    if seen is not None and seen < 2 * settings.heartbeat_interval_seconds and not force:
        raise click.ClickException(
            f"a background process wrote its heartbeat {seen:.0f} s ago, so the service still runs: stop "
            f"`vouchers serve` and `vouchers worker` on every host first, or add --force")
    if not yes:
        click.confirm(f"Replace everything in the database with {file}?", abort=True)
    try:
        backup.restore(settings, file)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored from {file}")
    reason = refuse_if_behind(Runtime.create(settings))
    if reason:
        click.echo(reason, err=True)


if __name__ == "__main__":
    main()
