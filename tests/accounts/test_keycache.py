"""Keys from memory (accounts/keycache.py): a cached key costs no SQL statement, concurrent
first requests of a key cost one, and a change reported by the change feed is never missed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.admin import AccountsAdmin
from openmaas.accounts.auth import Authenticator
from openmaas.accounts.keycache import KeyCache
from openmaas.core.errors import AuthenticationFailed
from openmaas.core.keys import generate_key
from openmaas.platform import open_platform
from openmaas.settings import Settings
from openmaas.store.audit import AuditedChanges
from openmaas.store.changes import RESET, Change, ChangeFeed
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import ApiKey, ApiKeyRepository, OrganizationRepository
from tests.support.clock import ManualClock

MASTER = b"k" * 32


class Statements:
    """Every SQL statement the database is sent, as text."""

    def __init__(self, database: AsyncEngine) -> None:
        self.seen: list[str] = []

        def note(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
            self.seen.append(statement)

        event.listen(database.sync_engine, "before_cursor_execute", note)

    def count(self, fragment: str = "") -> int:
        return sum(fragment in s for s in self.seen)


@dataclass
class World:
    database: AsyncEngine
    admin: AccountsAdmin
    feed: ChangeFeed
    cache: KeyCache
    auth: Authenticator
    clock: ManualClock
    statements: Statements


@pytest.fixture
async def world(database: AsyncEngine, clock: ManualClock) -> AsyncIterator[World]:
    """A serving process's key cache and feed; ``admin`` changes keys as another process
    (the CLI) would, so this process learns of them only by polling."""
    admin = AccountsAdmin(
        AuditedChanges(database, LedgerStore(database, clock.now_ms), clock.now_ms, "cli:t"),
        clock,
        MASTER,
    )
    await OrganizationRepository(database).create("acme", clock.now_ms())
    feed = ChangeFeed(database, clock, 0.5)
    cache = KeyCache(ApiKeyRepository(database), current=feed.current)
    feed.subscribe(cache.apply)
    await feed.start()
    auth = Authenticator(cache, MASTER, clock.now_ms)
    try:
        yield World(database, admin, feed, cache, auth, clock, Statements(database))
    finally:
        await feed.stop()


async def test_a_cached_key_is_authenticated_without_any_sql(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    await world.feed.poll()
    header = f"Bearer {issued.token}"
    first = await world.auth.authenticate(header)  # the first request: one round trip
    before = len(world.statements.seen)
    again = await world.auth.authenticate(header)
    assert again == first and len(world.statements.seen) == before


async def test_the_secret_is_still_checked_against_a_cached_key(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    await world.auth.authenticate(f"Bearer {issued.token}")
    forged = f"{issued.key.id}.{'A' * 43}"
    with pytest.raises(AuthenticationFailed) as info:
        await world.auth.authenticate(f"Bearer {forged}")
    assert "revoked" not in info.value.message


async def test_concurrent_first_requests_of_a_key_cost_one_query(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    await world.feed.poll()
    before = world.statements.count("FROM api_keys")
    principals = await asyncio.gather(
        *(world.auth.authenticate(f"Bearer {issued.token}") for _ in range(20))
    )
    assert {p.key_id for p in principals} == {issued.key.id}
    assert world.statements.count("FROM api_keys") - before == 1


async def test_a_revoked_key_is_refused_once_the_feed_reports_it(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    header = f"Bearer {issued.token}"
    await world.auth.authenticate(header)
    await world.admin.revoke_key(issued.key.id)  # as another process would: no poll here
    await world.feed.poll()
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await world.auth.authenticate(header)


async def test_a_tier_given_to_a_key_reaches_its_principal(world: World) -> None:
    from openmaas.store.billing import update_key_tier

    issued = await world.admin.issue_key("acme", "bot")
    header = f"Bearer {issued.token}"
    assert (await world.auth.authenticate(header)).tier is None
    async with world.database.begin() as conn:  # as BillingAdmin.set_key_tier writes it
        await update_key_tier(conn, issued.key.id, "V1")
    await world.cache.apply([Change(99, "key.update", issued.key.id)])
    assert (await world.auth.authenticate(header)).tier == "V1"


async def test_an_unknown_key_is_remembered_until_a_key_is_created_under_its_id(
    world: World,
) -> None:
    new = generate_key(MASTER)
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(f"Bearer {new.token}")
    before = world.statements.count("FROM api_keys")
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(f"Bearer {new.token}")
    assert world.statements.count("FROM api_keys") == before  # the miss is kept
    org = await OrganizationRepository(world.database).find("acme")
    await ApiKeyRepository(world.database).create(org.id, "late", "member", new, org.created_at_ms)
    await world.cache.apply([Change(99, "key.create", new.key_id)])
    assert (await world.auth.authenticate(f"Bearer {new.token}")).key_id == new.key_id


async def test_a_lookup_that_raced_a_change_is_not_kept(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    gate, read = asyncio.Event(), asyncio.Event()
    repository = ApiKeyRepository(world.database)

    class Slow:
        async def get(self, key_id: str) -> ApiKey | None:
            found = await repository.get(key_id)  # read before the revocation
            read.set()
            await gate.wait()
            return found

    cache = KeyCache(Slow())
    lookup = asyncio.ensure_future(cache.get(issued.key.id))
    await read.wait()
    await world.admin.revoke_key(issued.key.id)
    await cache.apply([Change(99, "key.revoke", issued.key.id)])
    gate.set()
    answered = await lookup
    assert answered is not None and not answered.revoked  # its caller's answer, as read
    stored = await repository.get(issued.key.id)
    assert stored is not None and stored.revoked
    assert len(cache) == 0  # ...but not kept: the next request reads the revocation


async def test_a_reset_forgets_everything(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    await world.auth.authenticate(f"Bearer {issued.token}")
    assert len(world.cache) == 1
    await world.cache.apply([Change(99, RESET, RESET)])
    assert len(world.cache) == 0


async def test_memory_is_not_trusted_while_the_feed_is_behind(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot")
    header = f"Bearer {issued.token}"
    await world.auth.authenticate(header)
    world.clock.advance(10)  # no poll for ten seconds: a revocation may have been missed
    await world.admin.revoke_key(issued.key.id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await world.auth.authenticate(header)


async def test_the_cache_keeps_the_most_recently_used_keys() -> None:
    rows = {f"om{i:016x}": None for i in range(5)}
    lookups: list[str] = []

    class Source:
        async def get(self, key_id: str) -> ApiKey | None:
            lookups.append(key_id)
            return rows[key_id]

    cache = KeyCache(Source(), capacity=3)
    ids = list(rows)
    for key_id in ids[:3]:
        await cache.get(key_id)
    await cache.get(ids[0])  # used again: now the newest
    await cache.get(ids[3])  # evicts ids[1], the least recently used
    lookups.clear()
    for key_id in (ids[0], ids[2], ids[3]):
        await cache.get(key_id)
    assert lookups == [] and len(cache) == 3
    await cache.get(ids[1])
    assert lookups == [ids[1]]


async def test_a_server_platform_answers_keys_from_memory_and_applies_its_own_changes_at_once(
    settings: Settings, clock: ManualClock
) -> None:
    async with open_platform(settings, clock=clock, serve=True) as platform:
        issued = await platform.first_run()
        assert issued is not None
        auth = Authenticator(platform.keys, platform.master_key, platform.clock.now_ms)
        header = f"Bearer {issued.token}"
        await auth.authenticate(header)
        statements = Statements(platform.database)
        assert (await auth.authenticate(header)).is_admin
        assert statements.seen == []  # from memory
        await platform.accounts_admin("key:admin").revoke_key(issued.key.id)
        with pytest.raises(AuthenticationFailed, match="revoked"):  # this process: at once
            await auth.authenticate(header)


async def test_an_expired_key_is_refused_from_memory_with_no_change_to_tell_of_it(
    world: World,
) -> None:
    issued = await world.admin.issue_key("acme", "bot", expires_at_ms=world.clock.now_ms() + 60_000)
    await world.feed.poll()
    header = f"Bearer {issued.token}"
    await world.auth.authenticate(header)  # read once, then kept
    world.clock.advance(60)
    await world.feed.poll()  # the feed is current, and has nothing to say of the key
    before = world.statements.count("FROM api_keys")
    with pytest.raises(AuthenticationFailed, match="expired"):
        await world.auth.authenticate(header)
    assert world.statements.count("FROM api_keys") == before  # the clock decided, not SQL


async def test_a_keys_models_reach_its_principal_from_memory(world: World) -> None:
    issued = await world.admin.issue_key("acme", "bot", models=["glm-4", "fake-chat"])
    await world.feed.poll()
    header = f"Bearer {issued.token}"
    await world.auth.authenticate(header)
    before = world.statements.count("FROM api_keys")
    principal = await world.auth.authenticate(header)
    assert world.statements.count("FROM api_keys") == before
    assert principal.models == frozenset({"glm-4", "fake-chat"})
    assert principal.may_use("fake-chat") and not principal.may_use("other")
    unrestricted = await world.admin.issue_key("acme", "any")
    assert (await world.auth.authenticate(f"Bearer {unrestricted.token}")).models is None
