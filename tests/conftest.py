"""Fixtures shared by every test: the manual clock (tests/support/clock.py) and the one
database, opened and migrated by the composition root (``openmaas.platform``).

``database_url`` is SQLite in ``tmp_path``; a module overrides it to run on PostgreSQL
(tests/store/conftest.py's ``new_pg_database``). ``platform`` is what the server and the CLI
build on that database (ledger, accountant, administrative services) with the test's
``clock``; ``database`` is its engine, for tests that need only the tables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.platform import Platform, open_platform
from openmaas.settings import Settings
from tests.support.clock import ManualClock


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
