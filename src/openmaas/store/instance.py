"""Many serving processes on one database: each is an *instance* with an id of its own (a
fresh ULID per start) and a liveness lock it holds for its life, which the operating system
(or PostgreSQL) releases when the process dies, even by ``kill -9``.

Every request in flight is written to ``inflight`` with its instance's id. Crash recovery
settles the rows of an instance only while holding that instance's lock: a lock that can be
taken means its owner is dead, and the lock is exclusive, so exactly one survivor (or the
restarted process) recovers a dead instance, however many race for it.

- SQLite: an exclusive ``flock`` on ``<database file>.instances/<instance id>.lock``. The one
  who recovers an instance deletes its lock file; a lock taken on a file that was deleted
  meanwhile is not the instance's lock (someone recovered it already) and is given up.
- PostgreSQL: a session advisory lock on a key derived from the instance id, held on a
  connection of its own (closing it, or the process's death, drops the lock).
- An in-memory SQLite database is seen by this process only: there is nobody to race, and
  any other instance id there is dead.

The CLI takes no lock and recovers nothing: it may run beside any number of servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import ConfigurationError
from openmaas.core.ids import new_request_id

LOCK_SUFFIX = ".lock"
_INSTANCE_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def advisory_key(instance_id: str) -> int:
    """The PostgreSQL advisory lock key of ``instance_id`` (a signed 64-bit integer)."""
    digest = hashlib.blake2b(f"openmaas-instance:{instance_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def lock_directory(engine: AsyncEngine) -> Path | None:
    """Where a SQLite database's instance lock files live (None: not a SQLite file)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(os.path.abspath(database) + ".instances")


@dataclass
class InstanceLock:
    """One instance's liveness lock, held by this process (its own, or a dead one's that it
    is recovering). ``release`` drops it; ``forget`` also deletes the lock file (SQLite)."""

    instance_id: str
    path: Path | None = None
    file_descriptor: int | None = None
    connection: AsyncConnection | None = None

    async def release(self, *, forget: bool = True) -> None:
        if self.file_descriptor is not None:
            if forget and self.path is not None:  # unlink while locked: nobody mistakes a
                with contextlib.suppress(FileNotFoundError):  # later file for this lock
                    self.path.unlink()
            os.close(self.file_descriptor)  # closing drops the flock
            self.file_descriptor = None
        if self.connection is not None:  # a pooled session would keep the lock: unlock
            try:
                await self.connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"),
                    {"key": advisory_key(self.instance_id)},
                )
                await self.connection.commit()
            finally:
                await self.connection.close()
                self.connection = None


class Liveness:
    """This process's instance (its id and liveness lock) on one database, and the way to
    take the lock of another instance, which succeeds only once that instance is dead."""

    def __init__(self, engine: AsyncEngine, own: InstanceLock) -> None:
        self._engine = engine
        self._own = own

    @property
    def instance_id(self) -> str:
        return self._own.instance_id

    @classmethod
    async def start(cls, engine: AsyncEngine, instance_id: str | None = None) -> Liveness:
        """A new instance (a fresh ULID unless given) holding its liveness lock; raises
        ``ConfigurationError`` if another live process holds that id's lock."""
        instance_id = instance_id or new_request_id()
        own = await _try_lock(engine, instance_id, create_directory=True)
        if own is None:
            raise ConfigurationError(f"OpenMaaS instance {instance_id} is already running.")
        return cls(engine, own)

    async def stop(self) -> None:
        """Drop the liveness lock (and its file): this instance is over. Rows it left in
        ``inflight`` (none after a clean drain) are recovered by the next survivor."""
        await self._own.release()

    async def claim(self, instance_id: str) -> InstanceLock | None:
        """The liveness lock of ``instance_id`` if its owner is dead and nobody else is
        recovering it, else None. Never waits. Release it when its rows are recovered."""
        if instance_id == self.instance_id:
            return None
        return await _try_lock(self._engine, instance_id, create_directory=False)

    def lock_files(self) -> list[str]:
        """Instance ids that have a lock file (SQLite), this one's excluded: candidates for
        a sweep that removes the files of instances that died with nothing in flight."""
        directory = lock_directory(self._engine)
        if directory is None:
            return []
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = (n.removesuffix(LOCK_SUFFIX) for n in names if n.endswith(LOCK_SUFFIX))
        return sorted(i for i in found if _INSTANCE_ID.fullmatch(i) and i != self.instance_id)


async def _try_lock(
    engine: AsyncEngine, instance_id: str, *, create_directory: bool
) -> InstanceLock | None:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return await _try_advisory_lock(engine, instance_id)
    directory = lock_directory(engine)
    if directory is None:  # in-memory SQLite (or an unknown dialect): this process alone
        return InstanceLock(instance_id)
    if not _INSTANCE_ID.fullmatch(instance_id):  # never a path outside the directory
        raise ValueError(f"not an instance id: {instance_id!r}")
    if create_directory:
        directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{instance_id}{LOCK_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # no directory: no instance ever ran with lock files here
        return InstanceLock(instance_id)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # alive, or being recovered by another process
    try:
        current = os.stat(path)
    except FileNotFoundError:
        current = None
    if current is None or current.st_ino != os.fstat(fd).st_ino:
        os.close(fd)  # the file was recovered and deleted after we opened it
        return None
    return InstanceLock(instance_id, path=path, file_descriptor=fd)


async def _try_advisory_lock(engine: AsyncEngine, instance_id: str) -> InstanceLock | None:
    connection = await engine.connect()
    try:
        held = (
            await connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(instance_id)}
            )
        ).scalar_one()
        await connection.commit()
    except BaseException:
        await connection.close()
        raise
    if not held:
        await connection.close()
        return None
    return InstanceLock(instance_id, connection=connection)
