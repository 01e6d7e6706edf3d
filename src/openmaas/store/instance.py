"""One server per database: a lock held for the server's life and released by the operating
system (or PostgreSQL) when the process dies, even by ``kill -9``.

Crash recovery settles every request left in flight when the server starts; that is right
only if no other live server is serving from the same database. SQLite: an exclusive
``flock`` on ``<database file>.server.lock``. PostgreSQL: a session advisory lock held on a
connection of its own (the server closes it, or its death closes it). The CLI takes no lock:
it may run beside a server.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import ConfigurationError

ADVISORY_LOCK_KEY = 0x6F70656E6D616173  # "openmaas"

BUSY = (
    "Another OpenMaaS server is already serving from this database ({where}). Run one server "
    "per database: crash recovery on start would settle that server's requests in flight."
)


@dataclass
class ServerLock:
    file_descriptor: int | None = None
    connection: AsyncConnection | None = None

    async def release(self) -> None:
        if self.file_descriptor is not None:
            os.close(self.file_descriptor)  # closing drops the flock
            self.file_descriptor = None
        if self.connection is not None:  # the pooled session would keep the lock: unlock
            await self.connection.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
            await self.connection.commit()
            await self.connection.close()
            self.connection = None


async def acquire_server_lock(engine: AsyncEngine) -> ServerLock:
    """Hold the database's server lock, or raise ``ConfigurationError`` if another live
    server holds it."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            return ServerLock()
        path = os.path.abspath(database) + ".server.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigurationError(BUSY.format(where=path)) from None
        return ServerLock(file_descriptor=fd)
    if dialect == "postgresql":
        connection = await engine.connect()
        held = (
            await connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        ).scalar_one()
        await connection.commit()
        if not held:
            await connection.close()
            raise ConfigurationError(BUSY.format(where=f"advisory lock {ADVISORY_LOCK_KEY}"))
        return ServerLock(connection=connection)
    return ServerLock()
