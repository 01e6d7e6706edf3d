"""The ledger store on a real PostgreSQL server (tests/pg.py), and the multi-writer tests on
SQLite as well: migrations, append-only triggers, holds under concurrency, two writers.

Skipped with a reason where the PostgreSQL server binaries are not on PATH."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import InsufficientBalance
from openmaas.core.ledger_events import Event, Hold, Release, Settle, TopUp, cash, held
from openmaas.core.prices import AppliedPrice, HoldQuote, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.database import migrate, open_database
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import audit_log, ledger_entries, ledger_events
from tests.store.test_repositories import head_revision
from tests.support.clock import ManualClock

NOW = 1_764_201_600_000  # 2025-11-27T00:00:00Z
PRICE = AppliedPrice(ModelPrice("m1", 1_000_000, 500_000, 2_000_000))  # micros per 1M tokens
QUOTE: HoldQuote = PRICE.worst_case(prompt_tokens=100, max_output_tokens=50)
APPEND_ONLY = ("ledger_events", "ledger_entries", "audit_log")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def hold(request_id: str, org: str) -> Hold:
    return Hold(request_id, org, QUOTE, NOW)


async def new_engine(url: str) -> AsyncEngine:
    engine = open_database(url)
    await migrate(engine)
    return engine


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> str:  # the shared database fixture on both; PostgreSQL skips where it cannot run
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    return request.getfixturevalue("new_pg_database")()


@pytest.fixture
def pg_url(new_pg_database: Callable[[], str]) -> str:
    return new_pg_database()


@pytest.fixture
async def engines(
    database: AsyncEngine, database_url: str
) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines on one database: two processes' connection pools."""
    second = open_database(database_url)
    try:
        yield database, second
    finally:
        await second.dispose()


async def new_org(engine: AsyncEngine, name: str = "acme") -> str:
    return (await OrganizationRepository(engine).create(name, NOW)).id


async def count(engine: AsyncEngine, table) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def sql_balance(engine: AsyncEngine, account: str) -> int:
    """The balance of ``account`` from ``ledger_entries`` alone (no in-memory state)."""
    async with engine.connect() as conn:
        credited = await conn.execute(
            select(func.coalesce(func.sum(ledger_entries.c.amount), 0)).where(
                ledger_entries.c.credit == account
            )
        )
        debited = await conn.execute(
            select(func.coalesce(func.sum(ledger_entries.c.amount), 0)).where(
                ledger_entries.c.debit == account
            )
        )
        return int(credited.scalar_one()) - int(debited.scalar_one())


async def lowest_balance_ever(engine: AsyncEngine, account: str) -> int:
    """The lowest balance ``account`` ever had, replaying ``ledger_entries`` in order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(ledger_entries.c.debit, ledger_entries.c.credit, ledger_entries.c.amount)
            .where((ledger_entries.c.debit == account) | (ledger_entries.c.credit == account))
            .order_by(ledger_entries.c.event_seq, ledger_entries.c.id)
        )
        balance = lowest = 0
        for debit, credit, amount in rows:
            balance += amount if credit == account else 0
            balance -= amount if debit == account else 0
            lowest = min(lowest, balance)
        return lowest


async def holds_at_once(store: LedgerStore, org: str, ids: list[str]) -> list[object]:
    return await asyncio.gather(
        *(store.execute(hold(rid, org)) for rid in ids), return_exceptions=True
    )


# -- migrations and triggers (PostgreSQL) ------------------------------------------------
async def test_migrations_apply_on_postgresql_and_are_idempotent(pg_url: str) -> None:
    engine = open_database(pg_url)
    try:
        assert engine.dialect.name == "postgresql"
        await migrate(engine)
        await migrate(engine)  # a second run applies nothing and fails nothing
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            head = (await conn.execute(text("SELECT id, seq FROM ledger_head"))).all()
            tiers = (await conn.execute(text("SELECT name FROM tiers ORDER BY name"))).scalars()
            tables = set(
                (
                    await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                ).scalars()
            )
        assert version == [(head_revision(),)]
        assert head == [(1, 0)]
        assert list(tiers) == ["V0", "V1", "V2", "V3"]
        assert {"organizations", "api_keys", "usage_records", "ledger_head", "ledger_events",
                "ledger_entries", "prices", "tiers", "audit_log", "inflight"} <= tables  # fmt: skip
    finally:
        await engine.dispose()


async def _insert_one(conn: AsyncConnection, table_name: str) -> None:
    await conn.execute(
        insert(ledger_events).values(
            seq=1, at_ms=NOW, kind="funded", org_id=None, request_id=None,
            idempotency_key="funded:t", body="{}",
        )
    )  # fmt: skip
    if table_name == "ledger_entries":
        await conn.execute(
            insert(ledger_entries).values(
                event_seq=1, at_ms=NOW, debit="system:CNY:external", credit="org:o:cash",
                amount=5, unit="CNY", request_id=None,
            )
        )  # fmt: skip
    if table_name == "audit_log":
        await conn.execute(
            insert(audit_log).values(at_ms=NOW, actor="test", action="a", target="t")
        )


@pytest.mark.parametrize("table_name", APPEND_ONLY)
@pytest.mark.parametrize(
    "statement", ["UPDATE {table} SET at_ms = 0", "DELETE FROM {table}"], ids=["update", "delete"]
)
async def test_postgresql_triggers_keep_the_log_append_only(
    pg_url: str, table_name: str, statement: str
) -> None:
    engine = await new_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await _insert_one(conn, table_name)
        with pytest.raises(DBAPIError, match=f"{table_name} is append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement.format(table=table_name)))
        assert await count(engine, table(table_name)) == 1
    finally:
        await engine.dispose()


# -- the ledger store (PostgreSQL and SQLite) ---------------------------------------------
async def test_fifty_holds_at_once_take_exactly_what_the_balance_covers(
    engines: tuple[AsyncEngine, AsyncEngine], clock: ManualClock
) -> None:
    engine, _ = engines
    org = await new_org(engine)
    store = LedgerStore(engine, clock.now_ms)
    await store.execute(TopUp("t1", org, 10 * QUOTE.micros))

    results = await holds_at_once(store, org, [f"r{i}" for i in range(50)])

    placed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(placed) == 10
    assert len(refused) == 40 and all(isinstance(r, InsufficientBalance) for r in refused)
    ledger = await LedgerStore(engine, clock.now_ms).refresh()  # a fresh reader: the log alone
    assert ledger.balance(cash(org)) == 0 == await sql_balance(engine, cash(org))
    assert ledger.balance(held(org)) == 10 * QUOTE.micros == await sql_balance(engine, held(org))
    assert await lowest_balance_ever(engine, cash(org)) == 0
    assert set(ledger.totals_by_unit().values()) == {0}
    assert set(store.ledger.totals_by_unit().values()) == {0}
    assert len(ledger.open_holds()) == 10


async def test_two_writers_on_two_engines_never_overdraw_and_see_each_other(
    engines: tuple[AsyncEngine, AsyncEngine], clock: ManualClock
) -> None:
    first, second = engines
    org = await new_org(first)
    a, b = LedgerStore(first, clock.now_ms), LedgerStore(second, clock.now_ms)
    await a.execute(TopUp("t1", org, 10 * QUOTE.micros))
    usage = Usage(prompt_tokens=40, cached_tokens=0, completion_tokens=10)
    charge = PRICE.charge(usage).micros

    owner: dict[str, LedgerStore] = {}
    settled = 0
    for round_ in range(4):
        ids = [f"r{round_}-{i}" for i in range(16)]
        for_a, for_b = ids[0::2], ids[1::2]
        results = await asyncio.gather(holds_at_once(a, org, for_a), holds_at_once(b, org, for_b))
        for store, batch, outcomes in ((a, for_a, results[0]), (b, for_b, results[1])):
            for rid, result in zip(batch, outcomes, strict=True):
                if isinstance(result, BaseException):
                    assert isinstance(result, InsufficientBalance), result
                else:
                    owner[rid] = store
        open_now = (await a.refresh()).open_holds()
        assert open_now == (await b.refresh()).open_holds()
        assert len(open_now) <= 10  # never more held than the balance covers
        assert await lowest_balance_ever(first, cash(org)) >= 0
        # the *other* store resolves half of them: it must catch up with the hold first
        resolving = []
        for n, rid in enumerate(open_now[: len(open_now) // 2 + 1]):
            other = b if owner[rid] is a else a
            resolving.append(other.execute(Settle(rid, usage) if n % 2 == 0 else Release(rid)))
            settled += n % 2 == 0
        assert all(len(events) == 1 for events in await asyncio.gather(*resolving))
        assert await lowest_balance_ever(second, cash(org)) >= 0

    view_a, view_b = await a.refresh(), await b.refresh()
    assert view_a.balances == view_b.balances
    assert view_a.holds.keys() == view_b.holds.keys()
    assert view_a.settled_ids == view_b.settled_ids
    assert view_a.balance(cash(org)) == await sql_balance(second, cash(org))
    assert view_a.balance(held(org)) == await sql_balance(second, held(org))
    held_now = QUOTE.micros * len(view_a.holds)
    assert view_a.balance(held(org)) == held_now
    assert await lowest_balance_ever(second, cash(org)) >= 0
    assert set(view_a.totals_by_unit().values()) == {0}
    assert view_a.balance("system:CNY:revenue") == charge * settled > 0
    assert view_a.balance(cash(org)) == 10 * QUOTE.micros - charge * settled - held_now
    assert len(owner) > 10  # resolved holds gave money back for more
    assert b.conflicts > 0  # b's batches were decided on a state a had moved past
    # every event is in the log exactly once, in one sequence
    async with first.connect() as conn:
        seqs = (await conn.execute(select(ledger_events.c.seq).order_by("seq"))).scalars().all()
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_repeated_settle_changes_nothing(
    engines: tuple[AsyncEngine, AsyncEngine], clock: ManualClock
) -> None:
    first, second = engines
    org = await new_org(first)
    a, b = LedgerStore(first, clock.now_ms), LedgerStore(second, clock.now_ms)
    await a.execute(TopUp("t1", org, 5 * QUOTE.micros))
    await a.execute(hold("r1", org))
    usage = Usage(prompt_tokens=80, cached_tokens=20, completion_tokens=30)
    assert len(await a.execute(Settle("r1", usage))) == 1
    events, entries = await count(first, ledger_events), await count(first, ledger_entries)
    balances = dict((await a.refresh()).balances)

    assert await a.execute(Settle("r1", usage)) == ()
    assert await b.execute(Settle("r1", Usage(prompt_tokens=1))) == ()  # other writer, too
    assert await b.execute(Release("r1")) == ()

    assert (await count(first, ledger_events), await count(first, ledger_entries)) == (
        events,
        entries,
    )
    assert (await a.refresh()).balances == balances == (await b.refresh()).balances


async def test_a_refused_command_writes_no_rows(
    engines: tuple[AsyncEngine, AsyncEngine], clock: ManualClock
) -> None:
    engine, _ = engines
    org = await new_org(engine)
    store = LedgerStore(engine, clock.now_ms)
    await store.execute(TopUp("t1", org, QUOTE.micros - 1))

    async def audit(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
        await conn.execute(insert(audit_log).values(at_ms=NOW, actor="t", action="a", target="t"))

    before = [await count(engine, t) for t in (ledger_events, ledger_entries, audit_log)]
    with pytest.raises(InsufficientBalance):
        await store.execute(hold("r1", org), also=audit)
    with pytest.raises(KeyError):
        await store.execute(Settle("nobody", Usage(prompt_tokens=1)), also=audit)
    after = [await count(engine, t) for t in (ledger_events, ledger_entries, audit_log)]
    assert after == before
    assert "r1" not in (await LedgerStore(engine, clock.now_ms).refresh()).holds
    # and the store still works afterwards, on the same connection pool
    await store.execute(TopUp("t2", org, 1))
    assert len(await store.execute(hold("r1", org), also=audit)) == 1
    assert await count(engine, audit_log) == before[2] + 1


async def test_hot_batches_skip_sqlalchemy_and_a_failing_one_fails_alone(
    database: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch with no extra writes goes through the database's driver itself (SQLite's
    writer thread, asyncpg's ``executemany``); rows that break a constraint roll the batch
    back, and retried one by one only their command fails, with nothing of it kept."""
    import logging

    from openmaas.store.rows import Insert
    from openmaas.store.schema import ledger_head

    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW)
    await store.execute(TopUp("t-first", org, 10))  # the organization is known from here on

    def conflict(_events: tuple[Event, ...]) -> tuple[Insert, ...]:
        return (Insert(ledger_head, {"id": 1, "seq": 0}),)  # the head's row exists already

    with caplog.at_level(logging.DEBUG, logger="openmaas.store.writes"):
        results = await asyncio.gather(
            *(
                store.execute(TopUp(f"t{i}", org, 10), rows=conflict if i == 3 else None)
                for i in range(8)
            ),
            return_exceptions=True,
        )
    assert [isinstance(r, Exception) for r in results] == [i == 3 for i in range(8)]
    assert "INSERT INTO ledger_events" in caplog.text  # the direct writer's, not SQLAlchemy's
    fresh = await LedgerStore(database, lambda: NOW).refresh()
    assert fresh.balance(cash(org)) == store.ledger.balance(cash(org)) == 80
    assert "t3" not in fresh.funding_ids and "t3" not in store.ledger.funding_ids
    await store.close()


async def test_a_batch_of_settlements_with_their_rows_is_written_whole(
    database: AsyncEngine, database_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Settlements waiting together, each with its usage record and the deletion of its
    in-flight row, commit as one batch: on PostgreSQL its writes are one statement (events,
    entries, head, usage records and deletions: ``store/writers/asyncpg.py``). Every row is
    written, every in-flight row deleted, and the entries sum to the balances."""
    import logging

    from openmaas.core.termination import Termination
    from openmaas.core.usage import UsageRecord
    from openmaas.store.billing import InFlight, inflight_row
    from openmaas.store.repositories import usage_rows
    from openmaas.store.schema import inflight, usage_records

    org = await new_org(database)
    store = LedgerStore(database, clock.now_ms)
    await store.execute(TopUp("t1", org, 10 * QUOTE.micros))
    ids = [f"r{i}" for i in range(8)]
    await asyncio.gather(*(store.execute(hold(rid, org)) for rid in ids))
    await store.write(
        rows=lambda _: [inflight_row(InFlight(r, "k", org, "m1", "chat", NOW, None)) for r in ids]
    )
    usage = Usage(prompt_tokens=80, cached_tokens=20, completion_tokens=30)

    def settle(rid: str) -> Callable[[tuple[Event, ...]], object]:
        record = UsageRecord(rid, "k", org, "m1", "chat", usage, Termination.FINISHED, NOW, 1, 2)
        return lambda events: usage_rows(record) if events else ()

    with caplog.at_level(logging.DEBUG, logger="openmaas.store.writes"):
        settled = await asyncio.gather(
            *(store.execute(Settle(rid, usage), rows=settle(rid)) for rid in ids)  # type: ignore[arg-type]
        )
    assert all(len(events) == 1 for events in settled)
    if database_url.startswith("postgresql"):
        combined = [m for m in caplog.messages if m.startswith("WITH ")]
        assert len(combined) == 1 and "DELETE FROM inflight" in combined[0]
        assert "INSERT INTO usage_records" in combined[0]
    assert await count(database, usage_records) == 8
    assert await count(database, inflight) == 0
    fresh = await LedgerStore(database, clock.now_ms).refresh()
    assert fresh.balances == store.ledger.balances
    charge = PRICE.charge(usage).micros
    assert await sql_balance(database, "system:CNY:revenue") == 8 * charge
    assert await sql_balance(database, cash(org)) == fresh.balance(cash(org))
    assert fresh.balance(cash(org)) == 10 * QUOTE.micros - 8 * charge
    await store.close()


def _count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The round trips the ledger's asyncpg writer makes from now on, as they are made."""
    from openmaas.store.writers.asyncpg import AsyncpgWriter

    counted: list[str] = []
    driver = AsyncpgWriter.driver

    async def counting(conn: AsyncConnection) -> Any:
        return _RoundTrips(await driver(conn), counted)

    monkeypatch.setattr(AsyncpgWriter, "driver", staticmethod(counting))
    return counted


class _RoundTrips:
    """An asyncpg connection that counts the round trips made through it (a transaction's
    ``BEGIN`` and ``COMMIT`` each one)."""

    def __init__(self, apg: Any, counted: list[str]) -> None:
        self._apg = apg
        self._counted = counted

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._apg, name)
        if name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            self._counted.append(name)
        elif name == "transaction":
            self._counted.extend(("BEGIN", "COMMIT"))
        return found


async def test_a_lone_process_writes_a_batch_in_one_round_trip(
    database: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decided on the state in memory, a batch (a hold; settlements with their usage rows;
    a refusal) is written by one statement on PostgreSQL that commits only if the log's
    last event is still this process's: one round trip, where a transaction made four; on
    SQLite one hand-off to the writer's thread."""
    counted = _count_round_trips(monkeypatch)
    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW)
    await store.execute(TopUp("t1", org, 3 * QUOTE.micros))  # opens the organization
    usage = Usage(prompt_tokens=40, completion_tokens=10)
    big = Hold("big", org, PRICE.worst_case(prompt_tokens=10**6, max_output_tokens=0), NOW)
    batches: list[Callable[[], Awaitable[object]]] = [
        lambda: asyncio.gather(*(store.execute(hold(f"r{i}", org)) for i in range(2))),
        lambda: asyncio.gather(*(store.execute(Settle(f"r{i}", usage)) for i in range(2))),
        lambda: store.execute(TopUp("t2", org, 7)),
        lambda: asyncio.gather(store.execute(big), return_exceptions=True),  # refused
    ]
    for batch in batches:
        counted.clear()
        before = store.handoffs
        await batch()
        if database_url.startswith("postgresql"):
            assert counted == ["fetchval"]
        else:
            assert store.handoffs == before + 1
    assert store.conflicts == 0
    charge = PRICE.charge(usage).micros
    assert (await LedgerStore(database, lambda: NOW).refresh()).balance(cash(org)) == (
        3 * QUOTE.micros + 7 - 2 * charge
    )
    await store.close()


async def test_rows_alone_are_one_round_trip_and_all_or_nothing(
    pg_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of rows and no ledger command (an unpriced request's usage record, in-flight
    rows) is one statement on PostgreSQL, its own transaction: one round trip where
    ``BEGIN`` and ``COMMIT`` made three. Still all or nothing: a batch with a row that
    cannot be written writes none of its rows."""
    from asyncpg.exceptions import UniqueViolationError

    from openmaas.store.billing import InFlight, inflight_row
    from openmaas.store.rows import Delete
    from openmaas.store.schema import inflight

    counted = _count_round_trips(monkeypatch)
    engine = await new_engine(pg_url)
    try:
        org = await new_org(engine)
        store = LedgerStore(engine, clock.now_ms)

        def row(request_id: str) -> Any:
            return inflight_row(InFlight(request_id, "k", org, "m1", "chat", NOW, None))

        await store.write(rows=lambda _: [row("r0")])  # the store loaded
        counted.clear()
        await store.write(rows=lambda _: [row("r1"), row("r2")])
        assert counted == ["executemany"]
        counted.clear()
        await store.write(rows=lambda _: [row("r3"), Delete(inflight.c.request_id, "r0")])
        assert counted == ["execute"]  # an insert and a delete, one statement
        with pytest.raises(UniqueViolationError):  # r1 is there: r4 must not be written either
            await store.write(rows=lambda _: [row("r4"), row("r1")])
        with pytest.raises(UniqueViolationError):
            await store.write(
                rows=lambda _: [row("r5"), row("r2"), Delete(inflight.c.request_id, "r3")]
            )
        async with engine.connect() as conn:
            ids = (await conn.execute(select(inflight.c.request_id))).scalars().all()
        assert sorted(ids) == ["r1", "r2", "r3"]
        await store.close()
    finally:
        await engine.dispose()


async def test_usage_records_read_back_as_written_whatever_their_text(
    database: AsyncEngine, database_url: str, clock: ManualClock
) -> None:
    """A batch's columns go to PostgreSQL as one string each, split on the server, where
    that string can be split back exactly (``store/writers/asyncpg.py``): records whose text
    holds the separators, is empty or is NULL, settled in one batch beside plain ones,
    read back field for field as written."""
    from openmaas.core.termination import Termination
    from openmaas.core.usage import UsageRecord
    from openmaas.store.billing import InFlight, inflight_row
    from openmaas.store.repositories import usage_row, usage_rows
    from openmaas.store.schema import usage_records

    org = await new_org(database)
    store = LedgerStore(database, clock.now_ms)
    await store.execute(TopUp("t1", org, 10 * QUOTE.micros))
    texts = ["a\x1fb", "", None, "\x1e", "plain", "\x1f", "é\x1e\x1f"]
    ids = [f"r{i}" for i in range(len(texts))]
    await asyncio.gather(*(store.execute(hold(rid, org)) for rid in ids))
    await store.write(
        rows=lambda _: [inflight_row(InFlight(r, "k", org, "m1", "chat", NOW, None)) for r in ids]
    )
    usage = Usage(prompt_tokens=80, cached_tokens=20, completion_tokens=30)

    def record(i: int, text: str | None) -> UsageRecord:
        return UsageRecord(
            ids[i], "k", org, "m1", "chat", usage, Termination.FINISHED, NOW, None, i,
            error=text, deployment="" if i == 1 else None, route=text,
        )  # fmt: skip

    records = [record(i, text) for i, text in enumerate(texts)]

    def settle(record: UsageRecord) -> Callable[[tuple[Event, ...]], object]:
        return lambda events: usage_rows(record) if events else ()

    settled = await asyncio.gather(
        *(store.execute(Settle(r.request_id, usage), rows=settle(r)) for r in records),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    await store.close()
    assert not [outcome for outcome in settled if isinstance(outcome, BaseException)]
    async with database.connect() as conn:
        rows = (await conn.execute(select(usage_records))).mappings().all()
    assert sorted((dict(row) for row in rows), key=lambda row: str(row["request_id"])) == [
        usage_row(record) for record in records
    ]


async def test_a_writer_that_waited_for_the_lock_reads_what_its_holder_committed(
    pg_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a conflict a batch takes the lock and reads the events after its own in one
    statement; one that waited there for another writer's transaction read the log as it
    was when it began, without that writer's events: it reads them after the lock, and
    decides on them (no rolled-back try, no rebuilt state)."""
    from openmaas.store.writers.asyncpg import AsyncpgWriter

    first, second = await new_engine(pg_url), await new_engine(pg_url)
    try:
        org = await new_org(first)
        a, b = LedgerStore(first, clock.now_ms), LedgerStore(second, clock.now_ms)
        await a.execute(TopUp("t1", org, 100))
        await b.refresh()
        locked, go = asyncio.Event(), asyncio.Event()
        run = AsyncpgWriter.run

        async def paused(self: AsyncpgWriter, apg: Any, statements: Any) -> None:
            if self is a._asyncpg:  # a's writes wait, a holding the lock
                locked.set()
                await go.wait()
            await run(self, apg, statements)

        monkeypatch.setattr(AsyncpgWriter, "run", paused)
        a._contended = b._contended = True  # both take the lock first, as after a conflict
        a_done = asyncio.ensure_future(a.execute(TopUp("t2", org, 7)))
        await locked.wait()
        read_before = b.events_read
        b_done = asyncio.ensure_future(b.execute(TopUp("t3", org, 11)))
        async with first.connect() as conn:  # b's lock waits for a's transaction
            waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            while not (await conn.execute(waiting)).scalar_one():
                await asyncio.sleep(0.01)
        go.set()
        await asyncio.gather(a_done, b_done)
        assert b.events_read == read_before + 1  # a's top-up, read after the lock, alone
        fresh = await LedgerStore(first, clock.now_ms).refresh()
        assert fresh.balance(cash(org)) == b.ledger.balance(cash(org)) == 118
        async with first.connect() as conn:
            seqs = (await conn.execute(select(ledger_events.c.seq).order_by("seq"))).scalars()
            assert list(seqs) == [1, 2, 3, 4]  # the organization opened, three top-ups
        await a.close()
        await b.close()
    finally:
        await first.dispose()
        await second.dispose()
