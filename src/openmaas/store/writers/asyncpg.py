"""The ledger's group-committed transactions on PostgreSQL straight through asyncpg.

SQLAlchemy's execution of a statement (compiling from its cache, binding, its result
object) cost about as much Python as the statement's round trip, several times per batch.
:class:`AsyncpgWriter` runs the same SQL as ``store/writers/sqlite.py`` on the pooled
connection's own asyncpg connection, in one asyncpg transaction. Same SQL and lock as the
SQLAlchemy path, so processes using either serialize on ``ledger_head`` alike.

A batch's writes (the events, their entries, the head, the usage records, the in-flight
rows inserted and deleted) are **one statement**, one round trip: each ``INSERT`` becomes a
data-modifying ``WITH`` part that inserts ``unnest``-ed column arrays, each ``DELETE``
one with ``= ANY`` of an array of keys, and the head's ``UPDATE`` the main statement.
Every such part runs exactly once whether or not the main statement reads it, and the
foreign key of ``ledger_entries`` is checked at the statement's end, when its events are
in. The batch holds the ledger's lock from its ``UPDATE ledger_head`` to its commit: one
round trip for the writes, where a statement each made five, and the event loop had to get
back to the batch after each of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.store.schema import metadata
from openmaas.store.writers.sqlite import (
    EVENTS_SINCE,
    INSERT_ENTRIES,
    INSERT_EVENTS,
    SET_HEAD,
    Statement,
    trace,
)

_MARK = re.compile(r"\?")
_INSERT = re.compile(r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES \([?, ]+\)")
_DELETE = re.compile(r"DELETE FROM (\w+) WHERE (\w+) = \?")


_SEP = "\x1f"  # between a column's values sent as one string (the ASCII unit separator)
_NULL = "\x1e"  # a NULL among them (the record separator)
_SPLIT = "string_to_array(${}, E'\\x1f', E'\\x1e')::{}"
_NONE = type(None)


def _joined(values: Sequence[Any]) -> str | None:
    """A column's values, each an ``int``, a ``str`` or None, as one string that
    ``_SPLIT`` gives back exactly: joined by ``_SEP``, None as ``_NULL``. None when that
    cannot be told apart (a string holding either character, a lone empty string) or a
    value is of another type: the column is then sent as an array.

    asyncpg encodes an array by checking every element against three ``collections.abc``
    classes, a Python call each (about 110 calls a settled request, a third of all); one
    string per column is one ``str.join`` and two ``str.count``, all in C."""
    kinds = set(map(type, values))
    nulls = values.count(None) if _NONE in kinds else 0
    kinds.discard(_NONE)
    if kinds == {int}:  # never a separator, never empty
        if not nulls:
            return _SEP.join(map(str, values))
        return _SEP.join([_NULL if value is None else str(value) for value in values])
    if kinds and kinds != {str}:
        return None
    text = _SEP.join([_NULL if value is None else value for value in values] if nulls else values)
    if not text or text.count(_SEP) != len(values) - 1 or text.count(_NULL) != nulls:
        return None
    return text


def _array(args: list[Any], values: Sequence[Any], array_type: str, first: int) -> str:
    """Add ``values`` to ``args`` (parameters numbered from ``first``) as one parameter,
    and answer the SQL of that parameter as an array of ``array_type``: one string split
    on the server (``_joined``), or an array asyncpg encodes."""
    text = _joined(values)
    args.append(list(values) if text is None else text)
    number = first + len(args) - 1
    return f"${number}::{array_type}" if text is None else _SPLIT.format(number, array_type)


_LOCK_AND_READ = (
    "WITH head AS (UPDATE ledger_head SET seq = seq WHERE id = 1 RETURNING seq)"
    " SELECT head.seq, e.seq, e.body FROM head"
    " LEFT JOIN ledger_events e ON e.seq > $1 ORDER BY e.seq"
)
"""The ledger's lock (``LOCK_HEAD``) and the events after ``$1`` in one statement: a row
per event, each with the head's seq (one row with no event when there is none)."""


def uses_asyncpg(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"


def _array_type(table: str, column: str) -> str:
    """The PostgreSQL type of an array of ``table.column``'s values (lengths left to the
    column: an over-long value is refused by the insert, as before)."""
    sql_type = metadata.tables[table].c[column].type.compile(dialect=postgresql.dialect())
    return sql_type.partition("(")[0] + "[]"


class AsyncpgWriter:
    """Numbers the writer's SQL once per statement and runs it on asyncpg."""

    __slots__ = ("_parts", "_sql")

    def __init__(self) -> None:
        self._sql: dict[str, str] = {}
        self._parts: dict[str, tuple[str, ...] | None] = {}  # SQL -> array types (None: as is)

    def numbered(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            count = iter(range(1, 1_000_000))
            found = self._sql[sql] = _MARK.sub(lambda _: f"${next(count)}", sql)
        return found

    @staticmethod
    async def driver(conn: AsyncConnection) -> Any:
        """The asyncpg connection under ``conn`` (no transaction of SQLAlchemy's open)."""
        return (await conn.get_raw_connection()).driver_connection

    async def lock(self, apg: Any, since: int) -> list[tuple[int, str]]:
        """In the open transaction: take the ledger's lock and answer the events appended
        after ``since``, read by the same statement (``_LOCK_AND_READ``): one round trip
        under the lock, where a statement each made two. That read sees what was committed
        when the statement began: if it waited for another writer's lock, the head it then
        locked is past the events it read, and the rest are read by a second statement."""
        trace(_LOCK_AND_READ)
        rows = await apg.fetch(_LOCK_AND_READ, since)
        if not rows:
            raise RuntimeError("ledger_head is missing: run the migrations")
        head = rows[0][0]
        events = [(row[1], row[2]) for row in rows if row[1] is not None]
        last = events[-1][0] if events else since
        if last != head:  # committed by the writer whose lock this one waited for
            trace(EVENTS_SINCE)
            more = await apg.fetch(self.numbered(EVENTS_SINCE), last)
            events += [(row[0], row[1]) for row in more]
        return events

    async def run_atomic(self, apg: Any, statements: list[Statement]) -> None:
        """:meth:`run`, all or nothing, outside a transaction: as one statement (or one
        ``executemany``, atomic in asyncpg), which is its own transaction, one round trip
        where ``BEGIN`` and ``COMMIT`` make three; in a transaction of its own otherwise."""
        statements = [(sql, params) for sql, params in statements if params]
        if len(statements) <= 1 or self._known_writes(statements):
            await self.run(apg, statements)
            return
        async with apg.transaction():
            await self.run(apg, statements)

    async def run(self, apg: Any, statements: list[Statement]) -> None:
        """Run ``statements`` (the writers' ``INSERT``s, ``DELETE``s and the head's
        ``UPDATE``) as one statement; any other SQL on its own, as it is."""
        statements = [(sql, params) for sql, params in statements if params]
        if not statements:
            return
        if len(statements) == 1 or not self._known_writes(statements):
            for sql, params in statements:
                trace(sql)
                await apg.executemany(self.numbered(sql), params)
            return
        sql, args = self.combined(statements)
        trace(sql)
        await apg.execute(sql, *args)

    async def commit_at(self, apg: Any, since: int, statements: list[Statement]) -> bool:
        """Outside a transaction: ``statements`` as one statement, which is its own
        transaction, and writes only if the log's last event is still ``since``: whether
        it did. Its first part takes the ledger's lock, ``UPDATE ledger_head ... WHERE seq
        = since`` (waiting for another writer's transaction, then reading the head it
        committed), and every write is made on the condition that it updated the head. One
        round trip, the lock held for no more than that statement, where a transaction
        made four (``BEGIN``, the lock, the writes, ``COMMIT``) and held the lock for three.
        Statements that are not known writes: False, nothing written (the caller's
        two-step path runs them)."""
        writes = [(sql, params) for sql, params in statements if params and sql != SET_HEAD]
        if any(self._types(sql) is None for sql, _ in writes):
            return False
        head = next((params[-1][0] for sql, params in statements if sql == SET_HEAD), since)
        sql, args = self.combined(writes, first=3, only_if="EXISTS (SELECT 1 FROM head)")
        sql = (
            "WITH head AS (UPDATE ledger_head SET seq = $1 WHERE id = 1 AND seq = $2"
            " RETURNING seq)" + (f", {sql}" if writes else "") + " SELECT count(*) FROM head"
        )
        trace(sql)
        return bool(await apg.fetchval(sql, head, since, *args))

    async def append(
        self, apg: Any, fence: int, base: int, count: int, statements: list[Statement]
    ) -> tuple[int | None, int]:
        """A commuting batch (``store/ledger/log.py``) as one statement: if the ledger's
        fence is still ``fence``, the head moves on by ``count`` wherever it stands and the
        batch's events (``base`` + 1 to ``base`` + ``count`` in ``statements``) are
        numbered after the events already there: ``(the new head, fence)``; otherwise
        nothing is written:
        ``(None, the fence now)``. The head's ``UPDATE`` always takes the row lock (after
        another writer's commit, it reads the row that one committed, as ``READ
        COMMITTED`` does), so the fence it answers is the one now. Statements that are not
        known writes: ``(None, fence)``, nothing written (the ordered path runs them)."""
        writes = [(sql, params) for sql, params in statements if params]
        if any(self._types(sql) is None or sql == SET_HEAD for sql, _ in writes):
            return None, fence
        sql, args = self.combined(
            writes, first=4, only_if="EXISTS (SELECT 1 FROM head WHERE ok)",
            shift="(SELECT seq FROM head) - $2 - $3",
        )  # fmt: skip
        sql = (
            "WITH head AS (UPDATE ledger_head"
            " SET seq = seq + CASE WHEN fence = $1 THEN $2 ELSE 0 END WHERE id = 1"
            " RETURNING seq, fence, fence = $1 AS ok)"
            + (f", {sql}" if writes else "")
            + " SELECT seq, fence, ok FROM head"
        )
        trace(sql)
        row = await apg.fetchrow(sql, fence, count, base, *args)
        if row is None:
            raise RuntimeError("ledger_head is missing: run the migrations")
        return (int(row[0]) if row[2] else None), int(row[1])

    def combined(
        self,
        statements: list[Statement],
        *,
        first: int = 1,
        only_if: str | None = None,
        shift: str | None = None,
    ) -> tuple[str, list[Any]]:
        """One statement for ``statements`` (each a known write) and its arguments, its
        parameters numbered from ``first``. With ``only_if``: the writes' ``WITH`` parts
        alone, each writing only where that condition holds (and no head). With ``shift``:
        the events' and entries' seqs are moved on by that SQL expression."""
        parts: list[str] = []
        main = "SELECT 1"
        args: list[Any] = []
        start = first
        for sql, params in statements:
            types = self._types(sql)
            assert types is not None
            first = start + len(args)
            if sql == SET_HEAD:
                assert only_if is None
                args.append(params[-1][0])
                main = f"UPDATE ledger_head SET seq = ${first} WHERE id = 1"
                continue
            insert = _INSERT.fullmatch(sql)
            if insert is not None:
                table, columns = insert.groups()
                marks = ", ".join(
                    _array(args, column, array_type, start)
                    for column, array_type in zip(zip(*params, strict=True), types, strict=True)
                )
                where = "" if only_if is None else f" WHERE {only_if}"
                source = f"* FROM unnest({marks})"
                if shift is not None and sql in (INSERT_EVENTS, INSERT_ENTRIES):  # seq first
                    names = [f"c{n}" for n in range(len(types))]
                    values = ", ".join([f"u.c0 + {shift}", *(f"u.{n}" for n in names[1:])])
                    source = f"{values} FROM unnest({marks}) AS u({', '.join(names)})"
                parts.append(f"INSERT INTO {table} ({columns}) SELECT {source}{where}")
            else:
                delete = _DELETE.fullmatch(sql)
                assert delete is not None
                table, column = delete.groups()
                marks = _array(args, [row[0] for row in params], types[0], start)
                where = "" if only_if is None else f" AND {only_if}"
                parts.append(f"DELETE FROM {table} WHERE {column} = ANY({marks}){where}")
        withs = ", ".join(f"w{n} AS ({part})" for n, part in enumerate(parts))
        if only_if is not None:
            return withs, args
        return (f"WITH {withs} {main}" if parts else main), args

    def _known_writes(self, statements: list[Statement]) -> bool:
        """Whether every one of ``statements`` is a write :meth:`combined` can make part of
        one statement."""
        return all(self._types(sql) is not None for sql, _ in statements)

    def _types(self, sql: str) -> tuple[str, ...] | None:
        """The array types of a known write's parameters (None: not one)."""
        if sql in self._parts:
            return self._parts[sql]
        types: tuple[str, ...] | None = None
        if sql == SET_HEAD:
            types = ("bigint",)
        elif (insert := _INSERT.fullmatch(sql)) is not None:
            table, columns = insert.groups()
            if table in metadata.tables:
                types = tuple(_array_type(table, c.strip()) for c in columns.split(","))
        elif (delete := _DELETE.fullmatch(sql)) is not None:
            table, column = delete.groups()
            if table in metadata.tables:
                types = (_array_type(table, column),)
        self._parts[sql] = types
        return types
