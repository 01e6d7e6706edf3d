"""Settlements from a process's own leases commute (store/ledger/log.py ``_commuting``): two
processes settling requests against leases of their own append without waiting for the log
to stand still, never sending each other back, and every process still finds the same
ledger in the log; a process recovered while it still runs is fenced off. On SQLite and on
PostgreSQL (skipped where its server cannot run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.ledger_events import (
    DrawLease,
    LeaseSpent,
    ShrinkLease,
    SpendLease,
    TopUp,
    cash,
    leased,
    leased_promo,
    system,
)
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.database import migrate, open_database
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import ledger_events, ledger_head
from tests.store.test_postgres_ledger import lowest_balance_ever, sql_balance

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))  # 1 micro a token
USAGE = Usage(prompt_tokens=30, cached_tokens=0, completion_tokens=20)  # 50 micros
CHARGE = 50
RESERVED = 80  # each request's worst case
FUNDS = 1_000_000
REVENUE = system("CNY", "revenue")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two processes' connection pools on one database."""
    first, second = open_database(database_url), open_database(database_url)
    await migrate(first)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


async def funded(engine: AsyncEngine) -> str:
    org = (await OrganizationRepository(engine).create("acme", NOW_MS)).id
    await LedgerStore(engine, lambda: NOW_MS).execute(TopUp("t1", org, FUNDS))
    return org


def spend(request_id: str, lease_id: str, reserved: int = RESERVED) -> SpendLease:
    return SpendLease(request_id, lease_id, PRICE, USAGE, reserved)


async def spend_at_once(store: LedgerStore, lease_id: str, ids: list[str]) -> None:
    """Settle ``ids`` from ``lease_id`` together (one group-committed batch)."""
    results = await asyncio.gather(*(store.execute(spend(rid, lease_id)) for rid in ids))
    assert all(len(events) == 1 and type(events[0]) is LeaseSpent for events in results)


async def two_processes(
    first: AsyncEngine, second: AsyncEngine
) -> tuple[str, LedgerStore, LedgerStore]:
    """A funded organization and two processes' stores (instances A and B, one engine each),
    each with a lease of its own: ``lease-a`` and ``lease-b``."""
    org = await funded(first)
    a = LedgerStore(first, lambda: NOW_MS, instance_id="A")
    b = LedgerStore(second, lambda: NOW_MS, instance_id="B")
    await a.execute(DrawLease("lease-a", org, "A", want=100_000, at_least=1))
    await b.execute(DrawLease("lease-b", org, "B", want=100_000, at_least=1))
    return org, a, b


async def log_seqs(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(ledger_events.c.seq).order_by("seq"))).scalars())


async def test_two_processes_settle_from_their_own_leases_without_sending_each_other_back(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = engines
    org, a, b = await two_processes(first, second)
    settled = 0
    for round_ in range(6):  # turn about: each one's batch lands after the other's unread
        read_before = a.events_read, b.events_read
        await spend_at_once(a, "lease-a", [f"a{round_}-{n}" for n in range(8)])
        await spend_at_once(b, "lease-b", [f"b{round_}-{n}" for n in range(8)])
        settled += 16
        assert (a.events_read, b.events_read) == read_before  # no look at the log
    # and both at once
    await asyncio.gather(
        spend_at_once(a, "lease-a", [f"a-last-{n}" for n in range(20)]),
        spend_at_once(b, "lease-b", [f"b-last-{n}" for n in range(20)]),
    )
    settled += 40
    assert a.conflicts == b.conflicts == 0
    assert a.commuted >= 7 and b.commuted >= 7

    # the log is one sequence, and every reader finds one ledger in it
    seqs = await log_seqs(first)
    assert seqs == list(range(1, len(seqs) + 1))
    view_a, view_b = await a.refresh(), await b.refresh()
    fresh = await LedgerStore(second, lambda: NOW_MS).refresh()
    for view in (view_b, fresh):
        assert view.balances == view_a.balances
        assert view.leases == view_a.leases
    assert set(view_a.settled_ids) == set(fresh.settled_ids)
    assert view_a.balance(REVENUE) == CHARGE * settled == await sql_balance(first, REVENUE)
    assert view_a.balance(leased(org)) == await sql_balance(first, leased(org))
    assert set(view_a.totals_by_unit().values()) == {0}

    # the leases close the ordered way, and everything not spent goes back
    await a.execute(ShrinkLease("lease-a", 0))
    await b.execute(ShrinkLease("lease-b", 0))
    after = await a.refresh()
    assert after.balance(cash(org)) == FUNDS - CHARGE * settled
    assert await sql_balance(first, cash(org)) == FUNDS - CHARGE * settled
    assert after.balance(leased(org)) == 0 == after.balance(leased_promo(org))
    assert await lowest_balance_ever(first, leased(org)) >= 0


async def test_a_settlement_beyond_its_reservation_takes_the_ordered_path(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = engines
    org, a, _ = await two_processes(first, second)
    await a.execute(spend("within", "lease-a"))
    assert a.commuted == 1
    (event,) = await a.execute(spend("beyond", "lease-a", reserved=CHARGE - 10))
    assert a.commuted == 1  # it reads the organization's balance: not commuting
    assert isinstance(event, LeaseSpent) and event.from_cash + event.from_promo == CHARGE - 10
    fresh = await LedgerStore(first, lambda: NOW_MS).refresh()
    assert fresh.balance(cash(org)) == a.ledger.balance(cash(org))
    assert fresh.balance(REVENUE) == 2 * CHARGE


async def test_a_lease_of_another_process_is_settled_the_ordered_way(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = engines
    _, a, b = await two_processes(first, second)
    await b.refresh()  # b knows A's lease: only its owner may append settlements from it
    await b.execute(spend("r1", "lease-a"))  # b recovers a request of A's
    assert b.commuted == 0
    async with first.connect() as conn:  # and A is told: its next append is fenced off
        assert (await conn.execute(select(ledger_head.c.fence))).scalar_one() == 1
    assert (await b.refresh()).balance(REVENUE) == CHARGE
    assert (await a.refresh()).balances == b.ledger.balances


async def test_a_process_recovered_while_it_still_runs_is_fenced_off(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """B takes A for dead (A lost its liveness lock, not its life): it settles a request of
    A's from A's lease and closes the lease. A's next settlement from that lease must not
    be appended on A's stale view of it (the lease would go below zero): the fence sends
    it to the ordered path, which finds the lease closed and takes the charge from the
    organization's balance."""
    first, second = engines
    org = await funded(first)
    a = LedgerStore(first, lambda: NOW_MS, instance_id="A")
    await a.execute(DrawLease("lease-a", org, "A", want=1_000, at_least=1))
    await a.execute(spend("r1", "lease-a"))
    assert a.commuted == 1
    b = LedgerStore(second, lambda: NOW_MS, instance_id="B")
    await b.execute(spend("r2", "lease-a"))
    await b.execute(ShrinkLease("lease-a", 0))
    async with first.connect() as conn:
        assert (await conn.execute(select(ledger_head.c.fence))).scalar_one() == 2

    (event,) = await a.execute(spend("r3", "lease-a"))
    assert a.commuted == 1  # sent back by the fence
    assert isinstance(event, LeaseSpent) and event.from_cash == event.from_promo == 0
    assert await lowest_balance_ever(first, leased(org)) >= 0
    view = await a.refresh()
    assert view.balances == (await b.refresh()).balances
    assert view.balance(leased(org)) == 0
    assert view.balance(REVENUE) == 3 * CHARGE
    assert view.balance(cash(org)) == FUNDS - 3 * CHARGE

    # with the fence seen, A's settlements from a lease of its own commute again
    await a.execute(DrawLease("lease-a2", org, "A", want=1_000, at_least=1))
    await a.execute(spend("r4", "lease-a2"))
    assert a.commuted == 2


async def test_a_snapshot_is_of_the_log_not_of_appends_ahead_of_it(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = engines
    org, a, b = await two_processes(first, second)
    await a.execute(spend("a1", "lease-a"))
    await b.execute(spend("b1", "lease-b"))
    await a.execute(spend("a2", "lease-a"))  # lands after b1, which a has not read
    assert await a.snapshot()
    started = LedgerStore(second, lambda: NOW_MS)
    view = await started.refresh()
    assert started.snapshot_read == len(await log_seqs(first))
    assert started.events_read == 0
    assert view.balances == (await b.refresh()).balances
    assert view.balance(REVENUE) == 3 * CHARGE
