"""Rows written in bulk: the hot path's inserts and deletes, collected from every command of
a group-committed batch (``store/ledger/log.py``) and written as one multi-row ``INSERT`` per
table and one ``DELETE ... WHERE key IN (...)`` per key column, whatever the number of
requests in the batch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Table, delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class Insert:
    table: Table
    row: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Delete:
    column: Column[Any]  # the key column
    key: Any


async def write_rows(conn: AsyncConnection, writes: Iterable[Insert | Delete]) -> None:
    """The inserts, one statement per table in the order tables first appear, then the
    deletes, one statement per key column: so a batch must not insert and delete one row."""
    inserts: dict[Table, list[Mapping[str, Any]]] = {}
    deletes: dict[Column[Any], list[Any]] = {}
    for write in writes:
        if isinstance(write, Insert):
            inserts.setdefault(write.table, []).append(write.row)
        else:
            deletes.setdefault(write.column, []).append(write.key)
    for table, rows in inserts.items():
        await conn.execute(insert(table), list(rows))
    for column, keys in deletes.items():
        await conn.execute(delete(column.table).where(column.in_(keys)))
