"""The ledger on the database: the event log is the truth, every command is atomic.

``LedgerStore.execute(command)`` commits the command in one transaction with whatever other
commands are waiting at that moment (group commit; each keeps its own outcome):

1. take the ledger's write lock: ``UPDATE ledger_head`` (a row lock on PostgreSQL, the
   database's write lock on SQLite), so every writer, in this process or another (the CLI
   while the server runs), is serialized;
2. catch up: apply the events other writers appended since this process last looked
   (``ledger_head.seq``, the last event's, comes back from the lock's ``UPDATE ...
   RETURNING``: when it is the one this process appended last, nothing is read);
3. ``Ledger.decide`` each command on the state the previous ones left (pure; a refusal
   answers that command alone, having written nothing);
4. append the events to ``ledger_events`` (``idempotency_key`` UNIQUE: request id, top-up
   id, pack id ...), their transfers to ``ledger_entries``, run each command's ``also``
   (e.g. an audit row) on the same connection, and write the rows each command's ``rows``
   gives (e.g. the usage record of the request being settled, the deletion of its in-flight
   row): one multi-row ``INSERT`` per table for the whole batch, then one ``DELETE`` per
   table;
5. commit, then answer each caller. If anything fails before the commit, the transaction
   rolls back and its commands are retried one by one, so only the culprit fails.

A batch the direct writers run (``store/writers/``: no ``also``) is optimistic: steps 3
and 4's decisions come first, on the state as of the last event this process applied, and
the lock, the appends, the rows and the commit follow in one hand-off (SQLite) or one
statement (PostgreSQL) that writes only if the log's last event is still that one. If
another process appended meanwhile nothing is written: the decisions are undone
(``store/ledger/undo.py``), its events applied, and the batch runs steps 1 to 5 as above.

A batch that only settles requests against this process's own leases, each within what it
reserved (the hot path of a serving process), *commutes* with every other event and is
appended wherever the log stands, after whatever other processes appended, with no look at
the log (``_commuting``): processes settling their requests never send each other back.
Its events may then be applied ahead of others' not yet read (``_ahead``, skipped by the
catch-up); a fence (``ledger_head.fence``, migration 0017) sends a process that was
recovered while it still ran back to the ordered path.

The in-memory ``Ledger`` keeps only a window of recently settled request ids
(``OPENMAAS_LEDGER_SETTLED_WINDOW``). A settlement (or hold) repeated after its id left the
window is decided again, and its append is refused by the unique ``resolved:<request id>``
(or ``hold:<request id>``) key: the transaction rolls back, the state in memory is rebuilt
from the log, and the command, retried alone, finds its key in ``ledger_events``; the
ledger then remembers the id and answers the command as the repeat it is (no events, its
``rows`` given ``()``). A ``Settle`` or ``Release`` of a hold the state does not know
looks the key up first.

A process does not replay the whole log when it starts: it reads the newest snapshot of the
ledger's state (``store/ledger/snapshots.py``, migration 0010) and then only the events
after it. Whichever process commits the event that puts the log
``OPENMAAS_LEDGER_SNAPSHOT_EVENTS`` past the newest snapshot it knows writes a new one, in a
transaction of its own after its commit, and ``close`` (a clean shutdown) writes one.

Both ``ledger_events`` and ``ledger_entries`` are append-only (triggers refuse UPDATE and
DELETE). Balances are derived: the in-memory ``Ledger`` is a cache of the event log, and
``SUM(amount)`` over ``ledger_entries`` gives the same numbers in SQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.aio import finish_despite_cancellation
from openmaas.core.ledger import DEFAULT_SETTLED_WINDOW, Ledger, LedgerState, RecentIds
from openmaas.core.ledger_events import (
    Command,
    Event,
    OpenOrg,
    Release,
    Settle,
    SpendLease,
)
from openmaas.core.money import Currency
from openmaas.store.ledger import snapshots as ledger_snapshots
from openmaas.store.ledger.batch import (
    EVENT,
    Also,
    Appended,
    Caught,
    Job,
    Rows,
    event_rows,
    from_lease,
    job_writes,
    org_of,
    raises_fence,
    request_of,
)
from openmaas.store.ledger.undo import Undo
from openmaas.store.rows import Delete, Insert, write_rows
from openmaas.store.schema import ledger_entries, ledger_events, ledger_head, organizations
from openmaas.store.writers.asyncpg import AsyncpgWriter, uses_asyncpg
from openmaas.store.writers.sqlite import (
    ENTRY_COLUMNS,
    EVENT_COLUMNS,
    INSERT_ENTRIES,
    INSERT_EVENTS,
    RAISE_FENCE,
    SET_HEAD,
    RowStatements,
    SqliteWriter,
    Statement,
    database_file,
)

DEFAULT_SNAPSHOT_EVENTS = 100_000
"""Events past the newest snapshot after which a process writes a new one."""

log = logging.getLogger("openmaas.store.ledger.log")


_LOCK_HEAD = (
    update(ledger_head)
    .where(ledger_head.c.id == 1)
    .values(seq=ledger_head.c.seq)
    .returning(ledger_head.c.seq)
)
"""The ledger's write lock (a row lock on PostgreSQL, the write lock on SQLite), answering
the last event's seq."""
# Built once, like _LOCK_HEAD: building a statement per transaction cost more CPU in
# SQLAlchemy than running it (docs/benchmarks.md).
_INSERT_EVENTS = insert(ledger_events)
_INSERT_ENTRIES = insert(ledger_entries)
_RAISE_FENCE = (
    update(ledger_head).where(ledger_head.c.id == 1).values(fence=ledger_head.c.fence + 1)
)
_SET_HEAD = update(ledger_head).where(ledger_head.c.id == 1).values(seq=bindparam("head_seq"))


class LedgerStore:
    """The ledger of one database. Safe for any number of coroutines of one process; other
    processes may write the same database at the same time (they serialize on the lock)."""

    def __init__(
        self,
        engine: AsyncEngine,
        now_ms: Callable[[], int],
        *,
        max_batch: int = 256,
        settled_window: int = DEFAULT_SETTLED_WINDOW,
        snapshot_events: int = DEFAULT_SNAPSHOT_EVENTS,
        instance_id: str | None = None,
    ) -> None:
        self._engine = engine
        # This process's instance (store/instance.py): the settlements of requests admitted
        # against its own leases are appended as commuting batches (``_commuting``).
        self.instance_id = instance_id
        self._now_ms = now_ms
        self._window = settled_window
        self._ledger = self._empty()
        self._seq = 0  # the last event applied to ``_ledger``, and every one before it
        # Events after ``_seq`` applied too: this process's own commuting appends, which
        # landed after other processes' events not yet read (``_commuting``).
        self._ahead: set[int] = set()
        self._fence = 0  # ``ledger_head.fence`` as this process last saw it
        self._loaded = False  # whether ``_ledger`` started from the newest snapshot (or none)
        self._snapshot_every = snapshot_events  # 0: only at ``close``
        self._snapshot_seq = 0  # the newest snapshot's seq this process knows of
        self._snapshotting: asyncio.Future[None] | None = None
        self.events_read = 0  # events read from the log into memory (start-up, catch-ups)
        self.snapshot_read: int | None = None  # the seq of the snapshot it last started from
        self.snapshots_written = 0
        self.conflicts = 0  # optimistic batches another process's appends sent back
        self.commuted = 0  # batches appended without the log standing still (``_commuting``)
        # Whether the last look at the log found another process's events: batches then
        # take the lock first (``_optimistic``) until a lock finds none again.
        self._contended = False
        self._lock = asyncio.Lock()  # one transaction (or refresh) of this process at a time
        self._queue: list[Job] = []
        self._flusher: asyncio.Future[None] | None = None
        self._max_batch = max_batch
        # On a SQLite file, batches without ``also`` go through a connection of their own
        # in one or two hand-offs (store/writers/sqlite.py); opened on first use.
        self._sqlite = database_file(engine) is not None
        self._writer: SqliteWriter | None = None
        # On PostgreSQL through asyncpg, the same batches straight through the driver
        # (store/writers/asyncpg.py), the rows' SQL built as for SQLite's writer.
        self._asyncpg = AsyncpgWriter() if uses_asyncpg(engine) else None
        self._rows_sql = RowStatements()

    async def close(self) -> None:
        """Write a snapshot of the state if the log went past the newest one (a clean
        shutdown: the next start reads no event), then close the SQLite writer's connection
        and thread, if one was opened."""
        await self.snapshot_written()
        try:
            await self.snapshot(only_if_newer=True)
        except Exception:  # the snapshot is an optimization: the log stays the truth
            log.warning("the ledger snapshot at shutdown was not written", exc_info=True)
        async with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                await writer.close()

    @property
    def ledger(self) -> Ledger:
        """The state as of the last command or ``refresh`` (read it, never mutate it)."""
        return self._ledger

    async def snapshot(self, *, only_if_newer: bool = False) -> bool:
        """Write a snapshot of the state as of the log's last event now (``only_if_newer``:
        only when that is past the newest snapshot this process knows of, and a process
        that never read the ledger writes none). Whether one was written."""
        async with self._lock:
            if only_if_newer and not self._loaded:
                return False
            await self._ensure_loaded()
            async with self._engine.connect() as conn:
                await self._catch_up(conn)
            if (only_if_newer and self._seq <= self._snapshot_seq) or self._ahead:
                return False
            state, seq = self._ledger.state(), self._seq
        written = await ledger_snapshots.write(self._engine, state, seq, self._now_ms(), 0)
        if written:
            self._snapshot_seq = max(self._snapshot_seq, seq)
            self.snapshots_written += 1
        return written

    async def snapshot_written(self) -> None:
        """Wait for the snapshot being written in the background, if one is."""
        if self._snapshotting is not None:
            await self._snapshotting

    async def _ensure_loaded(self) -> None:
        """Start ``_ledger`` from the newest usable snapshot (once, and again after a failed
        transaction made it forget); the catch-up then reads only the events after it."""
        if self._loaded:
            return
        async with self._engine.connect() as conn:
            found = await ledger_snapshots.read_newest(conn, self._window)
        if found is None:
            self._ledger, self._seq = self._empty(), 0
        else:
            self._ledger, self._seq = found
            self._snapshot_seq = max(self._snapshot_seq, self._seq)
        self.snapshot_read = None if found is None else self._seq
        self._loaded = True

    def _snapshot_if_due(self) -> None:
        """After a commit: snapshot the state (as of ``_seq``, under the lock) once the log
        is ``snapshot_events`` past the newest snapshot; written in the background."""
        if not self._snapshot_every or self._seq - self._snapshot_seq < self._snapshot_every:
            return
        if self._ahead:  # the state is not the log's up to any event: the next catch-up's
            return
        if self._snapshotting is not None and not self._snapshotting.done():
            return
        self._snapshot_seq = self._seq
        self._snapshotting = asyncio.ensure_future(
            self._write_snapshot(self._ledger.state(), self._seq)
        )

    async def _write_snapshot(self, state: LedgerState, seq: int) -> None:
        gap = self._snapshot_every // 2  # another process's about as new: none from this one
        try:
            if await ledger_snapshots.write(self._engine, state, seq, self._now_ms(), gap):
                self.snapshots_written += 1
        except Exception:  # the snapshot is an optimization: the log stays the truth
            log.warning("a ledger snapshot was not written", exc_info=True)

    @property
    def handoffs(self) -> int:
        """Calls this process made to the SQLite writer's thread (0 on another database)."""
        return 0 if self._writer is None else self._writer.handoffs

    @property
    def backlog(self) -> int:
        """Commands and writes queued, not yet in a batch (the metrics' writer backlog)."""
        return len(self._queue)

    async def refresh(self) -> Ledger:
        """Catch up with events written by other processes; returns the current state."""
        async with self._lock:
            await self._ensure_loaded()
            async with self._engine.connect() as conn:
                await self._catch_up(conn)
        return self._ledger

    def _empty(self) -> Ledger:
        return Ledger(settled_ids=RecentIds(self._window))

    def _forget(self) -> None:
        """Applied in memory, never committed: start over from the newest snapshot and the
        log after it."""
        self._ledger, self._seq = self._empty(), 0
        self._ahead.clear()
        self._loaded = False

    async def settled_in_log(self, request_id: str) -> bool:
        """Whether the log holds the request's settlement (its ``resolved:`` key)."""
        async with self._engine.connect() as conn:
            found = await conn.execute(
                select(ledger_events.c.seq).where(
                    ledger_events.c.idempotency_key == f"resolved:{request_id}"
                )
            )
            return found.first() is not None

    async def _remember_if_settled(self, request_id: str) -> bool:
        """Whether the log says ``request_id`` was settled; if so the ledger in memory
        (rebuilt first when a failure left it to be) remembers it, so that its repeat is
        answered as one."""
        if not await self.settled_in_log(request_id):
            return False
        async with self._lock:
            await self._ensure_loaded()
            async with self._engine.connect() as conn:
                await self._catch_up(conn)
            self._ledger.remember_settled(request_id)
        return True

    async def execute(
        self, command: Command, *, also: Also | None = None, rows: Rows | None = None
    ) -> tuple[Event, ...]:
        """Decide and persist ``command`` atomically; returns its events (``()`` when it was
        a repeat). Raises the ledger's refusal (e.g. ``InsufficientBalance``) having
        written nothing, not even ``also``'s rows. An organization the ledger has not seen
        yet is opened first, in the currency of its row. A caller cancelled meanwhile gets
        its ``CancelledError`` only once the command has finished (committed and applied, or
        rolled back), so the state it then reads is settled."""
        if (
            isinstance(command, Settle | Release)
            and command.request_id not in self._ledger.holds
            and not self._ledger.settled(command.request_id)
        ) or (
            type(command) is SpendLease
            and command.lease_id not in self._ledger.leases
            and not self._ledger.settled(command.request_id)
        ):  # settled before the window (or its lease closed before it), or held by another
            await self._remember_if_settled(command.request_id)  # process: the log says
        future = self._enqueue(command, also, rows)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:  # the command still finishes: then the cancellation
            await finish_despite_cancellation(future)
            raise

    async def write(self, also: Also | None = None, *, rows: Rows | None = None) -> None:
        """Run ``also`` and write ``rows`` (writes with no ledger command: a usage record, a
        checkpoint) in the next group-committed transaction; it shares the commit of
        whatever waits with it."""
        await finish_despite_cancellation(self._enqueue(None, also, rows))

    def _enqueue(
        self, command: Command | None, also: Also | None, rows: Rows | None
    ) -> asyncio.Future[tuple[Event, ...]]:
        """Queue a job for the next transaction; its future is answered once it committed
        or failed (the caller's cancellation never cancels it: it is shielded, and a future
        needs no task of its own)."""
        job = Job(command, also, rows, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return job.future

    async def _flush(self) -> None:
        """Group commit: every command waiting when a transaction starts goes into it."""
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            try:
                await self._run_batch(batch)
            except Exception as exc:  # the transaction rolled back as a whole
                if len(batch) == 1:
                    await self._failed(batch[0], exc)
                    continue
                for job in batch:  # one at a time: only the culprit fails
                    try:
                        await self._run_batch([job])
                    except Exception as single:
                        await self._failed(job, single)

    async def _failed(self, job: Job, exc: Exception) -> None:
        """``job`` failed alone. Refused by the log's unique key as a request settled
        before the window of recent ones: remember it and run it again, a repeat now (no
        events). Otherwise it fails with ``exc``."""
        request_id = request_of(job.command)
        try:
            if request_id is not None and await self._remember_if_settled(request_id):
                await self._run_batch([job])
                return
        except Exception as again:
            if request_id is not None and request_id in self._ledger.settled_ids:
                exc = again  # the repeat's own failure
        job.settle(exc)

    async def _run_batch(self, batch: list[Job]) -> None:
        """One transaction for ``batch``: lock, catch up, decide each command on the state
        the previous ones left, append, run their extra writes, commit; then answer each.
        A failure after the first decision rolls back the database and forgets the state in
        memory (the next catch-up rebuilds it from the log)."""
        if self._sqlite and self._direct(batch):
            await self._run_batch_sqlite(batch)
            return
        if self._asyncpg is not None and self._direct(batch):
            await self._run_batch_asyncpg(batch)
            return
        async with self._lock:
            await self._ensure_loaded()
            outcomes: list[tuple[Event, ...] | Exception] = []
            appended: list[tuple[int, Event]] = []
            try:
                async with self._engine.begin() as conn:
                    if any(job.command is not None for job in batch):  # plain writes need
                        await self._lock_and_catch_up(conn)  # neither the lock nor the log
                    for job in batch:
                        written, outcome = await self._decide_and_apply(conn, job.command)
                        outcomes.append(outcome)
                        for event in written:
                            self._seq += 1
                            appended.append((self._seq, event))
                    if appended:
                        await self._append(conn, appended)
                        if self._raises_fence(appended):
                            await conn.execute(_RAISE_FENCE)
                    for job, outcome in zip(batch, outcomes, strict=True):
                        if job.also is not None and not isinstance(outcome, Exception):
                            await job.also(conn, outcome)
                    if writes := job_writes(batch, outcomes):
                        await write_rows(conn, writes)
            except BaseException:
                if appended:  # applied in memory, never committed: start over from the log
                    self._forget()
                raise
            if appended:
                self._snapshot_if_due()
        for job, outcome in zip(batch, outcomes, strict=True):
            job.settle(outcome)

    def _direct(self, batch: list[Job]) -> bool:
        """Whether the SQLite writer can run ``batch``: no extra writes on a connection, no
        organization to open (that reads its row)."""
        for job in batch:
            if job.also is not None:
                return False
            org = org_of(job.command) if job.command is not None else None
            if org is not None and org not in self._ledger.orgs:
                return False
        return True

    async def _run_batch_sqlite(self, batch: list[Job]) -> None:
        """``_run_batch`` through the SQLite writer, in one hand-off: plain writes; and
        commands, decided here on the state as of the last event this process saw, then
        written if that is still the log's last (``_optimistic``). After a conflict, the
        lock and the catch-up in one hand-off, the decisions here, then the appends, the
        rows and the commit in another."""
        async with self._lock:
            await self._ensure_loaded()
            if self._writer is None:
                self._writer = await SqliteWriter.open(self._engine)
            writer = self._writer
            assert writer is not None
            commands = any(job.command is not None for job in batch)
            sent_back = self.conflicts  # changed below: this batch was sent back
            if commands:

                async def append(
                    fence: int, base: int, count: int, statements: list[Statement]
                ) -> Appended:
                    assert writer is not None
                    return await writer.call(writer.append, fence, base, count, statements)

                async def write(base: int, statements: list[Statement]) -> Caught:
                    assert writer is not None
                    return await writer.call(writer.commit_at, base, statements)

                if await self._commuting(batch, writer.rows, append):
                    return
                if await self._optimistic(batch, writer.rows, write):
                    return
            outcomes: list[tuple[Event, ...] | Exception] = []
            appended: list[tuple[int, Event]] = []
            locked = False
            try:
                if commands:
                    caught_up = await writer.call(writer.lock, self._seq)
                    locked = True
                    others = self._apply_caught_up(caught_up)
                    self._contended = bool(others) or self.conflicts != sent_back
                outcomes, appended = self._decide_all(batch)
                statements = self._statements(batch, outcomes, appended, writer.rows)
                if locked:
                    await writer.call(writer.commit, statements)
                elif statements:
                    await writer.call(writer.write, statements)
            except BaseException:
                if locked:
                    await asyncio.shield(writer.call(writer.rollback))
                if appended:  # applied in memory, never committed: start over from the log
                    self._forget()
                raise
            if appended:
                self._snapshot_if_due()
        for job, outcome in zip(batch, outcomes, strict=True):
            job.settle(outcome)

    async def _optimistic(
        self,
        batch: list[Job],
        rows: Callable[[Iterable[Insert | Delete]], list[Statement]],
        write: Callable[[int, list[Statement]], Awaitable[Caught]],
    ) -> bool:
        """Under ``_lock``: decide ``batch`` on the state in memory and ``write`` its
        statements, which commits them only if the log's last event is still ``base``, the
        one this process applied last: then answer each job and say True. If another
        process appended meanwhile, nothing was written: undo the decisions in memory,
        apply the events ``write`` read, if any, and say False (the caller decides the
        batch again, under the database's lock, catching up on the rest).

        While other processes keep appending, most optimistic batches would be sent back
        (a wasted hand-off or round trip each): after a conflict, batches take the lock
        first, as before, and the first whose lock finds no other process's events makes
        the next batch optimistic again. A lone process is never sent back."""
        if self._contended or self._ahead:  # ``_seq`` is not what the state was decided on
            return False
        base = self._seq
        undo = Undo()
        outcomes: list[tuple[Event, ...] | Exception] = []
        appended: list[tuple[int, Event]] = []
        try:
            outcomes, appended = self._decide_all(batch, undo)
            committed, caught_up = await write(
                base, self._statements(batch, outcomes, appended, rows)
            )
        except BaseException:
            if appended:  # applied in memory, never committed: start over from the log
                self._forget()
            raise
        if not committed:
            undo.revert(self._ledger)
            self._seq = base
            self.conflicts += 1
            self._contended = True
            self._apply_caught_up(caught_up)
            return False
        if appended:
            self._snapshot_if_due()
        for job, outcome in zip(batch, outcomes, strict=True):
            job.settle(outcome)
        return True

    async def _commuting(
        self,
        batch: list[Job],
        rows: Callable[[Iterable[Insert | Delete]], list[Statement]],
        append: Callable[[int, int, int, list[Statement]], Awaitable[Appended]],
    ) -> bool:
        """Under ``_lock``: a batch that only settles requests against this process's own
        leases, each within what it reserved there (``LeaseSpent`` from the lease alone),
        is appended wherever the log stands: ``append`` moves the head on by its events,
        numbers them after whatever other processes appended, writes and commits, with no
        look at the log. True: answered. False: nothing written, the decisions undone (the
        caller runs the batch the ordered way).

        Such a settlement commutes with every other event: it moves money from the lease to
        revenue, and nothing another process decides reads the lease (only its owner draws
        from it, reserves in it and shrinks it) or revenue; it was decided on the lease as
        its owner left it, which every process that applies the log finds the same at that
        point. Its events may land after events this process has not read: they wait in
        ``_ahead``, and a catch-up skips them. A lease another process settled or closed
        (the recovery of this process, taken for dead) breaks that: such a write raises the
        log's fence (``ledger_head.fence``, in its transaction), and an append is written
        only while the fence is the one this process saw; else it is sent back to the
        ordered path, which reads what was done."""
        if self.instance_id is None:
            return False
        leases = self._ledger.leases
        for job in batch:
            command = job.command
            if command is None:
                continue
            if type(command) is not SpendLease:
                return False
            lease = leases.get(command.lease_id)
            if lease is None or lease.closed or lease.instance_id != self.instance_id:
                return False
        base = self._seq
        undo = Undo()
        outcomes: list[tuple[Event, ...] | Exception] = []
        appended: list[tuple[int, Event]] = []
        try:
            outcomes, appended = self._decide_all(batch, undo)
            self._seq = base
            if not all(from_lease(event) for _, event in appended):
                undo.revert(self._ledger)
                return False
            statements = self._statements(batch, outcomes, appended, rows, commuting=True)
            head, self._fence = await append(self._fence, base, len(appended), statements)
        except BaseException:
            if appended:  # applied in memory, never committed: start over from the log
                self._forget()
            raise
        if head is None:
            undo.revert(self._ledger)
            return False
        self.commuted += 1
        if head - len(appended) == base:  # nobody else appended: as an optimistic batch
            self._seq = head
            self._snapshot_if_due()
        else:
            self._ahead.update(range(head - len(appended) + 1, head + 1))
        for job, outcome in zip(batch, outcomes, strict=True):
            job.settle(outcome)
        return True

    async def _run_batch_asyncpg(self, batch: list[Job]) -> None:
        """``_run_batch`` on PostgreSQL through asyncpg itself: the same statements, each
        statement's rows in one ``executemany``, in one transaction."""
        writer = self._asyncpg
        assert writer is not None
        async with self._lock:
            await self._ensure_loaded()
            sent_back = self.conflicts  # changed below: this batch was sent back
            if any(job.command is not None for job in batch):

                async def append(
                    fence: int, base: int, count: int, statements: list[Statement]
                ) -> Appended:
                    assert writer is not None
                    async with self._engine.connect() as conn:
                        apg = await writer.driver(conn)
                        return await writer.append(apg, fence, base, count, statements)

                async def write(base: int, statements: list[Statement]) -> Caught:
                    assert writer is not None
                    async with self._engine.connect() as conn:
                        apg = await writer.driver(conn)
                        return await writer.commit_at(apg, base, statements), []

                if await self._commuting(batch, self._rows_sql.rows, append):
                    return
                if await self._optimistic(batch, self._rows_sql.rows, write):
                    return
            outcomes: list[tuple[Event, ...] | Exception] = []
            appended: list[tuple[int, Event]] = []
            try:
                async with self._engine.connect() as conn:
                    apg = await writer.driver(conn)
                    rows = self._rows_sql.rows
                    if not any(job.command is not None for job in batch):  # rows alone
                        outcomes = [() for _ in batch]
                        statements = self._statements(batch, outcomes, [], rows)
                        await writer.run_atomic(apg, statements)  # one round trip, no BEGIN
                    else:
                        async with apg.transaction():
                            caught_up = await writer.lock(apg, self._seq)
                            others = self._apply_caught_up(caught_up)
                            self._contended = bool(others) or self.conflicts != sent_back
                            outcomes, appended = self._decide_all(batch)
                            statements = self._statements(batch, outcomes, appended, rows)
                            await writer.run(apg, statements)
            except BaseException:
                if appended:  # applied in memory, never committed: start over from the log
                    self._forget()
                raise
            if appended:
                self._snapshot_if_due()
        for job, outcome in zip(batch, outcomes, strict=True):
            job.settle(outcome)

    def _apply_caught_up(self, events: Iterable[tuple[int, str]]) -> int:
        """Apply the events read from the log after ``_seq``, in order, but for this
        process's own commuting appends (applied already); how many were applied."""
        applied = 0
        for seq, body in events:
            self._seq = seq
            if self._ahead and seq in self._ahead:
                self._ahead.discard(seq)
                continue
            self._ledger.apply(EVENT.validate_json(body))
            self.events_read += 1
            applied += 1
        return applied

    def _decide_all(
        self, batch: list[Job], undo: Undo | None = None
    ) -> tuple[list[tuple[Event, ...] | Exception], list[tuple[int, Event]]]:
        """Each job's outcome, decided on the state the previous ones left, and the events
        to append, numbered (each saved in ``undo`` before it is applied, if given)."""
        outcomes: list[tuple[Event, ...] | Exception] = []
        appended: list[tuple[int, Event]] = []
        for job in batch:
            if job.command is None:
                outcomes.append(())
                continue
            written, outcome = self._decide(job.command, undo)
            outcomes.append(outcome)
            for event in written:
                self._seq += 1
                appended.append((self._seq, event))
        return outcomes, appended

    def _statements(
        self,
        batch: list[Job],
        outcomes: list[tuple[Event, ...] | Exception],
        appended: list[tuple[int, Event]],
        rows: Callable[[Iterable[Insert | Delete]], list[Statement]],
        *,
        commuting: bool = False,
    ) -> list[Statement]:
        """The batch's writes as the direct writers' statements: events, entries, the head
        and the fence if raised (``_raises_fence``; neither for a ``commuting`` batch, whose
        writer moves the head and which settles from this process's leases alone), then
        every job's rows."""
        statements: list[Statement] = []
        if appended:
            events, entries = event_rows(appended, self._now_ms(), self._ledger.unit_of)
            statements.append((INSERT_EVENTS, events))
            if entries:
                statements.append((INSERT_ENTRIES, entries))
            if not commuting:
                statements.append((SET_HEAD, [(appended[-1][0],)]))
                if self._raises_fence(appended):
                    statements.append((RAISE_FENCE, [()]))
        statements.extend(rows(job_writes(batch, outcomes)))
        return statements

    def _raises_fence(self, appended: list[tuple[int, Event]]) -> bool:
        return raises_fence(appended, self._ledger.leases, self.instance_id)

    async def _lock_and_catch_up(self, conn: AsyncConnection) -> None:
        """Take the ledger's lock; read the events other processes appended since ours
        (none when the head says so: one statement, not two, for a process that wrote
        last)."""
        latest = (await conn.execute(_LOCK_HEAD)).scalar_one_or_none()
        if latest is None:
            raise RuntimeError("ledger_head is missing: run the migrations")
        if latest != self._seq:
            await self._catch_up(conn)

    async def _decide_and_apply(
        self, conn: AsyncConnection, command: Command | None
    ) -> tuple[tuple[Event, ...], tuple[Event, ...] | Exception]:
        """The events to append and the command's outcome (its own events, or its refusal).
        An organization the ledger has not seen is opened first, whatever the outcome."""
        if command is None:  # a plain write
            return (), ()
        opened: tuple[Event, ...] = ()
        org = org_of(command)
        if org is not None and org not in self._ledger.orgs:
            opened = await self._open_org(conn, org)
            for event in opened:
                self._ledger.apply(event)
        written, outcome = self._decide(command)
        return opened + written, outcome

    def _decide(
        self, command: Command, undo: Undo | None = None
    ) -> tuple[tuple[Event, ...], tuple[Event, ...] | Exception]:
        """The command's events, applied to the state (or its refusal, nothing applied),
        each saved in ``undo`` first if given."""
        try:
            own = self._ledger.decide(command)
        except Exception as exc:  # refused: nothing of its own is written
            return (), exc
        for event in own:
            if undo is not None:
                undo.record(self._ledger, event)
            self._ledger.apply(event)
        return own, own

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
        self._apply_caught_up(rows)

    async def _append(self, conn: AsyncConnection, events: list[tuple[int, Event]]) -> None:
        rows, entries = event_rows(events, self._now_ms(), self._ledger.unit_of)
        await conn.execute(_INSERT_EVENTS, [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows])
        if entries:
            named = [dict(zip(ENTRY_COLUMNS, r, strict=True)) for r in entries]
            await conn.execute(_INSERT_ENTRIES, named)
        await conn.execute(_SET_HEAD, {"head_seq": events[-1][0]})
