"""The ledger's group-committed transactions on PostgreSQL straight through asyncpg.

SQLAlchemy's execution of a statement (compiling from its cache, binding, its result
object) cost about as much Python as the statement's round trip, several times per batch.
:class:`AsyncpgWriter` runs the same SQL as ``store/writers/sqlite.py`` (its ``?``
placeholders numbered as PostgreSQL's ``$1``, ``$2`` ...) on the pooled connection's own
asyncpg connection, each statement's rows in one ``executemany``, in one asyncpg
transaction. Same SQL and lock as the SQLAlchemy path, so processes using either
serialize on ``ledger_head`` alike.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.store.writers.sqlite import EVENTS_SINCE, LOCK_HEAD, Statement, trace

_MARK = re.compile(r"\?")


def uses_asyncpg(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"


class AsyncpgWriter:
    """Numbers the writer's SQL once per statement and runs it on asyncpg."""

    __slots__ = ("_sql",)

    def __init__(self) -> None:
        self._sql: dict[str, str] = {}

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
        after ``since`` (none read when the last event is ``since``'s)."""
        trace(LOCK_HEAD)
        head = await apg.fetchval(LOCK_HEAD)
        if head is None:
            raise RuntimeError("ledger_head is missing: run the migrations")
        if head == since:
            return []
        trace(EVENTS_SINCE)
        return [(r[0], r[1]) for r in await apg.fetch(self.numbered(EVENTS_SINCE), since)]

    async def run(self, apg: Any, statements: list[Statement]) -> None:
        for sql, params in statements:
            if params:
                trace(sql)
                await apg.executemany(self.numbered(sql), params)
