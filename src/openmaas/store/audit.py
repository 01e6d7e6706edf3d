"""The audit log, and the one unit of work every administrative change goes through.

An administrative change (an organization, a key, money, a price, a tier, an
organization's terms, the catalog, a credential) is a function of an open transaction that
makes its writes and says what it changed (an ``AuditRecord``). ``AuditedChanges.commit``
runs it and appends that record to ``audit_log`` on the same connection, so the change and
its row commit together or not at all. With a ledger ``command`` the transaction is the
ledger's own (``LedgerStore.execute(also=)``: the events, the change and the row commit
together); otherwise it is one ``engine.begin()``. A change that raises writes nothing; one
that returns ``None`` (a repeated top-up id: nothing changed) writes no row.

Administrative services receive an ``AuditedChanges`` and never open a write transaction of
their own: that is what makes every change audited by construction.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.ledger_events import Command, Event
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.schema import audit_log


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at_ms: int
    actor: str
    action: str
    target: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What one change did: ``before`` and ``after`` as JSON values (None: there were none)."""

    action: str
    target: str
    before: Any = None
    after: Any = None


Change = Callable[[AsyncConnection, tuple[Event, ...]], Awaitable[AuditRecord | None]]
"""The writes of one change on the transaction's connection (with the ledger command's
events, ``()`` without one); returns what to audit, or None when nothing changed."""


async def audit(
    conn: AsyncConnection,
    at_ms: int,
    actor: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append one line to the audit log, in the caller's transaction (append-only)."""
    await conn.execute(
        insert(audit_log).values(
            at_ms=at_ms,
            actor=actor,
            action=action,
            target=target,
            before=None if before is None else json.dumps(before, sort_keys=True),
            after=None if after is None else json.dumps(after, sort_keys=True),
        )
    )


async def read_audit(
    engine: AsyncEngine, limit: int = 100, action: str = "", actor: str = ""
) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first; only those whose action starts with
    ``action`` (``key.``) and whose actor contains ``actor``, filtered by the database."""
    a = audit_log.c
    query = select(audit_log).order_by(a.id.desc()).limit(limit)
    if action:
        query = query.where(a.action.startswith(action, autoescape=True))
    if actor:
        query = query.where(a.actor.contains(actor, autoescape=True))
    async with engine.connect() as conn:
        rows = await conn.execute(query)
        return [
            AuditEntry(
                r.id,
                r.at_ms,
                r.actor,
                r.action,
                r.target,
                None if r.before is None else json.loads(r.before),
                None if r.after is None else json.loads(r.after),
            )
            for r in rows
        ]


class AuditedChanges:
    """Administrative changes made by ``actor`` (``cli:<user>``, ``key:<admin key id>``,
    ``system:first-run``), each committed with its audit row."""

    def __init__(
        self,
        database: AsyncEngine,
        ledger: LedgerStore,
        now_ms: Callable[[], int],
        actor: str,
        *,
        committed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.actor = actor
        self.now_ms = now_ms
        self._committed = committed  # after each change commits (the server: poll the feed)

    async def commit(self, change: Change, command: Command | None = None) -> tuple[Event, ...]:
        """Run ``change`` and write its audit row in one transaction (the ledger's when
        ``command`` is given); returns the command's events (``()`` without one)."""

        async def write(conn: AsyncConnection, events: tuple[Event, ...]) -> None:
            record = await change(conn, events)
            if record is not None:
                await audit(
                    conn,
                    self.now_ms(),
                    self.actor,
                    record.action,
                    record.target,
                    record.before,
                    record.after,
                )

        if command is not None:
            events = await self.ledger.execute(command, also=write)
        else:
            async with self.database.begin() as conn:
                await write(conn, ())
            events = ()
        if self._committed is not None:
            await self._committed()
        return events
