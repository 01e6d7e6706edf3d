"""Fixtures shared by every test: the manual clock (tests/support/clock.py), the one
database, opened and migrated by the composition root (``openmaas.platform``), and one
throwaway PostgreSQL cluster per session (tests/pg.py).

``database_url`` is SQLite in ``tmp_path``; a module overrides it to run on PostgreSQL
(``new_pg_database``). ``platform`` is what the server and the CLI build on that database
(ledger, accountant, administrative services) with the test's ``clock``; ``database`` is
its engine, for tests that need only the tables. The throwaway Redis server fixtures come
from tests/support/redis.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.platform import Platform, open_platform
from openmaas.settings import Settings
from tests.pg import TestCluster, unavailable
from tests.support.clock import ManualClock

pytest_plugins = ("tests.support.redis",)  # the redis_server fixtures


@pytest.fixture
def clock() -> ManualClock:
    """Time that stands still until the test advances it; a module overrides this fixture
    for another starting time."""
    return ManualClock()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """A data directory of the test's own, no embedded models."""
    return Settings(home=tmp_path / "home", database_url=database_url, embedded_models=False)


@pytest.fixture
async def platform(settings: Settings, clock: ManualClock) -> AsyncIterator[Platform]:
    """The database, migrated, and the services on it, as the CLI opens them."""
    async with open_platform(settings, clock=clock) as opened:
        yield opened


@pytest.fixture
def database(platform: Platform) -> AsyncEngine:
    return platform.database


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[TestCluster]:
    """A PostgreSQL server for the whole session; skips (never fails) where it cannot run."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = TestCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def new_pg_database(pg_cluster: TestCluster) -> Callable[[], str]:
    """``new_pg_database()`` creates an empty database and returns its
    ``postgresql+asyncpg://`` URL; call it once per test for a database of its own."""
    return pg_cluster.new_database
