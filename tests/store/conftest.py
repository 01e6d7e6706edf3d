"""Fixtures of the store tests: one throwaway PostgreSQL cluster per session (tests/pg.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.pg import TestCluster, unavailable


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
