"""Count the SQL statements the server's web processes send to the database, at the drivers.

The benchmark starts ``vouchers serve`` with ``bench/hook`` on ``PYTHONPATH`` and
``BENCH_SQL_COUNT_DIR`` set; Python runs ``bench/hook/sitecustomize.py`` at the start of every
process, which calls :func:`install`. Nothing in ``service/`` knows about it, and a server started
without those two variables is not touched.

What is counted: every statement the database executes for the process, whichever way the code
reaches it (SQLAlchemy's engines and the service's own driver connections alike), because the
hook sits under all of them:

* ``asyncpg``: each execution of ``Connection.execute/fetch*/executemany/fetchmany`` and of a
  prepared statement's methods; ``executemany``/``fetchmany`` count one per parameter set (the
  database executes the statement that often, in one round trip); a simple query holding several
  statements (``BEGIN; SELECT …; SELECT …``) counts each.
* ``sqlite3`` (also under aiosqlite): every statement executed on a connection, which
  ``sqlite3.connect`` now makes of a counting subclass (``executemany`` counts one per row; the
  ``BEGIN`` the module sends by itself and ``commit()``/``rollback()`` count too; statements run by
  triggers do not).

Transaction control (``BEGIN``, ``COMMIT``, ``ROLLBACK``) counts as a statement: on PostgreSQL it
is a round trip, on SQLite it takes or releases the lock. Statements on the idempotency-key table
are counted apart, with the ``BEGIN``/``COMMIT`` and savepoints of a transaction that did nothing
else, so that
"statements outside the idempotency key's own" can be read off (a statement that touches another
table as well, a CTE that redeems and completes the key, say, is the operation's). The background process (mail,
sealing) is left out: it is not a request's work.

The counts live in one small file per process (``<dir>/<pid>``, three 64-bit integers: statements,
of which transaction control, and idempotency statements), written through ``mmap`` on every
statement (2-3 µs with the classification, measured in-process), so the harness reads them at
any moment without asking the server: :func:`read` sums them.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ("ENV", "LOG_ENV", "Counts", "install", "log_offsets", "log_since", "read", "split_statements",
           "sqlite_factory")

ENV = "BENCH_SQL_COUNT_DIR"
LOG_ENV = "BENCH_SQL_LOG"
"""Set to 1, each process also writes the text of every statement to ``<dir>/<pid>.sql``."""
_SLOTS = struct.Struct("<qqq")  # statements (idempotency ones excluded), transaction control, idempotency
_OPEN = ("BEGIN", "START")
_CLOSE = ("COMMIT", "ROLLBACK", "END", "ABORT")


@dataclass(frozen=True)
class Counts:
    statements: int = 0
    """Every statement but the idempotency key's own, transaction control included."""
    control: int = 0
    """Of ``statements``: BEGIN, COMMIT, ROLLBACK."""
    idempotency: int = 0
    """Statements on the idempotency-key table, with the BEGIN/COMMIT of transactions doing only that."""

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.statements + other.statements, self.control + other.control,
                      self.idempotency + other.idempotency)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.statements - other.statements, self.control - other.control,
                      self.idempotency - other.idempotency)

    @property
    def total(self) -> int:
        return self.statements + self.idempotency


def read(directory: Path) -> Counts:
    """The sum over every process that has counted into ``directory``."""
    totals = [0, 0, 0]
    for path in directory.iterdir() if directory.exists() else ():
        if not path.name.isdigit():
            continue
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if len(raw) >= _SLOTS.size:
            for i, value in enumerate(_SLOTS.unpack_from(raw)):
                totals[i] += value
    return Counts(*totals)


def log_offsets(directory: Path) -> dict[str, int]:
    """How far each process's statement log has come (see :func:`log_since`)."""
    return {p.name: p.stat().st_size for p in directory.glob("*.sql")} if directory.exists() else {}


def log_since(directory: Path, offsets: dict[str, int]) -> str:
    """The statements logged since ``offsets``, by process."""
    parts = []
    for path in sorted(directory.glob("*.sql")):
        with path.open("rb") as f:
            f.seek(offsets.get(path.name, 0))
            text = f.read().decode(errors="replace")
        if text:
            parts.append(f"-- process {path.stem}\n{text}")
    return "".join(parts)


def split_statements(sql: str) -> list[str]:
    """The statements of a simple query, split at semicolons outside quotes."""
    parts, start, quote = [], 0, ""
    for i, ch in enumerate(sql):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == ";":
            parts.append(sql[start:i])
            start = i + 1
    parts.append(sql[start:])
    return [p.strip() for p in parts if p.strip()]


class _Counter:
    """This process's file, opened at its first statement (again in a forked child)."""

    def __init__(self, directory: Path, *, log: bool = False) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self.values = [0, 0, 0]
        self.map: mmap.mmap | None = None
        self.logging = log
        self.log_file: Any = None

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()
        self.values = [0, 0, 0]
        self.map = None
        self.log_file = None

    def note(self, sql: str) -> None:
        """With logging on, the statement's text (whitespace folded, at most 400 characters) as a
        line of ``<dir>/<pid>.sql``: which statements a request sends, not only how many."""
        if not self.logging:
            return
        with self.lock:
            if self.log_file is None:
                self.log_file = (self.directory / f"{os.getpid()}.sql").open("a", buffering=1)
            self.log_file.write(" ".join(sql.split())[:400] + "\n")

    def add(self, statements: int, control: int, idempotency: int) -> None:
        with self.lock:
            if self.map is None:
                path = self.directory / str(os.getpid())
                with path.open("wb+") as f:
                    f.write(b"\0" * _SLOTS.size)
                    f.flush()
                    self.map = mmap.mmap(f.fileno(), _SLOTS.size)
            v = self.values
            v[0] += statements
            v[1] += control
            v[2] += idempotency
            _SLOTS.pack_into(self.map, 0, *v)


class _Transactions:
    """Per connection: the statements of the open transaction, classified when it ends."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter
        self.open = False
        self.items: list[bool | None] = []  # per statement in the transaction: the key's own? (None: a savepoint)

    @staticmethod
    def word(sql: str) -> str:
        head = sql.lstrip()[:10].split(None, 1)
        return head[0].rstrip(";").upper() if head else ""

    def failed(self, sql: str, times: int = 1) -> None:
        """A statement the database refused (a BEGIN that found the database locked, say): it
        cost a statement, and opened or closed nothing."""
        self._note(f"-- refused: {sql}")
        if self.open:
            self.items.extend([False] * times)
        else:
            word = self.word(sql)
            self.counter.add(times, times if word in _OPEN or word in _CLOSE else 0, 0)

    def _note(self, sql: str) -> None:
        note = getattr(self.counter, "note", None)
        if note is not None:
            note(sql)

    def statement(self, sql: str) -> None:
        self._note(sql)
        head = sql.lstrip()
        word = self.word(head)
        if word in _OPEN:
            if self.open:  # a BEGIN inside a transaction: PostgreSQL warns, nothing happens
                self.items.append(None)
                return
            self.open, self.items = True, []
            return
        savepoint = word in ("SAVEPOINT", "RELEASE") or (
            word == "ROLLBACK" and head[len(word):].lstrip().upper().startswith("TO"))
        if word in _CLOSE and not savepoint:
            if not self.open:
                self.counter.add(1, 1, 0)
                return
            items, self.open, self.items = self.items, False, []
            key = sum(1 for i in items if i is True)
            work = sum(1 for i in items if i is False)
            if key and not work:  # the key's own transaction, its savepoints and all
                self.counter.add(0, 0, len(items) + 2)
            else:
                self.counter.add(len(items) - key + 2, 2, key)
            return
        if self.open:
            # A savepoint goes with what its transaction does: None until the transaction ends.
            self.items.append(None if savepoint else _key_only(head))
        elif _key_only(head):
            self.counter.add(0, 0, 1)
        else:
            self.counter.add(1, 0, 0)


_TABLES = re.compile(r'\b(?:from|into|update|join)\s+"?([\w.]+)', re.IGNORECASE)


def _key_only(sql: str) -> bool:
    """Whether the statement works on the idempotency-key table alone: a statement that also
    writes or reads another table (a redemption that completes its key in the same CTE, say) is
    the operation's, not the key's."""
    if "idempotency" not in sql.lower():
        return False
    return all("idempotency" in name.lower() for name in _TABLES.findall(sql))


def _web_process() -> bool:
    """False in the background process (``python -m service.cli worker``), whose work is no request's."""
    try:
        argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return not (b"service.cli" in argv and b"worker" in argv)


_installed: _Counter | None = None


def install(directory: Path, *, log: bool = False) -> bool:
    """Count this process's statements into ``directory``; False (nothing done) in the background
    process. Call before the drivers connect (``sitecustomize`` runs before anything else)."""
    global _installed
    if _installed is not None or not _web_process():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    counter = _installed = _Counter(directory, log=log)
    os.register_at_fork(after_in_child=counter.reset_after_fork)
    _install_sqlite(counter)
    _install_asyncpg(counter)
    return True


def sqlite_factory(counter: Any) -> type:
    """A ``sqlite3.Connection`` subclass (``sqlite3.connect(..., factory=...)``) whose statements
    count into ``counter`` (anything with ``add(statements, control, idempotency)``). SQLite's trace
    callback is not used: it also reports the programs of triggers, as repeats of the statement
    that fired them."""
    import sqlite3

    class CountingCursor(sqlite3.Cursor):
        def _counted(self, sql: str, times: int, run: Any) -> Any:
            connection = self.connection
            transactions: _Transactions = connection._bench_transactions  # type: ignore[attr-defined]
            was = connection.in_transaction
            try:
                result = run()
            except BaseException:
                transactions.failed(sql, times)
                raise
            if not was and connection.in_transaction and transactions.word(sql) not in _OPEN:
                transactions.statement("BEGIN")  # the module's own, before a change (legacy transaction control)
            for _ in range(times):
                transactions.statement(sql)
            return result

        def execute(self, sql: str, parameters: Any = (), /) -> Any:
            return self._counted(sql, 1, lambda: super(CountingCursor, self).execute(sql, parameters))

        def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
            rows = list(seq_of_parameters)
            return self._counted(sql, len(rows), lambda: super(CountingCursor, self).executemany(sql, rows))

        def executescript(self, script: str, /) -> Any:
            parts = split_statements(script)
            result = super().executescript(script)
            for part in parts:
                self.connection._bench_transactions.statement(part)  # type: ignore[attr-defined]
            return result

    class CountingConnection(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._bench_transactions = _Transactions(counter)

        def cursor(self, factory: Any = None) -> Any:  # type: ignore[override]
            return super().cursor(factory or CountingCursor)

        # The C methods would run the statement on a cursor without calling its Python methods.
        def execute(self, sql: str, parameters: Any = (), /) -> Any:
            return self.cursor().execute(sql, parameters)

        def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
            return self.cursor().executemany(sql, seq_of_parameters)

        def executescript(self, script: str, /) -> Any:
            return self.cursor().executescript(script)

        def commit(self) -> None:
            if self.in_transaction:
                self._bench_transactions.statement("COMMIT")
            super().commit()

        def rollback(self) -> None:
            if self.in_transaction:
                self._bench_transactions.statement("ROLLBACK")
            super().rollback()

    return CountingConnection


def _install_sqlite(counter: _Counter) -> None:
    import sqlite3

    factory = sqlite_factory(counter)
    original = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", factory)
        return original(*args, **kwargs)

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    sqlite3.connect = connect  # type: ignore[assignment]


def _install_asyncpg(counter: _Counter) -> None:
    try:
        import asyncpg.connection
        import asyncpg.prepared_stmt
    except ImportError:
        return
    Connection = asyncpg.connection.Connection
    Prepared = asyncpg.prepared_stmt.PreparedStatement

    transactions: weakref.WeakKeyDictionary[Any, _Transactions] = weakref.WeakKeyDictionary()

    def state(conn: Any) -> _Transactions:
        found = transactions.get(conn)
        if found is None:
            found = transactions[conn] = _Transactions(counter)
        return found

    def simple(conn: Any, query: str, times: int = 1) -> None:
        tx = state(conn)
        for _ in range(times):
            for part in split_statements(query):
                tx.statement(part)

    execute, _execute, _executemany = Connection.execute, Connection._execute, Connection._executemany

    async def counted_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:
            simple(self, query)
            return await execute(self, query, **kwargs)
        return await execute(self, query, *args, **kwargs)  # counted in _execute

    async def counted__execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        simple(self, query)
        return await _execute(self, query, *args, **kwargs)

    async def counted__executemany(self: Any, query: str, args: Any, *rest: Any, **kwargs: Any) -> Any:
        args = list(args)
        simple(self, query, len(args))
        return await _executemany(self, query, args, *rest, **kwargs)

    Connection.execute = counted_execute
    Connection._execute = counted__execute
    Connection._executemany = counted__executemany

    bind_execute = Prepared._PreparedStatement__bind_execute
    fetchmany, executemany = Prepared.fetchmany, Prepared.executemany

    async def counted_bind_execute(self: Any, args: Any, limit: int, timeout: Any) -> Any:
        simple(self._connection, self._query)
        return await bind_execute(self, args, limit, timeout)

    async def counted_fetchmany(self: Any, args: Any, **kwargs: Any) -> Any:
        args = list(args)
        simple(self._connection, self._query, len(args))
        return await fetchmany(self, args, **kwargs)

    async def counted_executemany(self: Any, args: Any, **kwargs: Any) -> Any:
        args = list(args)
        simple(self._connection, self._query, len(args))
        return await executemany(self, args, **kwargs)

    Prepared._PreparedStatement__bind_execute = counted_bind_execute
    Prepared.fetchmany = counted_fetchmany
    Prepared.executemany = counted_executemany
