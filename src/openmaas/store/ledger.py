"""The ledger on the database: one transaction per command, the event log as the truth.

``LedgerStore.execute(command)`` runs in one transaction:

1. take the ledger's write lock: ``UPDATE ledger_head`` (a row lock on PostgreSQL, the
   database's write lock on SQLite), so every writer, in this process or another (the CLI
   while the server runs), is serialized;
2. catch up: apply the events other writers appended since this process last looked;
3. ``Ledger.decide(command)`` (pure; a refusal raises and the transaction rolls back);
4. append the events to ``ledger_events`` (``idempotency_key`` UNIQUE: request id, top-up
   id, pack id ...), their transfers to ``ledger_entries``, and run ``also`` (e.g. the usage
   record of the request being settled, an audit row) on the same connection;
5. commit; only then apply the events to the in-memory state.

Both ``ledger_events`` and ``ledger_entries`` are append-only (triggers refuse UPDATE and
DELETE). Balances are derived: the in-memory ``Ledger`` is a cache of the event log, and
``SUM(amount)`` over ``ledger_entries`` gives the same numbers in SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from pydantic import Field, TypeAdapter
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.aio import finish_despite_cancellation
from openmaas.core.ledger import Ledger
from openmaas.core.ledger_events import (
    Command,
    Event,
    Funded,
    GrantPack,
    GrantPromo,
    Hold,
    HoldPlaced,
    HoldResolved,
    OpenOrg,
    OrgOpened,
    PackExpired,
    PackGranted,
    SetCreditLimit,
    TopUp,
)
from openmaas.core.money import Currency
from openmaas.store.schema import ledger_entries, ledger_events, ledger_head, organizations

EVENT = TypeAdapter(Annotated[Event, Field(discriminator="kind")])

Also = Callable[[AsyncConnection, tuple[Event, ...]], Awaitable[None]]
"""Extra writes that commit or roll back with a command's events."""


def idempotency_key(event: Event) -> str | None:
    """The key that makes appending ``event`` twice impossible (None: repeatable)."""
    if isinstance(event, OrgOpened):
        return f"org:{event.org}"
    if isinstance(event, Funded):
        return f"funded:{event.funding_id}"
    if isinstance(event, PackGranted):
        return f"pack:{event.pack_id}"
    if isinstance(event, PackExpired):
        return f"expired:{event.pack_id}"
    if isinstance(event, HoldPlaced):
        return f"hold:{event.request_id}"
    if isinstance(event, HoldResolved):
        return f"resolved:{event.request_id}"
    return None


def _org_of(command: Command) -> str | None:
    if isinstance(command, Hold | TopUp | GrantPromo | GrantPack | SetCreditLimit):
        return command.org
    return None


class LedgerStore:
    """The ledger of one database. Safe for any number of coroutines of one process; other
    processes may write the same database at the same time (they serialize on the lock)."""

    def __init__(self, engine: AsyncEngine, now_ms: Callable[[], int]) -> None:
        self._engine = engine
        self._now_ms = now_ms
        self._ledger = Ledger()
        self._seq = 0  # the last event applied to ``_ledger``
        self._lock = asyncio.Lock()

    @property
    def ledger(self) -> Ledger:
        """The state as of the last command or ``refresh`` (read it, never mutate it)."""
        return self._ledger

    async def refresh(self) -> Ledger:
        """Catch up with events written by other processes; returns the current state."""
        async with self._lock:
            async with self._engine.connect() as conn:
                await self._catch_up(conn)
        return self._ledger

    async def execute(self, command: Command, *, also: Also | None = None) -> tuple[Event, ...]:
        """Decide and persist ``command`` atomically; returns its events (``()`` when it was
        a repeat). Raises the ledger's refusal (e.g. ``InsufficientBalance``) having
        written nothing, not even ``also``'s rows. An organization the ledger has not seen
        yet is opened first, in its own transaction, in the currency of its row. A caller
        cancelled meanwhile gets its ``CancelledError`` only once the command has finished
        (committed and applied, or rolled back), so the state it then reads is settled."""
        return await finish_despite_cancellation(self._execute(command, also))

    async def _execute(self, command: Command, also: Also | None) -> tuple[Event, ...]:
        async with self._lock:
            org = _org_of(command)
            if org is not None and org not in self._ledger.orgs:
                await self._transact(lambda conn: self._open_org(conn, org), None)
            return await self._transact(lambda _: self._decide(command), also)

    async def _decide(self, command: Command) -> tuple[Event, ...]:
        return self._ledger.decide(command)

    async def _transact(
        self, decide: Callable[[AsyncConnection], Awaitable[tuple[Event, ...]]], also: Also | None
    ) -> tuple[Event, ...]:
        async with self._engine.begin() as conn:
            head = await conn.execute(
                update(ledger_head).where(ledger_head.c.id == 1).values(seq=ledger_head.c.seq)
            )
            if head.rowcount != 1:
                raise RuntimeError("ledger_head is missing: run the migrations")
            await self._catch_up(conn)
            events = await decide(conn)
            if events:
                await self._append(conn, events)
            if also is not None:
                await also(conn, events)
        for event in events:  # committed: now the state may change
            self._ledger.apply(event)
        self._seq += len(events)
        return events

    async def _open_org(self, conn: AsyncConnection, org: str) -> tuple[Event, ...]:
        row = (
            await conn.execute(select(organizations.c.currency).where(organizations.c.id == org))
        ).first()
        if row is None:
            return ()  # the command's own check reports "no such organization"
        return self._ledger.decide(OpenOrg(org, Currency(row.currency)))

    async def _catch_up(self, conn: AsyncConnection) -> None:
        rows = await conn.execute(
            select(ledger_events.c.seq, ledger_events.c.body)
            .where(ledger_events.c.seq > self._seq)
            .order_by(ledger_events.c.seq)
        )
        for seq, body in rows:
            self._ledger.apply(EVENT.validate_json(body))
            self._seq = seq

    async def _append(self, conn: AsyncConnection, events: tuple[Event, ...]) -> None:
        at_ms = self._now_ms()
        event_rows, entry_rows = [], []
        for offset, event in enumerate(events, start=1):
            seq = self._seq + offset
            request_id = getattr(event, "request_id", None)
            event_rows.append(
                {
                    "seq": seq,
                    "at_ms": at_ms,
                    "kind": event.kind,
                    "org_id": getattr(event, "org", None),
                    "request_id": request_id,
                    "idempotency_key": idempotency_key(event),
                    "body": EVENT.dump_json(event).decode(),
                }
            )
            for transfer in getattr(event, "transfers", ()):
                unit = self._ledger.unit_of(transfer.debit)
                entry_rows.append(
                    {
                        "event_seq": seq,
                        "at_ms": at_ms,
                        "debit": transfer.debit,
                        "credit": transfer.credit,
                        "amount": transfer.amount,
                        "unit": unit,
                        "request_id": request_id,
                    }
                )
        await conn.execute(insert(ledger_events), event_rows)
        if entry_rows:
            await conn.execute(insert(ledger_entries), entry_rows)
        await conn.execute(
            update(ledger_head).where(ledger_head.c.id == 1).values(seq=self._seq + len(events))
        )
