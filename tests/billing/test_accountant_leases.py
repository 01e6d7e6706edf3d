"""Leases in the accountant (billing/accountant.py with core/leases.py), on SQLite and
PostgreSQL: a serving process admits priced requests in memory against money the ledger set
aside for it, and settles each in a group-committed transaction with its usage record; the
books stay exact; a balance too low to lease falls back to one hold per request; a dead
process's requests are settled from its lease and its leases closed by a survivor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant, Ticket
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.limiter import InProcessLimiter
from openmaas.core.errors import InsufficientBalance
from openmaas.core.ids import new_request_id
from openmaas.core.leases import LeasePolicy
from openmaas.core.ledger_events import (
    BudgetPeriod,
    GrantPack,
    SetBudget,
    TopUp,
    cash,
    held,
    system,
)
from openmaas.core.prices import AppliedPrice
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord
from openmaas.store.audit import AuditedChanges
from openmaas.store.billing import checkpoint, set_price
from openmaas.store.database import migrate, open_database
from openmaas.store.instance import Liveness
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import inflight, ledger_events, usage_records
from tests.billing.test_accountant import PRICE
from tests.support.clock import ManualClock
from tests.support.waiting import eventually

PROMPT_TOKENS = 5
MAX_TOKENS = 100
WORST = AppliedPrice(PRICE).worst_case(PROMPT_TOKENS, MAX_TOKENS).micros  # what a request holds
FULL = PROMPT_TOKENS * 1 + MAX_TOKENS * 2  # micros: 1 per input token, 2 per output token


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


class Process:
    """One serving process's billing: its liveness lock, ledger cache and accountant."""

    def __init__(
        self, database: AsyncEngine, liveness: Liveness, clock: ManualClock, min_requests: int
    ) -> None:
        self.liveness = liveness
        self.clock = clock
        self.accountant = Accountant(
            database, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock,
            refresh_seconds=0, checkpoint_seconds=0.5, liveness=liveness,
            leases=LeasePolicy(seconds=2.0, min_requests=min_requests),
        )  # fmt: skip

    @classmethod
    async def start(
        cls,
        database: AsyncEngine,
        clock: ManualClock,
        min_requests: int = 4,
        *,
        recover: bool = True,
    ) -> Process:
        process = cls(database, await Liveness.start(database), clock, min_requests)
        if recover:  # as a server starts: what dead processes left, before serving
            await process.accountant.recover()
        return process

    async def admit(self, principal: Principal, max_tokens: int = MAX_TOKENS) -> Ticket:
        async def count() -> int:
            return PROMPT_TOKENS

        return await self.accountant.admit(
            principal, PRICE.model, "chat.completions", new_request_id(),
            count_prompt=count, max_tokens=max_tokens, context_length=None,
        )  # fmt: skip

    async def finish(self, ticket: Ticket, completion_tokens: int) -> UsageRecord:
        usage = Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=completion_tokens)
        request = ticket.request
        record = UsageRecord(
            request.request_id, request.key_id, request.org_id, request.model,
            request.endpoint, usage, Termination.FINISHED, request.started_at_ms,
            ttft_ms=1, latency_ms=2,
        )  # fmt: skip
        return await self.accountant.finish(ticket, record)


@pytest.fixture
async def org(database: AsyncEngine) -> str:
    found = await OrganizationRepository(database).create("acme", 0)
    async with database.begin() as conn:
        await set_price(conn, PRICE)
    return found.id


async def fund(database: AsyncEngine, org: str, micros: int) -> None:
    clock = ManualClock()
    await LedgerStore(database, clock.now_ms).execute(TopUp(new_request_id(), org, micros))


def admin(database: AsyncEngine) -> BillingAdmin:
    clock = ManualClock()
    ledger = LedgerStore(database, clock.now_ms)
    return BillingAdmin(AuditedChanges(database, ledger, clock.now_ms, "cli:test"), clock)


def member(org: str) -> Principal:
    return Principal(key_id="om_member", org_id=org, role="member")


@contextmanager
def statements(database: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine runs inside the ``with``."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    class Note(logging.Handler):  # the ledger's SQLite writer runs its own (DEBUG log)
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    writer, handler = logging.getLogger("openmaas.store.writes"), Note()
    level = writer.level
    writer.addHandler(handler)
    writer.setLevel(logging.DEBUG)
    event.listen(database.sync_engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", note)
        writer.removeHandler(handler)
        writer.setLevel(level)


async def event_kinds(database: AsyncEngine) -> list[str]:
    async with database.connect() as conn:
        rows = await conn.execute(select(ledger_events.c.kind).order_by(ledger_events.c.seq))
        return [r.kind for r in rows]


async def test_admission_against_a_lease_runs_no_sql_and_settles_exactly(
    database: AsyncEngine, org: str
) -> None:
    await fund(database, org, 1_000_000)
    process = await Process.start(database, ManualClock(), min_requests=10)
    first = await process.admit(member(org))  # draws a lease for 10: one ledger transaction
    assert first.leased and first.request.reserved_micros == WORST
    with statements(database) as seen:
        tickets = [await process.admit(member(org)) for _ in range(9)]
        await asyncio.sleep(0)  # let nothing in the background sneak in unseen
    assert [t.request.lease_id for t in tickets] == [first.request.lease_id] * 9
    assert [s for s in seen if "inflight" not in s] == []  # only the crash-recovery rows

    records = [await process.finish(t, completion_tokens=30) for t in [first, *tickets]]
    cost = PROMPT_TOKENS + 30 * 2
    assert [r.cost.micros if r.cost else None for r in records] == [cost] * 10
    kinds = await event_kinds(database)
    assert kinds.count("lease_drawn") == 1 and kinds.count("lease_spent") == 10
    assert "hold_placed" not in kinds

    ledger = await process.accountant.ledger.refresh()
    report = await admin(database).balance(org)
    assert report.cash == 1_000_000 - 10 * cost  # leased money is still the organization's
    assert report.leased == sum(ledger.leased_parts(org)) > 0
    await process.accountant.close()
    ledger = await process.accountant.ledger.refresh()
    assert ledger.open_leases() == [] and sum(ledger.leased_parts(org)) == 0
    assert ledger.balance(cash(org)) == 1_000_000 - 10 * cost
    assert ledger.balance(system("CNY", "revenue")) == 10 * cost
    async with database.connect() as conn:
        assert len((await conn.execute(select(usage_records))).all()) == 10
        assert (await conn.execute(select(inflight))).all() == []
    await process.liveness.stop()


async def test_a_balance_too_low_to_lease_is_spent_by_single_holds_to_the_last_request(
    database: AsyncEngine, org: str
) -> None:
    await fund(database, org, 10 * WORST)  # exactly ten worst cases
    process = await Process.start(database, ManualClock())

    async def one() -> bool:
        try:
            ticket = await process.admit(member(org))
        except InsufficientBalance:
            return False
        await asyncio.sleep(0)
        await process.finish(ticket, completion_tokens=MAX_TOKENS)  # the worst case, exactly
        return True

    admitted = await asyncio.gather(*(one() for _ in range(50)))
    assert sum(admitted) == 10
    kinds = await event_kinds(database)
    assert "lease_drawn" not in kinds and kinds.count("hold_placed") == 10
    ledger = await process.accountant.ledger.refresh()
    assert ledger.balance(cash(org)) == 10 * (WORST - FULL) and ledger.balance(held(org)) == 0
    await process.liveness.stop()


async def test_two_processes_never_admit_more_than_the_organization_may_spend(
    database: AsyncEngine, org: str
) -> None:
    """Two processes on one database, 400 requests at once against a balance for 100 worst
    cases: each leases what its share allows, then single holds; never more admitted than
    the money pays for, never a floor crossed, and at the end every lease is back."""
    await fund(database, org, 100 * WORST)
    processes = [await Process.start(database, ManualClock()) for _ in range(2)]

    async def one(process: Process) -> bool:
        try:
            ticket = await process.admit(member(org))
        except InsufficientBalance:
            return False
        await asyncio.sleep(0)
        await process.finish(ticket, completion_tokens=MAX_TOKENS)
        return True

    admitted = await asyncio.gather(*(one(processes[i % 2]) for i in range(400)))
    # Each charge is a little under its hold (no rounding slack used): room for 103 in all.
    # Leases held by the other process may refuse a few that the money would allow.
    assert 50 <= sum(admitted) <= 100 * WORST // FULL
    for process in processes:
        await process.accountant.close()
    ledger = await processes[0].accountant.ledger.refresh()
    assert ledger.open_leases() == [] and sum(ledger.leased_parts(org)) == 0
    assert ledger.balance(cash(org)) == 100 * WORST - sum(admitted) * FULL >= 0
    assert ledger.balance(system("CNY", "shortfall")) == 0
    for process in processes:
        await process.liveness.stop()


async def test_a_budget_or_a_pack_takes_the_request_back_to_a_hold_of_its_own(
    database: AsyncEngine, org: str
) -> None:
    await fund(database, org, 1_000_000)
    process = await Process.start(database, ManualClock())
    ledger = process.accountant.ledger
    await ledger.execute(SetBudget(f"org:{org}", BudgetPeriod.DAY, 500_000))
    ticket = await process.admit(member(org))
    assert ticket.held and not ticket.leased
    await process.finish(ticket, 10)
    await ledger.execute(SetBudget(f"org:{org}", BudgetPeriod.DAY, None))
    await ledger.execute(GrantPack("p1", org, frozenset({PRICE.model}), 10_000, 2**62))
    ticket = await process.admit(member(org))
    assert ticket.held and not ticket.leased
    await process.finish(ticket, 10)
    await process.liveness.stop()


async def test_an_idle_lease_goes_back_to_the_organization(database: AsyncEngine, org: str) -> None:
    await fund(database, org, 1_000_000)
    clock = ManualClock()
    process = await Process.start(database, clock)
    await process.finish(await process.admit(member(org)), 10)
    assert await process.accountant.return_idle_leases() == 0  # used just now
    clock.advance(2.5)
    assert await process.accountant.return_idle_leases() == 1
    ledger = await process.accountant.ledger.refresh()
    assert sum(ledger.leased_parts(org)) == 0
    assert ledger.balance(cash(org)) == 1_000_000 - (PROMPT_TOKENS + 20)
    await process.liveness.stop()


async def test_a_settlement_cancelled_while_it_commits_still_frees_its_reservation(
    database: AsyncEngine, org: str
) -> None:
    """The caller of ``finish`` cancelled while the settlement commits (a client that hangs
    up at that moment: the route's task is cancelled): the settlement still commits, and
    the request's reservation in the lease goes with it, so the idle lease is given back
    whole. Before, the cancellation skipped the reservation's release: the lease never
    became idle and its money stayed leased."""
    await fund(database, org, 1_000_000)
    clock = ManualClock()
    process = await Process.start(database, clock)
    ticket = await process.admit(member(org))
    finishing = asyncio.ensure_future(process.finish(ticket, completion_tokens=10))
    for _ in range(20):  # until it waits for the commit: its settlement queued for it
        await asyncio.sleep(0)
        if process.accountant.ledger.backlog:
            break
    assert process.accountant.ledger.backlog == 1
    finishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finishing
    clock.advance(2.5)
    assert await process.accountant.return_idle_leases() == 1
    ledger = await process.accountant.ledger.refresh()
    assert sum(ledger.leased_parts(org)) == 0
    assert ledger.balance(cash(org)) == 1_000_000 - (PROMPT_TOKENS + 20)
    async with database.connect() as conn:
        assert len((await conn.execute(select(usage_records))).all()) == 1
    await process.liveness.stop()


async def test_a_request_answered_before_its_row_is_due_commits_once(
    database: AsyncEngine, org: str
) -> None:
    """A leased request that ends within ``ROW_DELAY_SECONDS`` of admission writes no
    in-flight row (nor deletes one): its settlement and usage record are its only write."""
    await fund(database, org, 1_000_000)
    process = await Process.start(database, ManualClock(), min_requests=10)
    await process.finish(await process.admit(member(org)), completion_tokens=30)  # the lease
    with statements(database) as seen:
        record = await process.finish(await process.admit(member(org)), completion_tokens=30)
    assert record.cost is not None and record.cost.micros == PROMPT_TOKENS + 30 * 2
    assert [s for s in seen if "inflight" in s] == []
    # one usage record insert (on PostgreSQL a part of the batch's one statement)
    assert sum(s.count("INSERT INTO usage_records") for s in seen) == 1
    async with database.connect() as conn:
        assert (await conn.execute(select(inflight))).all() == []
        assert len((await conn.execute(select(usage_records))).all()) == 2
    await process.liveness.stop()


async def test_a_dead_process_is_settled_from_its_lease_once_and_its_lease_closed(
    database: AsyncEngine, org: str
) -> None:
    await fund(database, org, 1_000_000)
    doomed = await Process.start(database, ManualClock())
    tickets = [await doomed.admit(member(org)) for _ in range(3)]
    for ticket in tickets:  # the in-flight rows, written in the background once due
        await eventually(lambda t=ticket: t.pending is not None, what="the in-flight row")
        assert ticket.pending is not None
        await ticket.pending
    async with database.begin() as conn:
        await checkpoint(
            conn, tickets[0].request.request_id,
            Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=40), 1,
        )  # fmt: skip
    await doomed.liveness.stop()  # as good as dead: its lock is free, its leases open

    survivors = [await Process.start(database, ManualClock(), recover=False) for _ in "ab"]
    recovered = await asyncio.gather(*(s.accountant.sweep() for s in survivors))
    assert sorted(recovered) == [0, 3]
    ledger = await survivors[0].accountant.ledger.refresh()
    assert ledger.open_leases() == [] and sum(ledger.leased_parts(org)) == 0
    charged = PROMPT_TOKENS + 40 * 2  # by its checkpoint; the two without one: nothing
    assert ledger.balance(system("CNY", "revenue")) == charged
    assert ledger.balance(cash(org)) == 1_000_000 - charged
    async with database.connect() as conn:
        records = (await conn.execute(select(usage_records))).all()
        assert sorted(r.termination for r in records) == ["gateway_killed"] * 3
        assert (await conn.execute(select(inflight))).all() == []
    assert [await s.accountant.sweep() for s in survivors] == [0, 0]  # never twice
    for survivor in survivors:
        await survivor.liveness.stop()
