"""A throwaway ``redis-server`` on loopback for tests, and the fixtures that start it.

``RedisServer().start()`` runs ``redis-server`` on 127.0.0.1 at a free port, in a fresh
temporary directory, with no persistence (``--save ''``, no append-only file): the data is
thrown away. ``stop()`` ends it (the port is kept, so ``start()`` again brings it back where
clients look for it, empty); ``close()`` also deletes the directory.

The ``redis_server`` fixture is one server for the session (tests isolate themselves with a
key prefix of their own: ``redis_prefix``); ``private_redis`` is one for a single test that
may stop and restart it. Where ``redis-server`` is not installed (``make test`` installs it:
scripts/test-services.sh) the tests that need it are skipped, except under CI (``CI`` set),
where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BINARY = "redis-server"


def unavailable() -> str | None:
    """Why no test server can run here, or None when it can."""
    if shutil.which(BINARY) is None:
        return f"{BINARY} is not installed (make test installs it: scripts/test-services.sh)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, data in a temporary directory."""

    def __init__(self, *, unix_socket: bool = False, tls: tuple[Path, Path] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="openmaas-redis-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # Also listening on a Unix socket in its directory (``socket_path``), when asked.
        self.socket_path = self.root / "redis.sock" if unix_socket else None
        # Also on TLS at ``tls_port``, with this certificate and key (no client certificate).
        self.tls = tls
        self.tls_port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisServer:
        """Start it (on the same port as before, if it ran before); returns once it answers."""
        for attempt in range(3):
            if self.port == 0 or attempt > 0:  # first start, or the port was taken meanwhile
                self.port = _free_port()
                self.tls_port = _free_port() if self.tls is not None else 0
            with open(self.root / "redis.log", "ab") as log:
                self.process = subprocess.Popen(
                    [
                        shutil.which(BINARY) or BINARY,
                        "--bind", "127.0.0.1",
                        "--port", str(self.port),
                        "--dir", str(self.root),
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                        *(
                            ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
                            if self.socket_path is not None
                            else []
                        ),
                        *self._tls_arguments(),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            if self._wait(timeout):
                return self
            self._kill()
        raise RuntimeError(f"redis-server did not start:\n{self.log_tail()}")

    def _tls_arguments(self) -> list[str]:
        if self.tls is None:
            return []
        cert, key = self.tls
        return [
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def _wait(self, timeout: float) -> bool:
        """Whether the server answers PING before ``timeout`` (False: it exited)."""
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
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """End the server (its data is gone); ``start()`` brings it back on the same port."""
        self._kill()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def close(self) -> None:
        self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _require() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI the Redis tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the session; share it through ``redis_prefix``."""
    _require()
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests share the session's server safely."""
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis server of this test's own, which it may stop and start again."""
    _require()
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()
