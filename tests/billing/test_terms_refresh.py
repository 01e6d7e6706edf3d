"""The accountant's terms from memory (billing/accountant.py ``terms``): re-read on a change
the feed reports, one read at a time however many requests wait, and a safety-net re-read
that no request waits for. Real SQLite; statements counted on the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.accounts.auth import Authenticator, Principal
from openmaas.accounts.keycache import KeyCache
from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter
from openmaas.core.keys import generate_key
from openmaas.core.prices import ModelPrice
from openmaas.store.billing import set_price
from openmaas.store.changes import Change
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import ApiKeyRepository, OrganizationRepository
from tests.support.clock import NOW_MS, ManualClock

MASTER = b"m" * 32
TERMS_READ = "FROM tiers ORDER BY"  # one statement of each read of the terms
KEY_READ = "FROM api_keys"


class Statements:
    """Counts the statements sent to the database that contain each fragment."""

    def __init__(self, database: AsyncEngine, *fragments: str) -> None:
        self.counts = dict.fromkeys(fragments, 0)

        def note(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
            for fragment in fragments:
                self.counts[fragment] += fragment in statement

        event.listen(database.sync_engine, "before_cursor_execute", note)


class Held:
    """A database whose connections wait until ``open`` is set (``reached``: one asked)."""

    def __init__(self, database: AsyncEngine) -> None:
        self.database = database
        self.open = asyncio.Event()
        self.reached = asyncio.Event()
        self.open.set()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        self.reached.set()
        await self.open.wait()
        async with self.database.connect() as conn:
            yield conn


@dataclass
class Rig:
    database: AsyncEngine
    held: Held  # what the accountant reads the terms through
    accountant: Accountant
    clock: ManualClock
    org_id: str


@pytest.fixture
async def rig(database: AsyncEngine, clock: ManualClock) -> AsyncIterator[Rig]:
    org = await OrganizationRepository(database).create("acme", NOW_MS)
    held = Held(database)
    accountant = Accountant(
        held, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock,  # type: ignore[arg-type]
        refresh_seconds=60,
    )  # fmt: skip
    yield Rig(database, held, accountant, clock, org.id)


async def price(database: AsyncEngine, output_per_million: int) -> None:
    async with database.begin() as conn:
        await set_price(conn, ModelPrice("m", 1_000_000, 500_000, output_per_million))


async def test_requests_during_a_refresh_cost_one_terms_query_and_one_key_query(
    rig: Rig,
) -> None:
    new = generate_key(MASTER)
    await ApiKeyRepository(rig.database).create(rig.org_id, "bot", "member", new, NOW_MS)
    keys = Held(rig.database)
    auth = Authenticator(KeyCache(ApiKeyRepository(keys)), MASTER, rig.clock.now_ms)  # type: ignore[arg-type]
    await rig.accountant.terms()
    statements = Statements(rig.database, TERMS_READ, KEY_READ)
    keys.open.clear()
    rig.held.open.clear()
    rig.accountant.invalidate()  # a change arrived: every request needs fresh terms

    async def request() -> tuple[Principal, object]:
        principal = await auth.authenticate(f"Bearer {new.token}")
        return principal, await rig.accountant.terms()

    requests = [asyncio.ensure_future(request()) for _ in range(25)]
    await keys.reached.wait()  # the key's first lookup is under way...
    keys.open.set()
    await rig.held.reached.wait()  # ...and then the read of the terms
    rig.held.open.set()
    answers = await asyncio.gather(*requests)
    assert {principal.key_id for principal, _ in answers} == {new.key_id}
    assert len({id(terms) for _, terms in answers}) == 1  # one read, shared
    assert statements.counts == {TERMS_READ: 1, KEY_READ: 1}


async def test_a_change_reported_by_the_feed_applies_to_the_next_request(rig: Rig) -> None:
    principal = Principal("om_k", rig.org_id, "member")
    await price(rig.database, 2_000_000)
    first = (await rig.accountant.terms()).price(principal, "m", NOW_MS)
    assert first is not None and first.price.output_per_million == 2_000_000
    await price(rig.database, 3_000_000)  # another process's change, not yet reported
    gate = Statements(rig.database, TERMS_READ)
    same = (await rig.accountant.terms()).price(principal, "m", NOW_MS)
    assert same == first and gate.counts[TERMS_READ] == 0  # from memory
    await rig.accountant.apply_changes([Change(7, "key.revoke", "om_x")])  # not about terms
    assert gate.counts[TERMS_READ] == 0
    await rig.accountant.apply_changes([Change(8, "price.set", "m/CNY")])
    assert gate.counts[TERMS_READ] == 1  # read by the feed, before any request asks
    now = (await rig.accountant.terms()).price(principal, "m", NOW_MS)
    assert now is not None and now.price.output_per_million == 3_000_000
    assert gate.counts[TERMS_READ] == 1


async def test_a_change_during_a_read_makes_later_requests_wait_for_the_next_read(
    rig: Rig,
) -> None:
    principal = Principal("om_k", rig.org_id, "member")
    await price(rig.database, 2_000_000)
    gate = Statements(rig.database, TERMS_READ)
    rig.held.open.clear()
    early = asyncio.ensure_future(rig.accountant.terms())  # the first read, held
    await rig.held.reached.wait()
    await price(rig.database, 3_000_000)
    rig.accountant.invalidate()  # reported while the first read is under way
    late = [asyncio.ensure_future(rig.accountant.terms()) for _ in range(10)]
    rig.held.open.set()
    await early
    terms = await asyncio.gather(*late)
    for seen in terms:
        applied = seen.price(principal, "m", NOW_MS)
        assert applied is not None and applied.price.output_per_million == 3_000_000
    assert gate.counts[TERMS_READ] == 2  # the held read, then one more for all ten


async def test_the_safety_net_rereads_in_the_background(rig: Rig) -> None:
    principal = Principal("om_k", rig.org_id, "member")
    await price(rig.database, 2_000_000)
    await rig.accountant.terms()
    await price(rig.database, 3_000_000)  # changed beside OpenMaaS: no audit row
    rig.clock.advance(60)
    gate = Statements(rig.database, TERMS_READ)
    rig.held.open.clear()
    stale = (await rig.accountant.terms()).price(principal, "m", NOW_MS)  # does not wait
    assert stale is not None and stale.price.output_per_million == 2_000_000
    await rig.held.reached.wait()
    rig.held.open.set()
    background = rig.accountant._refreshing
    assert background is not None
    await background.future  # the background read, finishing
    fresh = (await rig.accountant.terms()).price(principal, "m", NOW_MS)
    assert fresh is not None and fresh.price.output_per_million == 3_000_000
    assert gate.counts[TERMS_READ] == 1
