"""Repositories on a real SQLite file (store/database.py, store/repositories.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.core.keys import generate_key
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord, UsageTotal
from openmaas.store.database import MIGRATIONS_DIR, migrate, open_database, ping
from openmaas.store.repositories import (
    ApiKeyRepository,
    OrganizationRepository,
    UsageRepository,
    utc_day,
)

# 2024-03-01T00:00:00Z and friends, in epoch ms
DAY1 = 1709251200000
DAY2 = DAY1 + 86_400_000
DAY3 = DAY2 + 86_400_000


def head_revision() -> str:
    """The newest migration shipped in the package."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def db_url(path: Path) -> str:
    return "sqlite+aiosqlite:///" + str(path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "openmaas.db"  # the file of the shared database fixture (tests/conftest.py)


def record(
    request_id: str,
    *,
    org: str = "org_a",
    model: str = "m1",
    at_ms: int = DAY1,
    prompt: int = 10,
    cached: int = 0,
    completion: int = 5,
    termination: Termination = Termination.FINISHED,
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        key_id="om0123456789abcdef",
        org_id=org,
        model=model,
        endpoint="/v1/chat/completions",
        usage=Usage(prompt, cached, completion),
        termination=termination,
        started_at_ms=at_ms,
        ttft_ms=12,
        latency_ms=34,
    )


# -- database -------------------------------------------------------------------------
async def test_migrate_creates_the_tables_and_is_idempotent(db_path: Path) -> None:
    eng = open_database(db_url(db_path))
    try:
        await migrate(eng)
        await OrganizationRepository(eng).create("acme", DAY1)
        await migrate(eng)  # a second start must neither fail nor lose data
        assert [o.name for o in await OrganizationRepository(eng).list()] == ["acme"]
        async with eng.connect() as conn:
            tables = await conn.run_sync(lambda c: set(sa_inspect(c).get_table_names()))
            version = (
                await conn.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
        assert {"organizations", "api_keys", "usage_records", "ledger_events", "prices"} <= tables
        assert version == head_revision()
    finally:
        await eng.dispose()


async def test_sqlite_is_tuned_for_durability(database: AsyncEngine) -> None:
    async with database.connect() as conn:
        journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
        synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
        fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
    assert journal == "wal"
    assert synchronous == 2  # FULL
    assert fks == 1


async def test_ping(database: AsyncEngine, tmp_path: Path) -> None:
    assert await ping(database)
    unreachable = open_database(db_url(tmp_path / "no-such-dir" / "x.db"))
    try:
        assert not await ping(unreachable)
    finally:
        await unreachable.dispose()


# -- organizations --------------------------------------------------------------------
async def test_org_create_and_find_by_id_and_name(database: AsyncEngine) -> None:
    orgs = OrganizationRepository(database)
    org = await orgs.create("acme", DAY1)
    assert org.name == "acme" and org.created_at_ms == DAY1
    assert org.id.startswith("org_")
    assert await orgs.find(org.id) == org
    assert await orgs.find("acme") == org
    assert await orgs.count() == 1


async def test_org_find_unknown_is_not_found(database: AsyncEngine) -> None:
    with pytest.raises(NotFound):
        await OrganizationRepository(database).find("nobody")


async def test_duplicate_org_name_is_invalid_request(database: AsyncEngine) -> None:
    orgs = OrganizationRepository(database)
    await orgs.create("acme", DAY1)
    with pytest.raises(InvalidRequest) as info:
        await orgs.create("acme", DAY2)
    assert info.value.param == "name"
    assert "acme" in info.value.message
    assert await orgs.count() == 1


async def test_org_list_is_in_creation_order(database: AsyncEngine) -> None:
    orgs = OrganizationRepository(database)
    await orgs.create("second", DAY2)
    await orgs.create("first", DAY1)
    assert [o.name for o in await orgs.list()] == ["first", "second"]


# -- api keys -------------------------------------------------------------------------
async def test_key_create_get_list(database: AsyncEngine) -> None:
    org = await OrganizationRepository(database).create("acme", DAY1)
    keys = ApiKeyRepository(database)
    new = generate_key()
    created = await keys.create(org.id, "ci", "member", new, DAY2)
    got = await keys.get(new.key_id)
    assert got == created
    assert got.org_id == org.id and got.name == "ci" and got.role == "member"
    assert got.secret_hash == new.secret_hash
    assert not got.revoked
    assert await keys.list() == [created]
    assert await keys.list(org.id) == [created]
    assert await keys.get("om" + "0" * 16) is None


async def test_key_secret_is_never_stored(database: AsyncEngine, db_path: Path) -> None:
    org = await OrganizationRepository(database).create("acme", DAY1)
    new = generate_key()
    await ApiKeyRepository(database).create(org.id, "ci", "admin", new, DAY1)
    await database.dispose()  # flush everything to the file
    raw = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert new.secret.encode() not in raw
    assert new.key_id.encode() in raw


async def test_key_list_filters_by_org(database: AsyncEngine) -> None:
    orgs, keys = OrganizationRepository(database), ApiKeyRepository(database)
    a, b = await orgs.create("a", DAY1), await orgs.create("b", DAY1)
    ka = await keys.create(a.id, "ka", "member", generate_key(), DAY1)
    kb = await keys.create(b.id, "kb", "member", generate_key(), DAY2)
    assert await keys.list(a.id) == [ka]
    assert await keys.list(b.id) == [kb]
    assert await keys.list() == [ka, kb]


async def test_key_for_unknown_org_is_refused(database: AsyncEngine) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        await ApiKeyRepository(database).create("org_missing", "k", "member", generate_key(), DAY1)


async def test_revoke(database: AsyncEngine) -> None:
    org = await OrganizationRepository(database).create("acme", DAY1)
    keys = ApiKeyRepository(database)
    new = generate_key()
    await keys.create(org.id, "ci", "member", new, DAY1)
    await keys.revoke(new.key_id, DAY2)
    got = await keys.get(new.key_id)
    assert got.revoked and got.revoked_at_ms == DAY2
    # revoking twice is fine and keeps the first time
    await keys.revoke(new.key_id, DAY3)
    assert (await keys.get(new.key_id)).revoked_at_ms == DAY2


async def test_revoke_unknown_key_is_not_found(database: AsyncEngine) -> None:
    with pytest.raises(NotFound):
        await ApiKeyRepository(database).revoke("om" + "0" * 16, DAY1)


async def test_revoke_only_touches_that_key(database: AsyncEngine) -> None:
    org = await OrganizationRepository(database).create("acme", DAY1)
    keys = ApiKeyRepository(database)
    k1, k2 = generate_key(), generate_key()
    await keys.create(org.id, "1", "member", k1, DAY1)
    await keys.create(org.id, "2", "member", k2, DAY1)
    await keys.revoke(k1.key_id, DAY2)
    assert not (await keys.get(k2.key_id)).revoked


# -- usage ----------------------------------------------------------------------------
async def test_usage_append_and_get(database: AsyncEngine) -> None:
    usage = UsageRepository(database)
    await usage.append(
        record("r1", prompt=7, cached=2, completion=3, termination=Termination.LENGTH)
    )
    row = await usage.get("r1")
    assert row is not None
    assert row["prompt_tokens"] == 7 and row["cached_tokens"] == 2 and row["completion_tokens"] == 3
    assert row["termination"] == "length"
    assert row["day"] == "2024-03-01"
    assert row["ttft_ms"] == 12 and row["latency_ms"] == 34
    assert row["estimated"] == 0
    assert await usage.get("nope") is None


async def test_usage_is_durable_across_reopen(db_path: Path) -> None:
    eng = open_database(db_url(db_path))
    await migrate(eng)
    await UsageRepository(eng).append(record("r1", completion=9))
    await eng.dispose()

    reopened = open_database(db_url(db_path))
    try:
        await migrate(reopened)
        row = await UsageRepository(reopened).get("r1")
        assert row is not None and row["completion_tokens"] == 9
    finally:
        await reopened.dispose()


async def test_usage_append_is_idempotent_by_request_id(database: AsyncEngine) -> None:
    usage = UsageRepository(database)
    first = record("r1", prompt=10, completion=5)
    await usage.append(first)
    await usage.append(
        replace(first, usage=Usage(999, 9, 999), termination=Termination.ENGINE_ERROR)
    )
    row = await usage.get("r1")
    assert row["prompt_tokens"] == 10 and row["completion_tokens"] == 5
    assert row["termination"] == "finished"
    (total,) = await usage.totals()
    assert total.requests == 1 and total.completion_tokens == 5


async def test_usage_totals_group_by_utc_day_and_model(database: AsyncEngine) -> None:
    usage = UsageRepository(database)
    # 23:59:59.999 on day 1 and 00:00:00 on day 2 fall on different UTC days.
    await usage.append(record("a", model="m1", at_ms=DAY2 - 1, prompt=1, cached=1, completion=2))
    await usage.append(record("b", model="m1", at_ms=DAY1, prompt=3, cached=0, completion=4))
    await usage.append(record("c", model="m2", at_ms=DAY1 + 5, prompt=5, cached=2, completion=6))
    await usage.append(record("d", model="m1", at_ms=DAY2, prompt=7, cached=0, completion=8))
    assert await usage.totals() == [
        UsageTotal("2024-03-01", "m1", 2, 4, 1, 6),
        UsageTotal("2024-03-01", "m2", 1, 5, 2, 6),
        UsageTotal("2024-03-02", "m1", 1, 7, 0, 8),
    ]


async def test_usage_totals_are_per_org(database: AsyncEngine) -> None:
    usage = UsageRepository(database)
    await usage.append(record("a1", org="org_a", completion=1))
    await usage.append(record("a2", org="org_a", completion=2))
    await usage.append(record("b1", org="org_b", completion=100))
    (a,) = await usage.totals(org_id="org_a")
    assert (a.requests, a.completion_tokens) == (2, 3)
    (b,) = await usage.totals(org_id="org_b")
    assert (b.requests, b.completion_tokens) == (1, 100)
    assert await usage.totals(org_id="org_c") == []
    (both,) = await usage.totals()
    assert both.requests == 3


async def test_usage_totals_filter_by_day_inclusive(database: AsyncEngine) -> None:
    usage = UsageRepository(database)
    for i, day in enumerate([DAY1, DAY2, DAY3]):
        await usage.append(record(f"r{i}", at_ms=day))
    days = lambda totals: [t.day for t in totals]  # noqa: E731
    assert days(await usage.totals(since_day="2024-03-02")) == ["2024-03-02", "2024-03-03"]
    assert days(await usage.totals(until_day="2024-03-02")) == ["2024-03-01", "2024-03-02"]
    assert days(await usage.totals(since_day="2024-03-02", until_day="2024-03-02")) == [
        "2024-03-02"
    ]
    assert await usage.totals(since_day="2024-03-04") == []


async def test_usage_totals_combine_org_and_day_filters(database: AsyncEngine) -> None:
    usage = UsageRepository(database)
    await usage.append(record("a1", org="org_a", at_ms=DAY1))
    await usage.append(record("a2", org="org_a", at_ms=DAY2))
    await usage.append(record("b2", org="org_b", at_ms=DAY2))
    totals = await usage.totals(org_id="org_a", since_day="2024-03-02")
    assert [(t.day, t.requests) for t in totals] == [("2024-03-02", 1)]


def test_utc_day() -> None:
    assert utc_day(0) == "1970-01-01"
    assert utc_day(DAY1) == "2024-03-01"
    assert utc_day(DAY1 - 1) == "2024-02-29"


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # up to 2100-01-01
def test_a_usage_records_day_is_the_utc_date_of_its_start(epoch_ms: int) -> None:
    from datetime import UTC, datetime

    from openmaas.store.repositories import utc_day

    assert utc_day(epoch_ms) == datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d")
