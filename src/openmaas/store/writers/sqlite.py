"""The ledger's group-committed transactions on SQLite in one hand-off (two after a conflict).

SQLAlchemy's aiosqlite adapter hands every step of a statement (cursor, execute, fetch,
close) and every ``BEGIN`` and ``COMMIT`` to the driver's thread and back: a priced
request's hold, settlement and usage record made some twenty round trips between the event
loop and that thread, each a wake-up of both. :class:`SqliteWriter` keeps one ``sqlite3``
connection on a thread of its own and runs a whole step there at once:

* :meth:`SqliteWriter.write`: a batch of plain writes (usage records, in-flight rows) in
  one transaction, one hand-off;
* :meth:`SqliteWriter.commit_at`: a batch with ledger commands, decided in the event loop
  on the state as of the last event this process saw, takes the ledger's lock and, if that
  is still the log's last event, writes the events and rows and commits (one hand-off); if
  another writer appended meanwhile, it rolls back and answers those events;
* :meth:`SqliteWriter.lock` then :meth:`SqliteWriter.commit`: the batch decided again after
  such a conflict takes the lock and reads the events other writers appended (first
  hand-off), the event loop decides the commands on the state they give, and the events
  and rows are written and committed (second hand-off).

The SQL is the same as the SQLAlchemy path's (``store/ledger/log.py``), so processes using
either serialize on the same lock; PostgreSQL keeps that path (asyncpg has no thread to
hand off to). Only a database file qualifies (an in-memory database is private to its
connection).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Column, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.store.rows import Delete, Insert
from openmaas.store.schema import ledger_entries, ledger_events

T = TypeVar("T")

log = logging.getLogger("openmaas.store.writes")
"""Each statement the writer runs, at DEBUG (as SQLAlchemy's engine log does for its own)."""

Statement = tuple[str, list[tuple[Any, ...]]]
"""SQL with ``?`` placeholders and the parameter rows it is executed for (``executemany``)."""

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

BUSY_TIMEOUT_MS = 5000
"""How long a writer waits for another process's write transaction before it fails."""

BUSY_PAUSES_S = (0.0002, 0.0005, 0.001)
"""The writer's pauses between tries of ``BEGIN IMMEDIATE`` while another process writes
(the last one repeated). SQLite's own busy handler sleeps 1, 2, 5, 10, 15 ... ms between
tries: with another process's batch holding the lock for well under a millisecond to a
few, a waiting process slept on long after the lock was free."""

EVENT_COLUMNS = ("seq", "at_ms", "kind", "org_id", "request_id", "idempotency_key", "body")
ENTRY_COLUMNS = ("event_seq", "at_ms", "debit", "credit", "amount", "unit", "request_id")


def _insert_sql(table: Table, columns: Sequence[str]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"


INSERT_EVENTS = _insert_sql(ledger_events, EVENT_COLUMNS)
INSERT_ENTRIES = _insert_sql(ledger_entries, ENTRY_COLUMNS)
SET_HEAD = "UPDATE ledger_head SET seq = ? WHERE id = 1"
LOCK_HEAD = "UPDATE ledger_head SET seq = seq WHERE id = 1 RETURNING seq"
EVENTS_SINCE = "SELECT seq, body FROM ledger_events WHERE seq > ? ORDER BY seq"
ADVANCE_HEAD = (
    "UPDATE ledger_head SET seq = seq + CASE WHEN fence = ? THEN ? ELSE 0 END WHERE id = 1"
    " RETURNING seq, fence"
)
"""A commuting batch's lock: the head moved on by its events' count if the fence is the one
given (else left as it is), answering the head and the fence."""
RAISE_FENCE = "UPDATE ledger_head SET fence = fence + 1 WHERE id = 1"
NUMBERED = (INSERT_EVENTS, INSERT_ENTRIES)
"""The statements whose rows start with an event's seq (moved on in a commuting batch when
other processes appended first, ``SqliteWriter.append``)."""


def database_file(engine: AsyncEngine) -> str | None:
    """The SQLite database file behind ``engine`` (None: another database, or one in
    memory or opened by URI, which a second connection would not share)."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query:
        return None
    return database


class RowStatements:
    """``store/rows.write_rows``'s writes as SQL with ``?`` placeholders and parameter rows,
    each table's INSERT built once per set of columns."""

    __slots__ = ("_sql",)

    def __init__(self) -> None:
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}  # INSERTs by table and columns

    def rows(self, writes: Iterable[Insert | Delete]) -> list[Statement]:
        """``store/rows.write_rows``'s statements: the inserts, one per table (and set of
        columns) in the order tables first appear, then the deletes, one per key column."""
        inserts: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        deletes: dict[Column[Any], list[tuple[Any, ...]]] = {}
        for write in writes:
            if isinstance(write, Insert):
                columns = tuple(write.row)
                key = (write.table.name, columns)
                if key not in self._sql:
                    self._sql[key] = _insert_sql(write.table, columns)
                inserts.setdefault(key, []).append(tuple(write.row.values()))
            else:
                deletes.setdefault(write.column, []).append((write.key,))
        statements = [(self._sql[key], params) for key, params in inserts.items()]
        for column, keys in deletes.items():
            statements.append((f"DELETE FROM {column.table.name} WHERE {column.name} = ?", keys))
        return statements


class _Thread:
    """One thread that runs the calls handed to it, in order, and answers each on the
    event loop it came from. ``run_in_executor`` on a one-thread pool did the same with a
    ``concurrent.futures`` future (and its condition variable), a work item and a chained
    asyncio future per call: more CPU than the hand-off's two wake-ups themselves."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        """``fn(*args)`` on the thread; its result (or exception) on the returned future.
        Cancelling the future does not stop a call that started (the ledger's callers
        finish their writes despite cancellation, ``aio.finish_despite_cancellation``)."""
        if not self._thread.is_alive():
            self._thread.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, fn, args))
        return future

    def stop(self) -> None:
        """After the calls handed over so far: the thread ends (joined)."""
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, fn, args = item
            try:
                result = fn(*args)
            except BaseException as exc:  # answered, never lost: the caller raises it
                _answer(future, _fail, exc)
            else:
                _answer(future, _succeed, result)


def _answer(future: asyncio.Future[Any], how: Callable[..., None], value: Any) -> None:
    try:
        future.get_loop().call_soon_threadsafe(how, future, value)
    except RuntimeError:  # the loop closed meanwhile: nobody waits for the answer
        pass


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class SqliteWriter:
    """One ``sqlite3`` connection to a database file, used from one thread of its own."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._thread = _Thread("openmaas-ledger-sqlite")
        self._conn: sqlite3.Connection | None = None  # opened and used on that thread only
        self._rows = RowStatements()
        self.handoffs = 0  # calls run on the writer's thread

    @classmethod
    async def open(cls, engine: AsyncEngine) -> SqliteWriter | None:
        """A writer for ``engine``'s database file, with the connection settings its pool
        uses (None when it is not a SQLite file)."""
        path = database_file(engine)
        if path is None:
            return None
        async with engine.connect() as conn:
            level = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        return cls(path, _SYNCHRONOUS.get(int(level or 2), "FULL"))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer's thread (one hand-off, counted)."""
        self.handoffs += 1
        return await self._thread.call(fn, args)

    async def close(self) -> None:
        await self.call(self._close)
        self._thread.stop()

    def rows(self, writes: Iterable[Insert | Delete]) -> list[Statement]:
        """The statements of ``writes`` (:class:`RowStatements`)."""
        return self._rows.rows(writes)

    # -- on the writer's thread ----------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=0")  # waits of its own: ``_begin``
            self._conn = conn
        return self._conn

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` (the database's write lock), tried again after each of
        ``BUSY_PAUSES_S`` while another connection holds it, for up to ``BUSY_TIMEOUT_MS``.
        The connection's own busy timeout is 0: once the lock is held, nothing a write
        transaction does in WAL mode waits for another connection."""
        deadline = 0.0
        for tries in itertools.count():
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF
                if code != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if not tries:
                    deadline = now + BUSY_TIMEOUT_MS / 1000
                elif now >= deadline:
                    raise
            time.sleep(BUSY_PAUSES_S[min(tries, len(BUSY_PAUSES_S) - 1)])

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, statements: list[Statement]) -> None:
        """Run ``statements`` in one transaction and commit."""
        conn = self._connection()
        self._begin(conn)
        self.commit(statements)

    def lock(self, since: int) -> list[tuple[int, str]]:
        """Begin, take the ledger's lock and answer the events appended after ``since``
        (none read when the last event is ``since``'s). The transaction stays open for
        :meth:`commit` or :meth:`rollback`."""
        conn = self._connection()
        self._begin(conn)
        try:
            trace(LOCK_HEAD)
            head = conn.execute(LOCK_HEAD).fetchone()
            if head is None:
                raise RuntimeError("ledger_head is missing: run the migrations")
            if head[0] == since:
                return []
            trace(EVENTS_SINCE)
            return conn.execute(EVENTS_SINCE, (since,)).fetchall()
        except BaseException:
            conn.rollback()
            raise

    def commit_at(
        self, since: int, statements: list[Statement]
    ) -> tuple[bool, list[tuple[int, str]]]:
        """Begin, take the ledger's lock and, when the last event is still ``since`` (no
        other writer appended meanwhile), run ``statements`` and commit: ``(True, [])``.
        Otherwise roll back, having written nothing, and answer ``(False, the events
        appended after since)``, for the batch to be decided again on them."""
        caught_up = self.lock(since)
        if caught_up:
            self.rollback()
            return False, caught_up
        self.commit(statements)
        return True, []

    def append(
        self, fence: int, base: int, count: int, statements: list[Statement]
    ) -> tuple[int | None, int]:
        """A commuting batch (``store/ledger/log.py``): begin, and if the ledger's fence is
        still ``fence``, move the head on by ``count`` events wherever it stands, number
        the batch's events (``base`` + 1 to ``base`` + ``count`` in ``statements``) after
        the events already there, write and commit: ``(the new head, fence)``. Otherwise
        roll back, having written nothing: ``(None, the fence now)``."""
        conn = self._connection()
        self._begin(conn)
        try:
            trace(ADVANCE_HEAD)
            row = conn.execute(ADVANCE_HEAD, (fence, count)).fetchone()
            if row is None:
                raise RuntimeError("ledger_head is missing: run the migrations")
            if row[1] != fence:
                conn.rollback()
                return None, int(row[1])
        except BaseException:
            conn.rollback()
            raise
        head = int(row[0])
        shift = head - count - base  # events other processes appended since ``base``
        if shift:
            statements = [(sql, _renumbered(params, shift) if sql in NUMBERED else params)
                          for sql, params in statements]  # fmt: skip
        self.commit(statements)
        return head, fence

    def commit(self, statements: list[Statement]) -> None:
        """Run ``statements`` in the open transaction and commit (or roll back and raise)."""
        conn = self._connection()
        try:
            for sql, params in statements:
                trace(sql)
                conn.executemany(sql, params)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        if self._conn is not None and self._conn.in_transaction:
            self._conn.rollback()


def _renumbered(rows: list[tuple[Any, ...]], shift: int) -> list[tuple[Any, ...]]:
    """``rows`` whose first value (an event's seq) is moved on by ``shift``."""
    return [(row[0] + shift, *row[1:]) for row in rows]


def trace(sql: str) -> None:
    """Log ``sql`` at DEBUG, as a direct writer runs it."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(sql)
