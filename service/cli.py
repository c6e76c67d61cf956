"""``vouchers``: every command an operator needs. Each one calls the same domain functions as the
API and the pages."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

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
            await rt.engine.dispose()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None


def _in_transaction(work: Callable[[Any], Awaitable[T]]) -> T:
    return _run(lambda rt: run_in_transaction(rt.sessionmaker, lambda session: work((rt, session))))


@click.group()
def main() -> None:
    """Run the Arnhem entrepreneur-voucher service. Configure with VOUCHERS_* variables."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes; use PostgreSQL for more than one.")
def serve(host: str, port: int, workers: int) -> None:
    """Serve the app with granian (production ASGI server). Access logs stay off: URLs carry codes."""
    from granian import Granian
    from granian.constants import Interfaces

    settings = _runtime().settings
    if workers > 1 and settings.is_sqlite:
        click.echo("Note: with SQLite, several workers share one file; PostgreSQL is advised.", err=True)
    Granian("service.asgi:app", address=host, port=port, workers=workers, interface=Interfaces.ASGI,
            log_access=False).serve()


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
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def scheme_load(file: Path) -> None:
    """Create a scheme from a TOML file, or update its rules."""
    try:
        spec = schemes.read_scheme_file(file)
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None

    async def work(args: Any) -> tuple[Scheme, bool]:
        _rt, session = args
        return await schemes.load_scheme(session, spec)

    loaded, created = _in_transaction(work)
    click.echo(f"{'created' if created else 'updated'} scheme {loaded.slug}")


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
@click.option("--scheme", "scheme_slug", help="Also enrol in this scheme.")
@click.option("--category", "categories", multiple=True, help="Category to enrol for (repeat).")
@click.option("--approve", is_flag=True, help="Approve the enrolment at once.")
def provider_add(name: str, kvk_number: str, email: str, iban: str, website: str | None, description: str,
                 scheme_slug: str | None, categories: tuple[str, ...], approve: bool) -> None:
    """Register a provider, optionally enrolled in (and approved for) a scheme."""
    try:
        details = msgspec.convert(
            {"name": name, "kvk_number": kvk_number, "email": email, "iban": iban, "website": website,
             "description": description}, providers.ProviderDetails)
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
    """Approve a provider's enrolment in a scheme."""

    async def work(args: Any) -> str:
        _rt, session = args
        enrolment = await providers.decide_enrolment(session, enrolment_id, approve=True)
        return f"enrolment {enrolment.id}: {enrolment.status}"

    click.echo(_in_transaction(work))


@provider.command("refuse")
@click.argument("enrolment_id", type=int)
@click.option("--reason", required=True)
def provider_refuse(enrolment_id: int, reason: str) -> None:
    """Refuse a provider's enrolment in a scheme."""

    async def work(args: Any) -> str:
        _rt, session = args
        enrolment = await providers.decide_enrolment(session, enrolment_id, approve=False, reason=reason)
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

    async def work(rt: Runtime) -> Any:
        async with rt.sessionmaker() as session:
            return await collect_snapshot(session, service_url=rt.settings.base_url)

    snapshot = _run(work)
    built = build_site(snapshot, out_dir, work_dir=Path("build/site-src"), site_url=site_url)
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


@main.command("demo")
def demo_command() -> None:
    """Development only: a demo provider, a coach token and sample vouchers to try."""
    from .demo import create_demo

    rt = _runtime()
    if rt.settings.environment != "development":
        raise click.ClickException("demo data only in development (VOUCHERS_ENVIRONMENT=development)")
    click.echo(_run(create_demo))



# --- coach issue: staff accounts, payouts, offers ---------------------------------------------

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

    async def work(args: Any) -> Any:
        _rt, session = args
        return await payouts.create_batch(session, start=period_start, end=period_end, debtor=debtor,
                                          created_by="cli")

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
        click.echo(payouts.statement_csv(st, headers=headers, labels={}, locale="en"), nl=False)
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


if __name__ == "__main__":
    main()
