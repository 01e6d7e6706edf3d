"""The ledger on SQLite (store/ledger/log.py, store/billing.py, migration 0002): one transaction
per command, the event log as the truth, append-only tables, upgrades from 0001."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import InsufficientBalance
from openmaas.core.ledger import Ledger
from openmaas.core.ledger_events import (
    Event,
    Hold,
    HoldResolved,
    LeaseSpent,
    Release,
    Settle,
    TopUp,
    Transfer,
    cash,
    held,
)
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.audit import audit
from openmaas.store.billing import statement
from openmaas.store.database import MIGRATIONS_DIR
from openmaas.store.ledger.batch import EVENT, event_json
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import ledger_entries, ledger_events
from openmaas.store.writers import sqlite as writers_sqlite

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))  # 1 micro a token
HOLD = PRICE.worst_case(10, 0).micros  # 10 tokens + 3 micros of rounding slack = 13


async def new_org(database: AsyncEngine, name: str = "acme") -> str:
    return (await OrganizationRepository(database).create(name, NOW_MS)).id


def hold(request_id: str, org: str, tokens: int = 10) -> Hold:
    return Hold(request_id, org, PRICE.worst_case(tokens, 0), NOW_MS)


async def count(database: AsyncEngine, table: object) -> int:
    async with database.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_commands_persist_and_a_new_process_replays_the_same_state(
    database: AsyncEngine,
) -> None:
    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW_MS)
    await store.execute(TopUp("t1", org, 100))
    await store.execute(hold("r1", org))
    await store.execute(Settle("r1", Usage(prompt_tokens=4)))
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    assert fresh.balances == store.ledger.balances
    assert fresh.balance(cash(org)) == 96
    # The log is the truth: replaying the stored JSON gives the same balances too.
    async with database.connect() as conn:
        bodies = [row.body for row in await conn.execute(select(ledger_events.c.body))]
    assert Ledger.replay(EVENT.validate_json(b) for b in bodies).balances == fresh.balances


async def test_an_organization_is_opened_in_its_currency_on_first_use(
    database: AsyncEngine,
) -> None:
    usd = (await OrganizationRepository(database).create("usd", NOW_MS, currency="USD")).id
    store = LedgerStore(database, lambda: NOW_MS)
    await store.execute(TopUp("t1", usd, 5))
    assert store.ledger.orgs[usd].currency.value == "USD"
    assert store.ledger.unit_of(cash(usd)) == "USD"


async def test_repeats_change_nothing_and_refusals_write_nothing(database: AsyncEngine) -> None:
    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW_MS)
    await store.execute(TopUp("t1", org, 15))
    assert await store.execute(TopUp("t1", org, 15)) == ()  # same top-up id
    await store.execute(hold("r1", org))
    assert await store.execute(hold("r1", org)) == ()
    events_before = await count(database, ledger_events)
    written: list[tuple[Event, ...]] = []

    async def also(conn: AsyncConnection, events: tuple[Event, ...]) -> None:
        written.append(events)
        await audit(conn, NOW_MS, "test", "should-roll-back", "r2")

    with pytest.raises(InsufficientBalance):  # 2 left, the hold needs 13
        await store.execute(hold("r2", org), also=also)
    assert written == []  # refused before the extra writes
    assert await count(database, ledger_events) == events_before
    await store.execute(Release("r1"))
    assert await store.execute(Release("r1")) == ()
    assert await store.execute(Settle("r1", Usage(prompt_tokens=9))) == ()  # resolved once
    assert store.ledger.balance(cash(org)) == 15


async def test_extra_writes_roll_back_with_the_command(database: AsyncEngine) -> None:
    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW_MS)

    async def failing(conn: AsyncConnection, events: tuple[Event, ...]) -> None:
        raise RuntimeError("the usage record could not be written")

    with pytest.raises(RuntimeError):
        await store.execute(TopUp("t1", org, 50), also=failing)
    assert store.ledger.balance(cash(org)) == 0
    assert (await LedgerStore(database, lambda: NOW_MS).refresh()).balance(cash(org)) == 0
    await store.execute(TopUp("t1", org, 50))  # the id was not used up by the failed try
    assert store.ledger.balance(cash(org)) == 50


async def test_two_processes_share_one_balance(database: AsyncEngine) -> None:
    org = await new_org(database)
    one = LedgerStore(database, lambda: NOW_MS)
    two = LedgerStore(database, lambda: NOW_MS)
    await one.execute(TopUp("t1", org, 2 * HOLD))
    await two.execute(hold("a", org))  # two catches up on the top-up under the lock
    await one.execute(hold("b", org))  # one catches up on two's hold: 0 left
    with pytest.raises(InsufficientBalance):
        await two.execute(hold("c", org))
    await one.execute(Settle("a", Usage(prompt_tokens=3)))  # one settles two's hold
    assert (await two.refresh()).balance(cash(org)) == HOLD - 3
    assert two.ledger.balance(held(org)) == HOLD
    assert all(total == 0 for total in two.ledger.totals_by_unit().values())


async def test_the_log_and_entries_are_append_only(database: AsyncEngine) -> None:
    org = await new_org(database)
    await LedgerStore(database, lambda: NOW_MS).execute(TopUp("t1", org, 20))
    for sql in (
        "UPDATE ledger_entries SET amount = 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_events SET body = '{}'",
        "DELETE FROM ledger_events",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with database.begin() as conn:
                await conn.execute(text(sql))
    async with database.begin() as conn:
        await audit(conn, NOW_MS, "cli:root", "topup", org, None, {"amount": 20})
    with pytest.raises(DBAPIError, match="append-only"):
        async with database.begin() as conn:
            await conn.execute(text("UPDATE audit_log SET actor = 'someone else'"))


async def test_the_entries_table_sums_to_the_balances(database: AsyncEngine) -> None:
    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW_MS)
    await store.execute(TopUp("t1", org, 100))
    await store.execute(hold("r1", org))
    await store.execute(Settle("r1", Usage(prompt_tokens=3)))
    async with database.connect() as conn:
        into = (
            await conn.execute(
                select(func.sum(ledger_entries.c.amount)).where(
                    ledger_entries.c.credit == cash(org)
                )
            )
        ).scalar_one()
        out = (
            await conn.execute(
                select(func.sum(ledger_entries.c.amount)).where(ledger_entries.c.debit == cash(org))
            )
        ).scalar_one()
    assert into - out == store.ledger.balance(cash(org)) == 97
    lines = await statement(database, [cash(org)], NOW_MS, NOW_MS + 1)
    assert [line.amount for line in lines] == [100, -HOLD, HOLD - 3]  # top-up, hold, refund
    assert [line.request_id for line in lines] == [None, "r1", "r1"]
    assert await statement(database, [cash(org)], NOW_MS + 1, NOW_MS + 2) == []


def test_a_settlements_body_is_the_json_the_log_reads_back() -> None:
    """The settlements' bodies (orjson, for CPU) are byte for byte pydantic's."""
    revenue = Transfer("leased:o", "system:CNY:revenue", 3)
    for event in (
        LeaseSpent("r1", "l1", "o", Usage(200, 10, 300, True, 7), 40, 1, 2, 3, 0, (revenue,)),
        LeaseSpent("r2", "l1", "o", Usage(), 40, 0, 0, 0, 5, ()),
        HoldResolved("r3", True, Usage(1, 0, 2), 3, 0, 0, ()),
        HoldResolved("r4", False, Usage(9, 9, 9, False, 9), 0, 12, 2, (revenue, revenue)),
    ):
        assert event_json(event) == EVENT.dump_json(event).decode()
        assert EVENT.validate_json(event_json(event)) == event


def test_upgrading_a_0001_database_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    sync = create_engine(f"sqlite:///{path}")
    with sync.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            insert(ledger_events.metadata.tables["organizations"]).values(
                id="org_old", name="old", created_at_ms=NOW_MS
            )
        )
    with sync.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        row = conn.execute(text("SELECT currency, tier, discount_bp FROM organizations")).one()
        tiers = conn.execute(text("SELECT name FROM tiers ORDER BY name")).scalars().all()
    sync.dispose()
    assert tuple(row) == ("CNY", None, 0)
    assert tiers == ["V0", "V1", "V2", "V3"]


async def test_commands_waiting_together_commit_together_and_fail_alone(
    database: AsyncEngine,
) -> None:
    """Group commit: concurrent commands share transactions, yet one whose extra writes fail
    fails alone and leaves no trace; the others are committed."""
    import asyncio

    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW_MS)

    async def broken(conn: AsyncConnection, events: tuple[Event, ...]) -> None:
        raise RuntimeError("this top-up's audit row could not be written")

    results = await asyncio.gather(
        *(
            store.execute(TopUp(f"t{i}", org, 10), also=broken if i == 3 else None)
            for i in range(8)
        ),
        return_exceptions=True,
    )
    assert [isinstance(r, RuntimeError) for r in results] == [i == 3 for i in range(8)]
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    assert fresh.balance(cash(org)) == store.ledger.balance(cash(org)) == 70
    assert "t3" not in fresh.funding_ids


class _Pauses:
    """``time`` for the SQLite writer: records its pauses, runs ``on_pause`` at each, and
    moves its clock by ``step`` seconds per reading."""

    def __init__(self, on_pause: Callable[[int], None], step: float = 0.0) -> None:
        self.slept: list[float] = []
        self._on_pause = on_pause
        self._now = 0.0
        self._step = step

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._on_pause(len(self.slept))

    def monotonic(self) -> float:
        self._now += self._step
        return self._now


def _blocked_file(tmp_path: Path) -> tuple[str, sqlite3.Connection]:
    path = str(tmp_path / "w.db")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("CREATE TABLE t (x INTEGER)")
    blocker.execute("BEGIN IMMEDIATE")  # another process's write transaction
    blocker.execute("INSERT INTO t VALUES (0)")
    return path, blocker


def test_the_sqlite_writer_tries_again_soon_while_another_process_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Busy: pauses of a fraction of a millisecond (SQLite's own handler sleeps 1, 2, 5,
    10 ... ms), then the write commits once the other transaction has."""
    path, blocker = _blocked_file(tmp_path)
    pauses = _Pauses(lambda n: blocker.execute("COMMIT") if n == 4 else None)
    monkeypatch.setattr(writers_sqlite, "time", pauses)
    writer = writers_sqlite.SqliteWriter(path, "FULL")
    writer.write([("INSERT INTO t VALUES (?)", [(1,)])])
    assert pauses.slept == [*writers_sqlite.BUSY_PAUSES_S, writers_sqlite.BUSY_PAUSES_S[-1]]
    assert max(pauses.slept) <= 0.001
    assert blocker.execute("SELECT x FROM t ORDER BY x").fetchall() == [(0,), (1,)]
    writer._close()


def test_the_sqlite_writer_gives_up_after_its_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, blocker = _blocked_file(tmp_path)
    pauses = _Pauses(lambda _: None, step=1.0)  # a second per reading: 5 s in a few tries
    monkeypatch.setattr(writers_sqlite, "time", pauses)
    writer = writers_sqlite.SqliteWriter(path, "FULL")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        writer.write([("INSERT INTO t VALUES (?)", [(1,)])])
    assert 1 <= len(pauses.slept) <= writers_sqlite.BUSY_TIMEOUT_MS / 1000 + 1
    blocker.execute("COMMIT")
    assert blocker.execute("SELECT x FROM t").fetchall() == [(0,)]  # nothing half-written
    writer._close()


async def test_a_lone_process_makes_one_hand_off_per_batch(database: AsyncEngine) -> None:
    """Decided on the state in memory, then written in one hand-off to the writer's thread
    when the log's last event is still this process's: a hold, a settlement, a refusal."""
    org = await new_org(database)
    store = LedgerStore(database, lambda: NOW_MS)
    await store.execute(TopUp("t1", org, HOLD))  # opens the organization: no writer yet
    steps = [
        lambda: store.execute(hold("a", org)),
        lambda: store.execute(Settle("a", Usage(prompt_tokens=3))),
        lambda: store.execute(TopUp("t2", org, 3 * HOLD)),
        lambda: store.execute(hold("b", org, tokens=10_000)),  # refused: nothing written
    ]
    for step in steps:
        before = store.handoffs
        try:
            await step()
        except InsufficientBalance:
            pass
        assert store.handoffs == before + 1
    assert store.conflicts == 0
    assert store.ledger.balance(cash(org)) == 4 * HOLD - 3


async def test_a_batch_another_process_overtook_is_decided_again(database: AsyncEngine) -> None:
    """``two`` decides on a state ``one`` has moved past: its batch is not written, its
    decisions are undone, and it is decided again on ``one``'s events: a hold the money no
    longer pays for is refused, a settlement ``one`` made is answered as the repeat it is."""
    org = await new_org(database)
    one = LedgerStore(database, lambda: NOW_MS)
    two = LedgerStore(database, lambda: NOW_MS)
    await one.execute(TopUp("t1", org, 2 * HOLD))
    await two.execute(hold("a", org))
    await one.execute(hold("b", org))
    await one.execute(Settle("a", Usage(prompt_tokens=3)))  # settles two's hold
    assert two.ledger.balance(cash(org)) == HOLD  # two saw neither: b would fit
    with pytest.raises(InsufficientBalance):
        await two.execute(hold("c", org, tokens=8))
    assert await two.execute(Settle("a", Usage(prompt_tokens=9))) == ()  # one's stands
    assert two.conflicts == 1  # the second command found the state current
    await two.execute(Settle("b", Usage(prompt_tokens=5)))
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    for ledger in (fresh, await one.refresh(), two.ledger):
        assert ledger.state() == fresh.state()
    assert fresh.balance(cash(org)) == 2 * HOLD - 3 - 5
    assert fresh.balance(held(org)) == 0
    assert await count(database, ledger_events) == 1 + 1 + 2 + 2  # opened, top-up, 2 holds,
    # 2 settlements: no refused or repeated command wrote an event


async def test_two_processes_interleaving_batches_stay_exact(database: AsyncEngine) -> None:
    """Two stores on one database file, each with many commands at once (their batches
    interleave and overtake each other): every hold is settled exactly once, the balance
    is exact, the entries sum to it, and both processes end on the log's state."""
    import asyncio

    org = await new_org(database)
    stores = [LedgerStore(database, lambda: NOW_MS) for _ in range(2)]
    await stores[0].execute(TopUp("t1", org, 1_000 * HOLD))
    await stores[1].refresh()

    async def request(n: int) -> None:
        store = stores[n % 2]
        await store.execute(hold(f"r{n}", org))
        await asyncio.sleep(0)
        other = stores[(n + 1) % 2]  # the other process settles half of them
        await (other if n % 4 < 2 else store).execute(Settle(f"r{n}", Usage(prompt_tokens=n % 7)))
        await store.execute(Settle(f"r{n}", Usage(prompt_tokens=99)))  # a repeat: no effect

    await asyncio.gather(*(request(n) for n in range(120)))
    assert sum(store.conflicts for store in stores) > 0
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    charged = sum(n % 7 for n in range(120))
    assert fresh.balance(cash(org)) == 1_000 * HOLD - charged
    assert fresh.balance(held(org)) == 0 and fresh.open_holds() == []
    for store in stores:
        assert (await store.refresh()).state() == fresh.state()
    async with database.connect() as conn:
        kinds = (await conn.execute(select(ledger_events.c.kind))).scalars().all()
        entries = (
            await conn.execute(
                select(func.sum(ledger_entries.c.amount)).where(
                    ledger_entries.c.credit == cash(org)
                )
            )
        ).scalar_one() - (
            await conn.execute(
                select(func.sum(ledger_entries.c.amount)).where(ledger_entries.c.debit == cash(org))
            )
        ).scalar_one()
    assert kinds.count("hold_placed") == kinds.count("hold_resolved") == 120
    assert entries == fresh.balance(cash(org))


async def test_while_another_process_appends_batches_take_the_lock_first(
    database: AsyncEngine,
) -> None:
    """After a conflict, a batch takes the lock and catches up first (two hand-offs, never
    sent back) until a lock finds no other process's events; then it is optimistic again."""
    org = await new_org(database)
    one = LedgerStore(database, lambda: NOW_MS)
    two = LedgerStore(database, lambda: NOW_MS)
    await one.execute(TopUp("t1", org, 100 * HOLD))
    await two.refresh()
    await two.execute(TopUp("t2", org, 1))  # opens the writer
    expected = [  # (did one append just before, two's hand-offs, two's conflicts so far)
        (True, 1 + 2, 1),  # sent back, then decided again under the lock
        (True, 2, 1),  # contended: the lock first, which finds one's event
        (False, 2, 1),  # the lock first, which finds none
        (False, 1, 1),  # optimistic again
        (True, 1 + 2, 2),
    ]
    for n, (one_appends, handoffs, conflicts) in enumerate(expected):
        if one_appends:
            await one.execute(TopUp(f"one{n}", org, 1))
        before = two.handoffs
        await two.execute(TopUp(f"two{n}", org, 1))
        assert (two.handoffs - before, two.conflicts) == (handoffs, conflicts)
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    assert fresh.balance(cash(org)) == two.ledger.balance(cash(org)) == 100 * HOLD + 1 + 3 + 5
