"""A process starts from the newest snapshot of the ledger, not from the first event
(store/ledger/snapshots.py, migration 0010), on SQLite and on PostgreSQL (skipped where its
server cannot run): the events it reads do not grow with the log, the snapshot and the
events after it give exactly what replaying every event gives, and a snapshot that was
never finished, or is damaged, leaves the previous one in use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.ledger import Ledger
from openmaas.core.ledger_events import (
    DrawLease,
    Hold,
    Settle,
    SpendLease,
    TopUp,
    cash,
    leased,
)
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.ledger import snapshots as ledger_snapshots
from openmaas.store.ledger.batch import EVENT
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import ledger_events
from openmaas.store.schema import ledger_snapshots as snapshots_table

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))  # 1 micro a token
EVERY = 50


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


def new_store(database: AsyncEngine, every: int = EVERY) -> LedgerStore:
    return LedgerStore(database, lambda: NOW_MS, snapshot_events=every)


async def history(store: LedgerStore, org: str, requests: int, first: int = 0) -> None:
    """``requests`` requests, every third from a hold, the others from the lease; some held
    ones left open. Each command waits for the snapshot it may have started (written in the
    background: otherwise how many events pass meanwhile depends on the machine's load)."""
    for n in range(first, first + requests):
        if n % 3:
            usage = Usage(prompt_tokens=n % 7 + 1)
            await store.execute(SpendLease(f"r{n}", "lease-1", PRICE, usage, reserved=20))
        else:
            await store.execute(Hold(f"r{n}", org, PRICE.worst_case(10, 0), NOW_MS))
            await store.snapshot_written()
            if n % 2:
                await store.execute(Settle(f"r{n}", Usage(prompt_tokens=2)))
        await store.snapshot_written()


async def opened(database: AsyncEngine) -> tuple[LedgerStore, str]:
    org = (await OrganizationRepository(database).create("acme", NOW_MS)).id
    store = new_store(database)
    await store.execute(TopUp("t1", org, 10_000_000))
    await store.execute(DrawLease("lease-1", org, "gw-1", want=1_000_000, at_least=1))
    return store, org


async def replayed(database: AsyncEngine) -> Ledger:
    """The state from every event of the log, in order: what a snapshot must equal."""
    async with database.connect() as conn:
        rows = await conn.execute(select(ledger_events.c.body).order_by(ledger_events.c.seq))
        return Ledger.replay(EVENT.validate_json(body) for (body,) in rows)


async def test_start_up_reads_a_number_of_events_independent_of_the_logs_length(
    database: AsyncEngine,
) -> None:
    store, org = await opened(database)
    read: list[int] = []
    for requests in (120, 600):
        await history(store, org, requests, first=len(read) * 1000)
        fresh = new_store(database)
        state = await fresh.refresh()
        assert fresh.snapshot_read is not None
        read.append(fresh.events_read)
        assert state.state() == (await replayed(database)).state()  # snapshot + tail: exact
        assert state.open_holds() == store.ledger.open_holds() != []
    assert all(n < EVERY for n in read), read  # not 120s or 720s: the tail after a snapshot
    assert store.snapshots_written >= 10


async def test_a_clean_shutdown_leaves_a_snapshot_that_needs_no_event(
    database: AsyncEngine,
) -> None:
    store, org = await opened(database)
    await history(store, org, 30)
    await store.close()
    fresh = new_store(database)
    state = await fresh.refresh()
    assert fresh.events_read == 0 and fresh.snapshot_read == 3 + 30 + 5  # incl. 5 settles
    assert state.state() == (await replayed(database)).state()
    assert state.balance(leased(org)) == store.ledger.balance(leased(org))
    await fresh.execute(TopUp("t2", org, 5))  # and it goes on from there
    assert (await replayed(database)).balance(cash(org)) == fresh.ledger.balance(cash(org))


async def test_a_snapshot_never_finished_or_damaged_leaves_the_previous_one_in_use(
    database: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, org = await opened(database)
    await history(store, org, 10)
    assert await store.snapshot()
    previous = store.ledger.state()
    await history(store, org, 10, first=100)

    def killed(*args: object) -> object:
        raise RuntimeError("the process died while writing its snapshot")

    monkeypatch.setattr(ledger_snapshots, "delete", killed)  # after the insert, before commit
    with pytest.raises(RuntimeError):
        await store.snapshot()
    monkeypatch.undo()
    fresh = new_store(database)
    state = await fresh.refresh()
    assert fresh.snapshot_read == 3 + 10 + 2 and fresh.events_read == 7 + 3 + 1  # r100..r109
    assert state.state() == (await replayed(database)).state() != previous

    async with database.begin() as conn:  # a newer one whose body does not match its digest
        body = ledger_snapshots.STATE.dump_json(store.ledger.state()).decode()
        row = {"seq": 10_000, "at_ms": NOW_MS, "digest": ledger_snapshots.digest(body)}
        await conn.execute(insert(snapshots_table).values(**row, body=body[:-20] + "}"))
    again = new_store(database)
    assert (await again.refresh()).state() == state.state()
    assert again.snapshot_read == 3 + 10 + 2


async def test_the_log_stays_append_only_beside_its_snapshots(database: AsyncEngine) -> None:
    store, org = await opened(database)
    await history(store, org, 3)
    assert await store.snapshot()
    with pytest.raises(DBAPIError):
        async with database.begin() as conn:
            await conn.execute(update(ledger_events).values(at_ms=0))
