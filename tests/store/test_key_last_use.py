"""Each key's last use (``key_last_use``, kept by the usage roller, and the records past its
watermark): the console's key list shows the latest start of a key's records whether or
not they are rolled up yet, without reading the records already rolled up; migration 0016
fills it from the records there were, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.usage import UsageRecord
from openmaas.store.database import migrate, open_database
from openmaas.store.people.keys import list_org_keys
from openmaas.store.repositories import UsageRepository
from openmaas.store.rollups.roller import UsageRoller
from openmaas.store.schema import api_keys, organizations, usage_records
from tests.store.test_rollups import _migrate_to, make_record
from tests.support.clock import NOW_MS

KEYS = {"k1": "org_a", "k2": "org_a", "k3": "org_b", "k4": "org_a"}  # k4: never used


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path_factory.mktemp("keys") / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


async def _keys(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for org in ("org_a", "org_b"):
            await conn.execute(insert(organizations).values(id=org, name=org, created_at_ms=0))
        for key, org in KEYS.items():
            await conn.execute(
                insert(api_keys).values(
                    id=key, org_id=org, name=key, role="member", secret_hash="x", created_at_ms=0
                )
            )


def _record(key: str, at_ms: int, n: int) -> UsageRecord:
    record = make_record(n, random.Random(n))
    return dataclasses.replace(record, key_id=key, org_id=KEYS[key], started_at_ms=at_ms)


async def _last_uses(engine: AsyncEngine, org: str) -> dict[str, int | None]:
    return {k.id: k.last_used_ms for k in await list_org_keys(engine, org)}


async def test_last_use_is_the_latest_start_rolled_up_or_not(database_url: str) -> None:
    engine = open_database(database_url)
    await migrate(engine)
    try:
        await _keys(engine)
        usage, roller = UsageRepository(engine), UsageRoller(engine, lambda: NOW_MS)
        for n, (key, at) in enumerate([("k1", NOW_MS - 5_000), ("k1", NOW_MS - 9_000),
                                       ("k2", NOW_MS - 1_000), ("k3", NOW_MS)]):  # fmt: skip
            await usage.append(_record(key, at, n))
        want = {"k1": NOW_MS - 5_000, "k2": NOW_MS - 1_000, "k4": None}
        assert await _last_uses(engine, "org_a") == want  # nothing rolled up yet
        assert await roller.roll() == 4
        async with engine.begin() as conn:  # rolled up: org A's records are not needed
            # (org B's, written last, stays: SQLite would reuse the largest rowid)
            await conn.execute(delete(usage_records).where(usage_records.c.org_id == "org_a"))
        assert await _last_uses(engine, "org_a") == want
        assert await _last_uses(engine, "org_b") == {"k3": NOW_MS}

        # A later use past the watermark shows at once; an older one folded later
        # does not take the last use back.
        await usage.append(_record("k2", NOW_MS + 7_000, 10))
        await usage.append(_record("k1", NOW_MS - 60_000, 11))
        later = {"k1": NOW_MS - 5_000, "k2": NOW_MS + 7_000, "k4": None}
        assert await _last_uses(engine, "org_a") == later
        assert await roller.roll() == 2
        assert await _last_uses(engine, "org_a") == later
    finally:
        await engine.dispose()


async def test_migration_0016_fills_last_use_from_the_records_there_were(
    database_url: str,
) -> None:
    engine = open_database(database_url)
    await migrate(engine)
    try:
        await _keys(engine)
        usage, roller = UsageRepository(engine), UsageRoller(engine, lambda: NOW_MS)
        await usage.append(_record("k1", NOW_MS - 3_000, 1))
        await roller.roll()  # folded: the table is made again by the migration below
        await _migrate_to(engine, "0015", down=True)
        await usage.append(_record("k2", NOW_MS - 2_000, 2))  # past the watermark
        await _migrate_to(engine, "head")
        async with engine.begin() as conn:
            await conn.execute(delete(usage_records).where(usage_records.c.key_id == "k1"))
        assert await _last_uses(engine, "org_a") == {
            "k1": NOW_MS - 3_000,
            "k2": NOW_MS - 2_000,
            "k4": None,
        }
        assert await roller.roll() == 1  # k2's record, counted again: the same maximum
        assert (await _last_uses(engine, "org_a"))["k2"] == NOW_MS - 2_000
    finally:
        await engine.dispose()
