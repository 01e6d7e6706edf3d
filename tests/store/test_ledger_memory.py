"""The ledger's memory stays bounded (store/ledger/log.py with core/ledger.py's ``RecentIds``): a
process keeps a window of recently settled request ids, not one per request ever settled,
and the log's unique ``resolved:<request id>`` key settles a request once, on SQLite and on
PostgreSQL (skipped where its server cannot run)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.ledger_events import (
    DrawLease,
    Event,
    Hold,
    Release,
    Settle,
    ShrinkLease,
    SpendLease,
    TopUp,
    cash,
    held,
    leased,
    system,
)
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.rows import Insert
from openmaas.store.schema import ledger_events

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))  # 1 micro a token
WINDOW = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


async def events_in_log(database: AsyncEngine) -> int:
    async with database.connect() as conn:
        total = await conn.execute(select(func.count()).select_from(ledger_events))
        return int(total.scalar_one())


async def funded_store(database: AsyncEngine, window: int = WINDOW) -> tuple[LedgerStore, str]:
    org = (await OrganizationRepository(database).create("acme", NOW_MS)).id
    store = LedgerStore(database, lambda: NOW_MS, settled_window=window)
    await store.execute(TopUp("t1", org, 1_000_000))
    await store.execute(DrawLease("lease-1", org, "gw-1", want=100_000, at_least=1))
    return store, org


def spend(request_id: str, tokens: int = 5) -> SpendLease:
    return SpendLease(request_id, "lease-1", PRICE, Usage(prompt_tokens=tokens), reserved=50)


async def test_a_process_keeps_a_number_of_ids_independent_of_what_it_settled(
    database: AsyncEngine,
) -> None:
    store, org = await funded_store(database)
    for n in range(30):
        await store.execute(spend(f"lease-r{n}"))
        await store.execute(Hold(f"hold-r{n}", org, PRICE.worst_case(10, 0), NOW_MS))
        await store.execute(Settle(f"hold-r{n}", Usage(prompt_tokens=3)))
    assert len(store.ledger.settled_ids) == WINDOW
    assert store.ledger.holds == {}
    assert store.ledger.balance(system("CNY", "revenue")) == 30 * 5 + 30 * 3


async def test_a_settlement_repeated_inside_or_outside_the_window_changes_nothing(
    database: AsyncEngine,
) -> None:
    store, org = await funded_store(database)
    for n in range(10):
        await store.execute(spend(f"r{n}"))
    await store.execute(Hold("h0", org, PRICE.worst_case(10, 0), NOW_MS))
    await store.execute(Settle("h0", Usage(prompt_tokens=3)))
    for n in range(10, 20):
        await store.execute(spend(f"r{n}"))
    balances = dict(store.ledger.balances)
    logged = await events_in_log(database)
    rows: list[tuple[Event, ...]] = []

    def record(events: tuple[Event, ...]) -> tuple[Insert, ...]:
        rows.append(events)
        return ()

    assert store.ledger.settled("r19") and not store.ledger.settled("r0")
    assert await store.execute(spend("r19", tokens=7), rows=record) == ()  # inside
    assert rows == [()]
    rows.clear()
    assert await store.execute(spend("r0", tokens=7), rows=record) == ()  # outside
    assert rows[-1] == ()  # the rows written are the repeat's (a refused try's rolled back)
    assert await store.execute(Settle("h0", Usage(prompt_tokens=9))) == ()  # a hold's, outside
    assert await store.execute(Release("h0")) == ()
    assert await store.execute(Hold("h0", org, PRICE.worst_case(10, 0), NOW_MS)) == ()
    assert await events_in_log(database) == logged
    assert store.ledger.balances == balances  # rebuilt from the log: exact
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    assert fresh.balances == balances
    assert fresh.balance(cash(org)) == 1_000_000 - 100_000 - 3
    assert fresh.balance(leased(org)) == 100_000 - 20 * 5
    assert fresh.balance(held(org)) == 0


async def test_an_old_repeat_batched_with_new_settlements_fails_none_of_them(
    database: AsyncEngine,
) -> None:
    store, org = await funded_store(database)
    for n in range(10):
        await store.execute(spend(f"r{n}"))
    results = await asyncio.gather(
        *(store.execute(spend(f"r{n}")) for n in (10, 0, 11, 1, 12)), return_exceptions=True
    )
    assert [len(r) if isinstance(r, tuple) else r for r in results] == [1, 0, 1, 0, 1]
    assert store.ledger.balance(system("CNY", "revenue")) == 13 * 5
    fresh = await LedgerStore(database, lambda: NOW_MS).refresh()
    assert fresh.balances == store.ledger.balances
    assert await events_in_log(database) == 3 + 13  # opened, topped up, leased; the spends


async def test_a_settle_of_a_hold_nobody_placed_is_still_refused(database: AsyncEngine) -> None:
    store, _org = await funded_store(database)
    with pytest.raises(KeyError):
        await store.execute(Settle("never-held", Usage(prompt_tokens=1)))


async def test_closed_leases_are_kept_only_as_many_as_the_window(database: AsyncEngine) -> None:
    """A process draws a lease per organization every few seconds of spend: the closed ones
    are forgotten beyond the window, and a late repeat on one is still answered as one."""
    store, org = await funded_store(database)
    await store.execute(ShrinkLease("lease-1", 0))
    for n in range(12):
        await store.execute(DrawLease(f"lease-{n + 2}", org, "gw-1", want=1_000, at_least=1))
        await store.execute(
            SpendLease(f"r{n}", f"lease-{n + 2}", PRICE, Usage(prompt_tokens=5), reserved=50)
        )
        await store.execute(ShrinkLease(f"lease-{n + 2}", 0))
    assert len(store.ledger.leases) == WINDOW and store.ledger.open_leases() == []
    balances = dict(store.ledger.balances)
    late = SpendLease("r0", "lease-2", PRICE, Usage(prompt_tokens=9), reserved=50)
    assert await store.execute(late) == ()  # its lease and its id forgotten: the log knows
    with pytest.raises(KeyError):  # never settled, on a lease long closed: refused
        await store.execute(SpendLease("r-new", "lease-2", PRICE, Usage(), reserved=50))
    assert store.ledger.balances == balances
    assert (await LedgerStore(database, lambda: NOW_MS).refresh()).balances == balances
