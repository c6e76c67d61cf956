"""The fast path's own connections to PostgreSQL (``service.fastpath._Connections``): lent to one
coroutine at a time, reused, and replaced when a statement leaves one in an unknown state."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from service.fastpath import _Connections

pytestmark = pytest.mark.postgres


@pytest.fixture
async def connections(pg_database: str):
    url = make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    made: list[_Connections] = []

    def make(size: int) -> _Connections:
        made.append(_Connections(url, {"application_name": "vouchers-test-fastpath"}, size))
        return made[-1]

    yield make
    for connections in made:
        await connections.close()


async def _pid(connections: _Connections) -> int:
    async with connections.lend() as connection:
        return await connection.fetchval("SELECT pg_backend_pid()")


async def test_connections_are_lent_one_at_a_time_and_kept(connections) -> None:
    two = connections(2)
    busy = 0
    most = 0

    async def statement() -> int:
        nonlocal busy, most
        async with two.lend() as connection:
            busy += 1
            most = max(most, busy)
            pid = await connection.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.01)")
            busy -= 1
            return pid

    pids = await asyncio.gather(*(statement() for _ in range(12)))
    assert most == 2 and len(set(pids)) == 2
    assert await _pid(two) in pids


async def test_connections_are_lent_in_order_of_asking(connections) -> None:
    """A request that waits for a connection gets the next one given back, even when the request
    giving it back asks again at once (with a plain queue it would take it back ahead of the one
    waiting, and under load some requests waited for a second and more)."""
    one = connections(1)
    order: list[str] = []
    release = asyncio.Event()

    async def first_then_again() -> None:
        async with one.lend() as connection:
            await connection.fetchval("SELECT 1")
            order.append("first")
            await release.wait()
        async with one.lend():
            order.append("first again")

    async def waiting() -> None:
        async with one.lend():
            order.append("waiting")

    first = asyncio.create_task(first_then_again())
    while not order:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(waiting())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(first, second)
    assert order == ["first", "waiting", "first again"]


async def test_an_error_from_the_server_keeps_the_connection(connections) -> None:
    one = connections(1)
    before = await _pid(one)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with one.lend() as connection:
            await connection.fetchval("SELECT 1 / 0")
    assert await _pid(one) == before


async def test_an_error_in_a_transaction_left_open_does_not_pass_its_connection_on(connections) -> None:
    """The borrower began a transaction and an ERROR ended the loan before it was rolled back:
    the next borrower must not inherit the failed transaction."""
    one = connections(1)
    before = await _pid(one)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with one.lend() as connection:
            await connection.execute("BEGIN")
            await connection.fetchval("SELECT 1 / 0")
    async with one.lend() as connection:
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT pg_backend_pid()") != before


async def test_a_cancelled_statement_does_not_pass_its_connection_on(connections) -> None:
    """A request that goes away mid-statement: the next borrower gets a connection that answers
    at once, not one still busy with the cancelled statement."""
    one = connections(1)
    before = await _pid(one)

    async def slow() -> None:
        async with one.lend() as connection:
            await connection.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await asyncio.wait_for(_pid(one), timeout=5)
    assert after != before


async def test_a_connection_cut_off_is_replaced(connections, pg_database: str) -> None:
    one = connections(1)
    before = await _pid(one)
    admin = await asyncpg.connect(make_url(pg_database).set(drivername="postgresql")
                                  .render_as_string(hide_password=False))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", before)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the server's FATAL error reaches the idle connection first
    # The statement that meets the cut may fail, as any statement on a lost connection does:
    # with the server's FATAL error, a lost connection, or (when the error came while the
    # connection was idle) asyncpg's "another operation is in progress". The place is not lost.
    try:
        await _pid(one)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
        pass
    assert await _pid(one) != before
    assert await _pid(one) != before  # and the new connection stays


@pytest.mark.parametrize("backend", ["postgres"])
async def test_scans_arriving_together_are_read_in_one_statement(rt) -> None:
    """Scans that arrive while another is being read go to PostgreSQL as one statement; each
    gets its own answer: its voucher, none for an unknown code, and its own client's limit."""
    from service import groups, ratelimit, vouchers
    from service.codes import format_code
    from service.errors import NotFound, TooManyAttempts
    from tests.helpers import make_scheme, make_voucher

    scheme = await make_scheme(rt)
    (first, code1), (second, code2) = await make_voucher(rt, scheme), await make_voucher(rt, scheme)
    unknown = rt.keys.code_for(rt.keys.new_salt())
    async with rt.sessionmaker() as session, session.begin():
        # Past the limit: the web refuses before the scan (``ratelimit.failed_lookups_limited``);
        # a count past it that the scan reads refuses there too.
        for _ in range(rt.settings.failed_lookup_limit + 1):
            await ratelimit.count_attempt(session, "lookup:blocked",
                                          window_seconds=rt.settings.failed_lookup_window_seconds)

    release, alone, together = asyncio.Event(), [], []

    async def held_first(_key, size: int) -> None:
        if size > 1:
            together.append(size)
            return
        alone.append(size)
        if len(alone) == 1:
            await release.wait()

    async def until(condition) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the scans did not queue")

    asks = [(code1, "a"), (code2, "b"), (unknown, "c"), (code1, "blocked"), (format_code(code2).lower(), "d")]
    with groups.watching(held_first):
        tasks = [asyncio.create_task(vouchers.scan(rt, asks[0][0], attempts_key="lookup:a"))]
        await until(lambda: len(alone) == 1)
        tasks += [asyncio.create_task(vouchers.scan(rt, code, attempts_key=f"lookup:{key}")) for code, key in asks[1:]]
        await until(lambda: groups.queued() == len(asks) - 1)
        release.set()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert (len(alone), together) == (1, [4])
    assert [a.voucher_id for a in (answers[0], answers[1], answers[4])] == [first.id, second.id, second.id]
    assert isinstance(answers[2], NotFound) and isinstance(answers[3], TooManyAttempts), answers
