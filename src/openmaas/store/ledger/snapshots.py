"""Snapshots of the ledger's state (migration 0010), so that a process starts from the newest
one and reads only the events after it, not the whole log.

A snapshot is derived data: ``core/ledger.py``'s ``LedgerState`` (balances, open holds and
leases, organizations, packs, budgets; not the window of settled ids) as JSON, with the seq
of the last event it reflects and the sha256 of its body. It is written in one transaction
of its own (a crash while writing leaves the previous ones as they were) and checked when
read: a body whose digest or shape does not match is skipped for the next older one, and
with none usable the log is replayed from its first event. ``ledger_events`` stays the
truth and append-only; the two newest snapshots are kept, older ones deleted.
"""

from __future__ import annotations

import hashlib
import logging

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.ledger import Ledger, LedgerState
from openmaas.store.schema import ledger_snapshots

log = logging.getLogger("openmaas.store.ledger.log")

STATE = TypeAdapter(LedgerState)
KEEP = 2
"""Snapshots kept: the newest and the one before it (usable should the newest be damaged)."""


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


async def read_newest(conn: AsyncConnection, window: int) -> tuple[Ledger, int] | None:
    """The ledger of the newest usable snapshot and the seq it reflects (None: there is
    none; the log is then replayed from its start)."""
    found = await conn.execute(
        select(ledger_snapshots.c.seq, ledger_snapshots.c.digest).order_by(
            ledger_snapshots.c.seq.desc()
        )
    )
    for seq, expected in found.all():
        row = await conn.execute(
            select(ledger_snapshots.c.body).where(ledger_snapshots.c.seq == seq)
        )
        body = row.scalar_one_or_none()
        if body is None or digest(body) != expected:
            log.warning("ledger snapshot at seq %d is damaged: an older one is read", seq)
            continue
        try:
            return Ledger.from_state(STATE.validate_json(body), window=window), int(seq)
        except (ValidationError, ValueError):
            log.warning("ledger snapshot at seq %d is of another shape: not read", seq)
    return None


async def newest_seq(conn: AsyncConnection) -> int | None:
    found = await conn.execute(select(func.max(ledger_snapshots.c.seq)))
    seq = found.scalar_one_or_none()
    return None if seq is None else int(seq)


async def write(engine: AsyncEngine, state: LedgerState, seq: int, at_ms: int, gap: int) -> bool:
    """Store ``state`` as the snapshot at ``seq`` unless one at least ``seq - gap`` exists
    (another process wrote one about as new); keep the ``KEEP`` newest. Whether it was
    written."""
    async with engine.connect() as conn:
        newest = await newest_seq(conn)
    if newest is not None and newest >= seq - gap:
        return False
    body = STATE.dump_json(state).decode()
    # Written first in its transaction: on SQLite a transaction that read before it writes
    # cannot wait for the write lock (another writer's commit in between fails it at once).
    async with engine.begin() as conn:
        await conn.execute(
            insert(ledger_snapshots).values(seq=seq, at_ms=at_ms, digest=digest(body), body=body)
        )
        kept = await conn.execute(
            select(ledger_snapshots.c.seq)
            .order_by(ledger_snapshots.c.seq.desc())
            .offset(KEEP - 1)
            .limit(1)
        )
        oldest_kept = kept.scalar_one_or_none()
        if oldest_kept is not None:
            await conn.execute(delete(ledger_snapshots).where(ledger_snapshots.c.seq < oldest_kept))
    return True
