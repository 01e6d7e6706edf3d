"""One server per database (store/instance.py): a second server is refused while the first
lives, and the lock goes with the process (here: with its release)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from openmaas.core.errors import ConfigurationError
from openmaas.store.database import open_database
from openmaas.store.instance import acquire_server_lock


async def _second_is_refused_until_the_first_lets_go(url: str) -> None:
    first_engine, second_engine = open_database(url), open_database(url)
    try:
        first = await acquire_server_lock(first_engine)
        with pytest.raises(ConfigurationError, match="Another OpenMaaS server"):
            await acquire_server_lock(second_engine)
        await first.release()
        second = await acquire_server_lock(second_engine)
        await second.release()
    finally:
        await first_engine.dispose()
        await second_engine.dispose()


async def test_sqlite(tmp_path: Path) -> None:
    await _second_is_refused_until_the_first_lets_go(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")


async def test_postgresql(new_pg_database: Callable[[], str]) -> None:
    await _second_is_refused_until_the_first_lets_go(new_pg_database())
