"""Many serving processes on one database (store/instance.py): each holds its instance's
liveness lock for its life; the lock of a live instance cannot be taken, the lock of a dead
one (``kill -9``) can, by exactly one of the processes that race for it; and the requests a
dead instance left in flight are recovered once, by whoever takes its lock. On SQLite and
on a real PostgreSQL server (skipped where it cannot run)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter
from openmaas.core.clock import SystemClock
from openmaas.core.ids import new_request_id
from openmaas.core.ledger_events import Settle, TopUp, cash, held, system
from openmaas.core.prices import ModelPrice
from openmaas.core.types import Usage
from openmaas.store.billing import checkpoint, inflight_owners, load_inflight, set_price
from openmaas.store.database import migrate, open_database
from openmaas.store.instance import Liveness, lock_directory
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import inflight, usage_records
from tests.support.waiting import eventually

PRICE = ModelPrice("priced", 1_000_000, 500_000, 2_000_000)  # 1 micro/input, 2/output token
TOP_UP = 1_000_000

HOLDER = """
import asyncio, sys
from openmaas.store.database import open_database
from openmaas.store.instance import Liveness

async def main() -> None:
    live = await Liveness.start(open_database(sys.argv[1]))
    print(live.instance_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = open_database(db_url)
    await migrate(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


class Holder:
    """Another process holding an instance's liveness lock, until killed with SIGKILL."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.instance_id = self.process.stdout.readline().strip()
        assert self.instance_id, "the holder did not start"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def holder(db_url: str) -> Iterator[Holder]:
    held_by = Holder(db_url)
    try:
        yield held_by
    finally:
        if held_by.process.poll() is None:
            held_by.kill()


async def await_dead(liveness: Liveness, instance_id: str) -> None:
    """Until the lock of ``instance_id`` is free (PostgreSQL ends a dead client's session
    a moment after its death); the probe lets it go again, leaving any lock file."""
    lock = await eventually(
        lambda: liveness.claim(instance_id), timeout=30, what=f"instance {instance_id} to die"
    )
    await lock.release(forget=False)


async def test_a_live_instance_cannot_be_claimed_and_a_dead_one_can(
    database: AsyncEngine, holder: Holder
) -> None:
    survivor = await Liveness.start(database)
    try:
        assert await survivor.claim(holder.instance_id) is None  # alive: never waits
        assert await survivor.claim(survivor.instance_id) is None  # never itself
        directory = lock_directory(database)
        if directory is not None:
            assert holder.instance_id in survivor.lock_files()
        holder.kill()
        await await_dead(survivor, holder.instance_id)
        lock = await survivor.claim(holder.instance_id)
        assert lock is not None
        await lock.release()
        if directory is not None:  # the recovered instance's file is gone
            assert holder.instance_id not in survivor.lock_files()
    finally:
        await survivor.stop()


async def test_of_two_racers_exactly_one_takes_a_dead_instances_lock(
    database: AsyncEngine, holder: Holder
) -> None:
    first, second = await Liveness.start(database), await Liveness.start(database)
    try:
        holder.kill()
        await await_dead(first, holder.instance_id)
        locks = await asyncio.gather(*(s.claim(holder.instance_id) for s in (first, second)))
        won = [lock for lock in locks if lock is not None]
        assert len(won) == 1
        # While the winner holds it, nobody else gets it.
        assert await first.claim(holder.instance_id) is None
        assert await second.claim(holder.instance_id) is None
        await won[0].release()
    finally:
        await first.stop()
        await second.stop()


async def test_an_instance_id_is_held_once(database: AsyncEngine) -> None:
    running = await Liveness.start(database)
    try:
        other = open_database(str(database.url.render_as_string(hide_password=False)))
        try:
            with pytest.raises(Exception, match="already running"):
                await Liveness.start(other, running.instance_id)
        finally:
            await other.dispose()
    finally:
        await running.stop()


# -- recovery of a dead instance's requests ----------------------------------------------


def accountant(database: AsyncEngine, liveness: Liveness | None = None) -> Accountant:
    """A process's accountant: its own ledger cache over the shared database."""
    clock = SystemClock()
    return Accountant(
        database, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock,
        refresh_seconds=0, checkpoint_seconds=0.05, liveness=liveness,
    )  # fmt: skip


async def admit_requests(database: AsyncEngine, owner: str | None) -> tuple[str, list[str]]:
    """Three priced requests (one with a checkpoint of 10 output tokens) and one unpriced,
    admitted and left in flight, their rows then owned by instance ``owner``."""
    org = (await OrganizationRepository(database).create("acme", 0)).id
    async with database.begin() as conn:
        await set_price(conn, PRICE)
    doomed = accountant(database)
    await doomed.ledger.execute(TopUp("t1", org, TOP_UP))
    principal = Principal(key_id="om_member", org_id=org, role="member")

    async def five() -> int:
        return 5

    ids = []
    for model in ("priced", "priced", "priced", "free"):
        request_id = new_request_id()
        ticket = await doomed.admit(
            principal, model, "chat.completions", request_id,
            count_prompt=five, max_tokens=100, context_length=None,
        )  # fmt: skip
        if model == "free":  # its row is written in the background, once due
            await eventually(lambda t=ticket: t.pending is not None, what="the in-flight row")
            assert ticket.pending is not None
            await ticket.pending
        ids.append(request_id)
    async with database.begin() as conn:
        await checkpoint(conn, ids[0], Usage(prompt_tokens=5, completion_tokens=10), 1)
        await conn.execute(update(inflight).values(instance_id=owner))
    return org, ids


async def test_a_dead_instances_requests_are_recovered_once_by_racing_survivors(
    database: AsyncEngine, holder: Holder
) -> None:
    org, ids = await admit_requests(database, holder.instance_id)
    survivors = [await Liveness.start(database) for _ in range(3)]
    try:
        first = accountant(database, survivors[0])
        assert await first.sweep() == 0  # the owner lives: its requests are its own
        async with database.connect() as conn:
            assert await inflight_owners(conn) == [holder.instance_id]

        holder.kill()
        await await_dead(survivors[0], holder.instance_id)
        racers = [first] + [accountant(database, s) for s in survivors[1:]]
        recovered = await asyncio.gather(*(r.sweep() for r in racers))
        assert sorted(recovered) == [0, 0, len(ids)]  # one of them did it all
        assert [await r.sweep() for r in racers] == [0, 0, 0]  # and nothing is left

        async with database.connect() as conn:
            assert await load_inflight(conn) == []
            records = {
                r.request_id: r
                for r in await conn.execute(select(usage_records).order_by(usage_records.c.day))
            }
            count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar()
        assert count == len(ids) and set(records) == set(ids)
        assert {r.termination for r in records.values()} == {"gateway_killed"}
        assert records[ids[0]].cost_micros == 5 * 1 + 10 * 2  # billed by its checkpoint
        assert [records[i].cost_micros for i in ids[1:]] == [0, 0, None]  # no token; unpriced
        ledger = await first.ledger.refresh()
        assert ledger.open_holds() == []
        assert ledger.balance(held(org)) == 0
        assert ledger.balance(cash(org)) == TOP_UP - 25
        assert ledger.balance(system("CNY", "revenue")) == 25
        assert all(total == 0 for total in ledger.totals_by_unit().values())
    finally:
        for survivor in survivors:
            await survivor.stop()


async def test_the_restarted_process_recovers_rows_from_before_instances(
    database: AsyncEngine,
) -> None:
    """Rows with no owner (written before the migration) are recovered at start."""
    org, ids = await admit_requests(database, None)
    liveness = await Liveness.start(database)
    try:
        assert await accountant(database, liveness).recover() == len(ids)
        async with database.connect() as conn:
            assert await load_inflight(conn) == []
        assert await accountant(database, liveness).recover() == 0
    finally:
        await liveness.stop()


async def test_an_instance_that_died_idle_leaves_no_lock_file(
    database: AsyncEngine, holder: Holder
) -> None:
    if lock_directory(database) is None:
        pytest.skip("PostgreSQL keeps no lock files")
    survivor = await Liveness.start(database)
    try:
        holder.kill()
        assert await accountant(database, survivor).sweep() == 0
        assert survivor.lock_files() == []
    finally:
        await survivor.stop()


async def test_a_row_whose_hold_was_resolved_already_is_dropped_not_billed_again(
    database: AsyncEngine, holder: Holder
) -> None:
    """A settlement already in the log (its process lost its lock while it still ran, and
    settled afterwards) is not repeated; the row it left goes with the recovery."""
    org, ids = await admit_requests(database, holder.instance_id)
    settled = accountant(database)
    await settled.ledger.execute(Settle(ids[1], Usage(prompt_tokens=5, completion_tokens=1)))
    survivor = await Liveness.start(database)
    try:
        holder.kill()
        await await_dead(survivor, holder.instance_id)
        recovering = accountant(database, survivor)
        assert await recovering.sweep() == len(ids)
        async with database.connect() as conn:
            assert await load_inflight(conn) == []
            recorded = {r.request_id for r in await conn.execute(select(usage_records))}
        assert recorded == {ids[0], ids[2], ids[3]}  # ids[1]: its settler records it
        ledger = await recovering.ledger.refresh()
        assert ledger.open_holds() == []
        assert ledger.balance(system("CNY", "revenue")) == 5 * 1 + 10 * 2 + 5 * 1 + 1 * 2
    finally:
        await survivor.stop()
