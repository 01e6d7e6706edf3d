"""A throwaway PostgreSQL cluster for tests (a helper, not a test module).

``TestCluster.start()`` runs ``initdb`` once into a fresh temporary directory and starts
``postgres`` on 127.0.0.1 at a free port (its unix socket inside that directory, so the
system's socket directory is never touched), with ``fsync=off``: the data is thrown away.
``new_database()`` creates an empty database and returns its ``postgresql+asyncpg://`` URL.
``stop()`` stops the server and deletes the directory.

PostgreSQL refuses to run as root. Run as root (as in CI's containers), the cluster belongs
to an unprivileged user: ``postgres`` when it exists, else ``nobody``; the commands run as
that user through ``subprocess``'s ``user=``/``group=`` (no ``sudo`` needed).

``unavailable()`` says why the cluster cannot run here (no binaries on PATH, no asyncpg),
or None; the fixture skips the PostgreSQL tests with that reason instead of failing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

BINARIES = ("initdb", "pg_ctl", "postgres")
SUPERUSER = "openmaas"
UNPRIVILEGED = ("postgres", "nobody")


def unavailable() -> str | None:
    """Why no test cluster can run here, or None when it can."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"PostgreSQL server binaries not on PATH: {', '.join(missing)}"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[dev]')"
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return f"running as root and none of the users {UNPRIVILEGED} exists to run PostgreSQL"
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in UNPRIVILEGED:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestCluster:
    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port = 0
        self.startup_seconds = 0.0
        self._user: pwd.struct_passwd | None = None
        self._names = itertools.count(1)
        self._names_lock = threading.Lock()

    # -- running commands as the cluster's owner --

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
            env["HOME"] = str(self.root)
        result = subprocess.run(
            args, env=env, cwd=self.root, capture_output=True, text=True, timeout=60, **kwargs
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
                + self._log_tail()
            )
        return result

    def _log_tail(self) -> str:
        log = self.root / "postgres.log" if self.root else None
        if log is None or not log.exists():
            return ""
        return "\npostgres.log:\n" + log.read_text(errors="replace")[-4000:]

    # -- lifecycle --

    def start(self) -> TestCluster:
        began = time.perf_counter()
        if os.geteuid() == 0:
            self._user = _unprivileged_user()
        self.root = Path(tempfile.mkdtemp(prefix="openmaas-pg-"))
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        data = self.root / "data"
        self._run(
            shutil.which("initdb") or "initdb", "--pgdata", str(data), "--username", SUPERUSER,
            "--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):  # another process may take the free port first
            self.port = _free_port()
            options = " ".join(
                (
                    "-c listen_addresses=127.0.0.1",
                    f"-c port={self.port}",
                    f"-c unix_socket_directories={self.root}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                )
            )
            started = self._run(
                shutil.which("pg_ctl") or "pg_ctl", "start", "--wait", "--timeout", "30",
                "--pgdata", str(data), "--log", str(self.root / "postgres.log"),
                "--options", options, check=attempt == 2,
            )  # fmt: skip
            if started.returncode == 0:
                break
        self.startup_seconds = time.perf_counter() - began
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run(
                    shutil.which("pg_ctl") or "pg_ctl", "stop", "--pgdata",
                    str(self.root / "data"), "--mode", "immediate", "--wait", check=False,
                )  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- databases --

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "test") -> str:
        """Create an empty database; returns its SQLAlchemy URL. Callable from sync code and
        from inside a running event loop alike (it runs on a thread of its own)."""
        with self._names_lock:
            name = f"{prefix}_{next(self._names)}"
        error: list[BaseException] = []

        def create() -> None:
            try:
                asyncio.run(self._create(name))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                error.append(exc)

        thread = threading.Thread(target=create)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return self.url(name)

    async def _create(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, database="postgres"
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
