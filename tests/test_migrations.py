"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from service.migrate import upgrade
from service.models import Base


async def test_migrations_match_the_models(database) -> None:
    url, schema = database
    await asyncio.to_thread(upgrade, url, schema)
    options = {"connect_args": {"server_settings": {"search_path": schema}}} if schema else {}
    engine = create_async_engine(url, **options)
    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
    await engine.dispose()
    assert diff == []


async def test_redeemed_figure_and_closing_survive_migration_0007_both_ways(database, settings) -> None:
    """0007 moved the scheme's redeemed figure to the enrolments and the close to a mark on them:
    down to 0006 the figure is summed back onto the scheme, up again the mark is taken from the
    scheme's closing time."""
    from alembic import command
    from sqlalchemy import text

    from service.interventions import close_scheme
    from service.db import run_in_transaction
    from service.migrate import alembic_config
    from service.runtime import Runtime
    from tests.helpers import make_provider, make_scheme, make_voucher
    from tests.test_ledger import redeem

    url, schema = database
    await asyncio.to_thread(upgrade, url, schema)
    rt = Runtime.create(settings)
    try:
        scheme = await make_scheme(rt)
        voucher, _ = await make_voucher(rt, scheme)
        provider, _ = await make_provider(rt, scheme)
        await redeem(rt, voucher, provider.id, 2500)
        await redeem(rt, voucher, provider.id, 1000)
        await run_in_transaction(rt.sessionmaker, lambda s: close_scheme(s, scheme.id, reason="budget spent"))
    finally:
        await rt.close()

    options = {"connect_args": {"server_settings": {"search_path": schema}}} if schema else {}
    engine = create_async_engine(url, **options)
    try:
        await asyncio.to_thread(command.downgrade, alembic_config(url, schema), "0006")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT redeemed_cents FROM scheme"))).scalar_one() == 3500
        await asyncio.to_thread(upgrade, url, schema)
        async with engine.connect() as conn:
            closed, marked = (await conn.execute(text(
                "SELECT s.closed_at, e.scheme_closed_at FROM scheme s JOIN enrolment e ON e.scheme_id = s.id"))).one()
        assert closed is not None and marked == closed
    finally:
        await engine.dispose()
