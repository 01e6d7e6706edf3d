"""Opening the database (store/database.py): a SQLite database holds key hashes, sealed
credentials and every organization's usage, so its files are the owner's alone (0600)
whatever the umask, in the data directory (itself 0700) or wherever the URL points."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from openmaas.platform import open_platform
from openmaas.settings import Settings
from openmaas.store.database import migrate, open_database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The usual umask (022): files are created 0644 unless asked otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def sqlite_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


async def test_the_data_directorys_database_files_are_owner_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", embedded_models=False)
    async with open_platform(settings) as platform:
        await platform.first_run()  # writes: the WAL and its index exist now
        files = sqlite_files(settings.home / "openmaas.db")
        assert [p.name for p in files] == ["openmaas.db", "openmaas.db-wal", "openmaas.db-shm"]
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert mode(settings.home) == 0o700
    for secret in ("secret-key", "admin-key"):
        assert mode(settings.home / secret) == 0o600


async def test_a_database_elsewhere_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "maas.db"
    path.parent.mkdir()
    engine = open_database(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            files = sqlite_files(path)
            assert files and all(mode(p) == 0o600 for p in files)
    finally:
        await engine.dispose()


async def test_an_existing_readable_database_is_made_owner_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", embedded_models=False)
    async with open_platform(settings):
        pass
    files = sqlite_files(settings.home / "openmaas.db")
    for path in files:  # as an earlier version left them
        path.chmod(0o644)
    async with open_platform(settings):
        assert all(mode(p) == 0o600 for p in sqlite_files(settings.home / "openmaas.db"))


async def test_a_write_left_open_on_a_pooled_sqlite_connection_is_rolled_back(
    tmp_path: Path,
) -> None:
    """The pool rolls a SQLite connection back only when a transaction is open on it (to
    save a no-op hand-off per use); one left open behind SQLAlchemy's back, by the driver
    itself, is still rolled back: its row is gone and the write lock is free again."""
    engine = open_database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (a INTEGER)"))
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute("INSERT INTO t VALUES (1)")  # SQLAlchemy does not know
            assert raw.in_transaction
        other = open_database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        try:
            async with other.begin() as conn:  # the lock is free: this does not wait 5 s
                await conn.execute(text("INSERT INTO t VALUES (2)"))
        finally:
            await other.dispose()
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT a FROM t"))).scalars().all() == [2]
    finally:
        await engine.dispose()
