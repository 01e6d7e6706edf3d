"""The change feed: every process learns of every administrative change within a poll.

Every administrative change writes exactly one ``audit_log`` row in its own transaction
(``store/audit.py``), so the log's highest id is a version of the configuration. A
``ChangeFeed`` polls ``SELECT max(id) FROM audit_log`` (the primary key: one index probe)
every ``poll_seconds`` and, when it moved, reads the new rows' action and target and hands
them to its subscribers (the key cache, the accountant's terms), which drop or reload what
the change touched. One feed per serving process; a failing poll is logged and retried.

Ids are handed out when a row is inserted, not when it commits: on PostgreSQL a change
may commit after one with a higher id was already seen. An id below the highest one seen
that has not shown up yet is a *gap*, re-read on every poll until it shows up or
``GAP_SECONDS`` pass (a rolled-back change leaves a gap forever); a gap given up on is
reported as a ``RESET`` (anything may have changed), so nothing is ever missed silently.
On SQLite writers are serialized and there are no gaps.

``current()`` says whether the last successful poll is recent (``poll_seconds`` plus
``STALE_SECONDS``): the key cache answers from memory only while it is, so a process that
cannot see the database refuses to vouch for a key it may have missed a revocation of.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.clock import Clock
from openmaas.store.schema import audit_log

log = logging.getLogger("openmaas.changes")

GAP_SECONDS = 60.0
"""How long an id below the highest one seen is waited for before it is given up."""
START_WINDOW = 100
"""At start, ids this far below the head that are missing are treated as gaps (changes
that were in flight while the process started)."""
STALE_SECONDS = 1.0
"""How far past its interval the last successful poll may be for ``current()``."""
RESET = "*"
"""The action of a change that says: anything may have changed; reload everything."""


@dataclass(frozen=True, slots=True)
class Change:
    """One audited change: its audit row's id, action (``key.revoke``) and target (the
    key id, the organization id, ``model/currency``, ...)."""

    id: int
    action: str
    target: str

    @property
    def resets(self) -> bool:
        return self.action == RESET


Subscriber = Callable[[Sequence[Change]], Awaitable[None]]


async def audit_head(conn: AsyncConnection) -> int:
    """The highest audit id (0: none yet): the version of the configuration."""
    return int((await conn.execute(select(func.max(audit_log.c.id)))).scalar_one() or 0)


async def read_changes(
    conn: AsyncConnection, after: int, upto: int, also: Sequence[int] = ()
) -> list[Change]:
    """The changes with ids in ``(after, upto]`` and those among ``also``, oldest first."""
    a = audit_log.c
    where = (a.id > after) & (a.id <= upto)
    if also:
        where = where | a.id.in_(list(also))
    rows = await conn.execute(select(a.id, a.action, a.target).where(where).order_by(a.id))
    return [Change(int(r.id), r.action, r.target) for r in rows]


class ChangeFeed:
    """Polls the audit log and tells subscribers what changed (see the module's text)."""

    def __init__(self, database: AsyncEngine, clock: Clock, poll_seconds: float = 0.5) -> None:
        self._database = database
        self._clock = clock
        self.poll_seconds = poll_seconds
        self._subscribers: list[Subscriber] = []
        self._head = 0  # the highest id seen
        self._gaps: dict[int, float] = {}  # ids below the head not seen yet -> give up at
        self._polled_at: float | None = None  # monotonic start of the last successful poll
        self._lock = asyncio.Lock()  # one poll at a time
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def head(self) -> int:
        return self._head

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def current(self) -> bool:
        """Whether a poll succeeded within the last ``poll_seconds + STALE_SECONDS``."""
        if self._polled_at is None:
            return False
        return self._clock.monotonic() - self._polled_at <= self.poll_seconds + STALE_SECONDS

    async def start(self) -> None:
        """Read the head (what is cached from now on is at least this new), then poll in
        the background."""
        started = self._clock.monotonic()
        async with self._database.connect() as conn:
            head = await audit_head(conn)
            low = max(head - START_WINDOW, 0)
            seen = {c.id for c in await read_changes(conn, low, head)}
        self._head = head
        self._gaps = {i: started + GAP_SECONDS for i in range(low + 1, head + 1) if i not in seen}
        self._polled_at = started
        self._task = asyncio.create_task(self._run(), name="openmaas-change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.poll_now()

    async def poll_now(self) -> None:
        """One poll, now (after this process's own change, so it applies before the change's
        caller is answered); a failure is logged, never raised."""
        try:
            await self.poll()
        except Exception:
            if not self._failing:
                log.exception("polling the change feed failed; retrying")
            self._failing = True
        else:
            if self._failing:
                log.warning("the change feed is polling again")
            self._failing = False

    async def poll(self) -> list[Change]:
        """Read what changed since the last poll and tell the subscribers; returns it."""
        async with self._lock:
            started = self._clock.monotonic()
            async with self._database.connect() as conn:
                head = await audit_head(conn)
                changes: list[Change] = []
                if head > self._head or self._gaps:
                    changes = await read_changes(conn, self._head, head, sorted(self._gaps))
            changes.extend(self._note(changes, head, started))
            if changes:
                await self._publish(changes)
            self._polled_at = started
            return changes

    def _note(self, changes: Sequence[Change], head: int, now: float) -> list[Change]:
        """Move the head past what was read, remember the ids skipped over as gaps; returns
        a ``RESET`` if a gap was given up on."""
        for change in changes:
            self._gaps.pop(change.id, None)
        seen = {change.id for change in changes}
        if head > self._head:
            for missing in range(self._head + 1, head + 1):
                if missing not in seen:
                    self._gaps[missing] = now + GAP_SECONDS
            self._head = head
        expired = [i for i, deadline in self._gaps.items() if deadline <= now]
        for i in expired:
            del self._gaps[i]
        return [Change(max(expired), RESET, RESET)] if expired else []

    async def _publish(self, changes: Sequence[Change]) -> None:
        for subscriber in self._subscribers:
            try:
                await subscriber(changes)
            except Exception:  # one subscriber's failure does not starve the others
                log.exception("a change-feed subscriber failed on %d changes", len(changes))
