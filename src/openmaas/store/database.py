"""Opening the database and bringing its schema up to date."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # the database file and its companions

log = logging.getLogger("openmaas.database")


def open_database(url: str, *, sqlite_synchronous: str = "FULL") -> AsyncEngine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url)
    engine = create_async_engine(url, pool_reset_on_return=None)  # see _reset_sqlite
    _owner_only(engine.url.database)
    _tune_sqlite(engine, sqlite_synchronous)
    return engine


def _owner_only(database: str | None) -> None:
    """Make a SQLite database file the owner's alone (0600): it holds key hashes, sealed
    credentials and every organization's usage. SQLite creates it under the umask (0644 as
    a rule) and gives its -wal and -shm files the database file's mode, so the file is
    created here first, and one an earlier version left readable by others is narrowed,
    companions included. A directory that does not exist is left to SQLite to report."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or a URI SQLite opens by itself
    path = Path(database)
    if not path.parent.is_dir():
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for companion in (Path(f"{path}{suffix}") for suffix in SQLITE_SUFFIXES):
            if companion.exists() and stat.S_IMODE(companion.stat().st_mode) & 0o077:
                companion.chmod(stat.S_IMODE(companion.stat().st_mode) & 0o700)
    except OSError as exc:  # not ours to change (another owner, a read-only mount)
        log.warning("could not make %s readable by its owner only: %s", path, exc)


def _tune_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "reset")
    def _reset_sqlite(_dbapi_connection, record, state) -> None:  # type: ignore[no-untyped-def]
        """A connection going back to the pool is rolled back only when a transaction is
        open on it. SQLite opens one only for a write, and a write is always committed or
        rolled back by its ``begin()`` block, so the pool's usual rollback after every use
        was a no-op that cost a hand-off to the driver's thread each time."""
        driver = record.driver_connection
        if driver is not None and not state.terminate_only and driver.in_transaction:
            _dbapi_connection.rollback()


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration (Alembic, run on this engine's connection)."""
    from alembic import command
    from alembic.config import Config

    def upgrade(sync_connection) -> None:  # type: ignore[no-untyped-def]
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = sync_connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
    return True
