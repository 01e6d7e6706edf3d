"""A stateful test of commuting settlements on a real database (store/ledger/log.py): two
processes on one SQLite file draw leases, settle requests from them (within and beyond what
each reserved, alone and in concurrent batches), take and settle holds, shrink and close
their leases, top up, and recover each other while the other still runs (the fenced case).
After every step, each process, a fresh reader of the log and the entries in SQL agree on
every balance; the log is one sequence; no lease, hold or balance account was ever below
zero at any point of the log's order; and revenue is exactly what the requests cost."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.errors import InsufficientBalance
from openmaas.core.ledger_events import (
    DrawLease,
    Hold,
    Settle,
    ShrinkLease,
    SpendLease,
    TopUp,
    cash,
    held,
    leased,
    leased_promo,
    system,
)
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.database import migrate, open_database
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import ledger_events
from tests.store.test_postgres_ledger import lowest_balance_ever, sql_balance

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))  # 1 micro a token
REVENUE = system("CNY", "revenue")
PROCESSES = ("A", "B")


class CommutingLedgers(RuleBasedStateMachine):
    def __init__(self, migrated: Path) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = tempfile.TemporaryDirectory()
        path = Path(self.directory.name) / "openmaas.db"
        shutil.copy(migrated, path)  # a migrated empty database, copied: a fresh one each
        url = "sqlite+aiosqlite:///" + str(path)
        self.engines: list[AsyncEngine] = [open_database(url), open_database(url)]
        repository = OrganizationRepository(self.engines[0])
        self.org = self.run(repository.create("acme", NOW_MS)).id
        self.stores = {
            name: LedgerStore(engine, lambda: NOW_MS, instance_id=name)
            for name, engine in zip(PROCESSES, self.engines, strict=True)
        }
        self.ids = itertools.count()
        self.leases: dict[str, list[str]] = {name: [] for name in PROCESSES}  # open, drawn
        self.funds = 0
        self.charged = 0
        self.run(self.top_up_by(2_000))

    def run(self, awaitable):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        for store in self.stores.values():
            self.run(store.close())
        for engine in self.engines:
            self.run(engine.dispose())
        self.loop.close()
        self.directory.cleanup()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    async def top_up_by(self, amount: int) -> None:
        await self.stores["A"].execute(TopUp(self.new_id("t"), self.org, amount))
        self.funds += amount

    @rule(amount=st.integers(1, 500))
    def top_up(self, amount: int) -> None:
        self.run(self.top_up_by(amount))

    @rule(process=st.sampled_from(PROCESSES), want=st.integers(50, 2_000))
    def draw(self, process: str, want: int) -> None:
        lease_id = self.new_id("lease-")
        try:
            self.run(
                self.stores[process].execute(
                    DrawLease(lease_id, self.org, process, want=want, at_least=20)
                )
            )
        except InsufficientBalance:
            return
        self.leases[process].append(lease_id)

    def spends(
        self, lease_id: str, usages: list[tuple[int, int]], beyond: bool
    ) -> list[SpendLease]:
        """Settlements of new requests from ``lease_id``, each reserving what it costs (or,
        ``beyond``, half of it)."""
        commands = []
        for prompt, completion in usages:
            usage = Usage(prompt_tokens=prompt, cached_tokens=0, completion_tokens=completion)
            cost = PRICE.charge(usage).micros
            reserved = cost // 2 if beyond else cost + 10
            commands.append(SpendLease(self.new_id("r"), lease_id, PRICE, usage, reserved))
            self.charged += cost
        return commands

    @precondition(lambda self: any(self.leases.values()))
    @rule(
        data=st.data(),
        rounds=st.lists(
            st.tuples(
                st.sampled_from(PROCESSES),
                st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=5),
                st.integers(0, 5).map(lambda n: n == 0),  # now and then beyond
            ),
            min_size=1,
            max_size=4,
        ),
        at_once=st.booleans(),
    )
    def settle_from_leases(
        self,
        data: st.DataObject,
        rounds: list[tuple[str, list[tuple[int, int]], bool]],
        at_once: bool,
    ) -> None:
        """Requests settled from the processes' leases (including one closed by a
        recovery), a batch per round: one round after the other, or all at once; no
        process looks at the log in between."""
        batches = []
        for process, usages, beyond in rounds:
            if not self.leases[process]:
                continue
            lease_id = data.draw(st.sampled_from(self.leases[process]))
            batches.append((self.stores[process], self.spends(lease_id, usages, beyond)))

        async def settle() -> None:
            async def batch(store: LedgerStore, commands: list[SpendLease]) -> None:
                await asyncio.gather(*(store.execute(command) for command in commands))

            if at_once:
                await asyncio.gather(*(batch(store, commands) for store, commands in batches))
            else:
                for store, commands in batches:
                    await batch(store, commands)

        self.run(settle())

    @rule(process=st.sampled_from(PROCESSES), tokens=st.integers(1, 40))
    def hold_and_settle(self, process: str, tokens: int) -> None:
        store = self.stores[process]
        request_id = self.new_id("h")
        quote = PRICE.worst_case(prompt_tokens=tokens, max_output_tokens=tokens)
        try:
            self.run(store.execute(Hold(request_id, self.org, quote, NOW_MS)))
        except InsufficientBalance:
            return
        usage = Usage(prompt_tokens=tokens, cached_tokens=0, completion_tokens=tokens // 2)
        self.run(store.execute(Settle(request_id, usage)))
        self.charged += PRICE.charge(usage).micros

    @precondition(lambda self: any(self.leases.values()))
    @rule(data=st.data(), keep=st.integers(0, 200))
    def shrink(self, data: st.DataObject, keep: int) -> None:
        process = data.draw(st.sampled_from([p for p in PROCESSES if self.leases[p]]))
        lease_id = data.draw(st.sampled_from(self.leases[process]))
        self.run(self.stores[process].execute(ShrinkLease(lease_id, keep)))
        if keep == 0:
            self.leases[process].remove(lease_id)

    @precondition(lambda self: any(self.leases.values()))
    @rule(data=st.data(), tokens=st.integers(1, 40))
    def recover_while_it_runs(self, data: st.DataObject, tokens: int) -> None:
        """The other process takes ``process`` for dead: settles a request of its from a
        lease of its, and closes all its leases. ``process`` runs on, and settles more from
        them, not having looked at the log."""
        process = data.draw(st.sampled_from([p for p in PROCESSES if self.leases[p]]))
        survivor = self.stores["B" if process == "A" else "A"]
        usage = Usage(prompt_tokens=tokens, cached_tokens=0, completion_tokens=tokens)
        cost = PRICE.charge(usage).micros
        request_id = self.new_id("rec")
        lease_id = self.leases[process][0]
        self.run(survivor.execute(SpendLease(request_id, lease_id, PRICE, usage, cost)))
        self.charged += cost
        for lease_id in self.leases[process]:
            self.run(survivor.execute(ShrinkLease(lease_id, 0)))

    @rule(process=st.sampled_from(PROCESSES))
    def catch_up(self, process: str) -> None:
        """A process reads the log: it finds what a fresh reader finds."""
        view = self.run(self.stores[process].refresh())
        fresh = self.run(LedgerStore(self.engines[1], lambda: NOW_MS).refresh())
        assert view.balances == fresh.balances
        assert view.leases == fresh.leases

    @invariant()
    def a_fresh_reader_finds_an_exact_ledger(self) -> None:
        fresh = self.run(LedgerStore(self.engines[1], lambda: NOW_MS).refresh())
        assert set(fresh.totals_by_unit().values()) <= {0}
        assert fresh.balance(REVENUE) == self.charged
        org = self.org
        assert (
            fresh.balance(cash(org)) + fresh.balance(leased(org))
            + fresh.balance(leased_promo(org)) + fresh.balance(held(org))
            + self.charged + fresh.balance(system("CNY", "shortfall"))  # minus what none paid
            == self.funds
        )  # fmt: skip
        engine = self.engines[0]
        for account in (cash(org), leased(org), leased_promo(org), held(org), REVENUE):
            assert self.run(sql_balance(engine, account)) == fresh.balance(account)
        for account in (cash(org), leased(org), leased_promo(org), held(org)):
            assert self.run(lowest_balance_ever(engine, account)) >= 0

    @invariant()
    def the_log_is_one_sequence(self) -> None:
        async def seqs() -> list[int]:
            async with self.engines[0].connect() as conn:
                found = await conn.execute(select(ledger_events.c.seq).order_by("seq"))
                return list(found.scalars())

        found = self.run(seqs())
        assert found == list(range(1, len(found) + 1))


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database file at the newest migration, for each example to copy."""
    path = tmp_path_factory.mktemp("migrated") / "openmaas.db"

    async def make() -> None:
        engine = open_database("sqlite+aiosqlite:///" + str(path))
        await migrate(engine)
        await engine.dispose()

    asyncio.run(make())
    return path


def test_commuting_settlements_keep_every_reader_exact(migrated: Path) -> None:
    run_state_machine_as_test(
        lambda: CommutingLedgers(migrated),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
