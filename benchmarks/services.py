"""Throwaway servers on loopback for the benchmarks: a PostgreSQL cluster started from the
binaries on ``PATH`` (``initdb``, ``pg_ctl``, ``postgres``) and a ``redis-server``.

They follow the tests' helpers (``tests/pg.py``, ``tests/support/redis.py``) with two
differences that matter when measuring: PostgreSQL keeps its **durable defaults** (``fsync``,
``synchronous_commit`` and full-page writes on: a commit waits for its WAL flush, as
SQLite's ``synchronous=FULL`` does; the tests turn them off), and each server can be pinned
to a set of CPUs. Run as root, the cluster belongs to the user ``postgres`` (or ``nobody``):
PostgreSQL refuses to run as root. Both live in a temporary directory, deleted at ``stop()``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from processes import free_port

PG_BINARIES = ("initdb", "pg_ctl", "postgres")
PG_SUPERUSER = "openmaas"


def postgres_unavailable() -> str | None:
    """Why no cluster can run here, or None."""
    missing = [name for name in PG_BINARIES if shutil.which(name) is None]
    if missing:
        return f"PostgreSQL server binaries not on PATH: {', '.join(missing)}"
    if os.geteuid() == 0 and _unprivileged() is None:
        return "running as root and neither the user postgres nor nobody exists"
    return None


def _unprivileged() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class PostgresCluster:
    """``initdb`` into a fresh directory, ``postgres`` on 127.0.0.1 at a free port (its Unix
    socket in that directory), durable settings unless ``durable=False``."""

    def __init__(self, cpus: set[int] | None = None, durable: bool = True) -> None:
        self.cpus = cpus
        self.durable = durable
        self.root: Path | None = None
        self.port = 0
        self._owner = _unprivileged() if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if self._owner is not None:
            kwargs.update(user=self._owner.pw_uid, group=self._owner.pw_gid, extra_groups=[])
            env["HOME"] = str(self.root)
        cpus = self.cpus

        def pin() -> None:  # the postmaster and every backend inherit it
            if cpus:
                os.sched_setaffinity(0, cpus)

        result = subprocess.run(
            args, env=env, cwd=self.root, capture_output=True, text=True, timeout=120,
            preexec_fn=pin, **kwargs,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
                + self.log_tail()
            )
        return result

    def log_tail(self) -> str:
        log = self.root / "postgres.log" if self.root else None
        if log is None or not log.exists():
            return ""
        return "\npostgres.log:\n" + log.read_text(errors="replace")[-4000:]

    def start(self) -> PostgresCluster:
        self.root = Path(tempfile.mkdtemp(prefix="openmaas-bench-pg-"))
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        data = self.root / "data"
        self._run(
            "initdb", "--pgdata", str(data), "--username", PG_SUPERUSER, "--auth", "trust",
            "--encoding", "UTF8", "--locale", "C", "--no-sync",
        )  # fmt: skip
        settings = [
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={self.root}",
            "max_connections=400",
        ]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        for attempt in range(3):  # another process may take the free port first
            self.port = free_port()
            options = " ".join(f"-c {s}" for s in [*settings, f"port={self.port}"])
            started = self._run(
                "pg_ctl", "start", "--wait", "--timeout", "60", "--pgdata", str(data),
                "--log", str(self.root / "postgres.log"), "--options", options,
                check=attempt == 2,
            )  # fmt: skip
            if started.returncode == 0:
                break
        return self

    @property
    def postmaster_pid(self) -> int:
        assert self.root is not None
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "stop", "--pgdata", str(self.root / "data"), "--mode", "immediate",
                    "--wait", check=False,
                )  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


async def create_database(url: str) -> None:
    """Create the (empty) database named by the ``postgresql+asyncpg://`` URL ``url``,
    connecting to the cluster's ``postgres`` database with asyncpg."""
    import asyncpg

    head, name = url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)
    conn = await asyncpg.connect(f"{head}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def redis_unavailable() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return None


class RedisServer:
    """``redis-server`` on 127.0.0.1 at a free port, no persistence, in a temporary
    directory."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.cpus = cpus
        self.root = Path(tempfile.mkdtemp(prefix="openmaas-bench-redis-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisServer:
        cpus = self.cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        for _ in range(3):
            self.port = free_port()
            with open(self.root / "redis.log", "ab") as log:
                self.process = subprocess.Popen(
                    [
                        shutil.which("redis-server") or "redis-server",
                        "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
                        "--save", "", "--appendonly", "no", "--daemonize", "no",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=pin,
                )  # fmt: skip
            if self._answers(timeout):
                return self
            self._kill()
        raise RuntimeError("redis-server did not start:\n" + self.log_tail())

    def _answers(self, timeout: float) -> bool:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False  # e.g. the port was taken in between
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
