"""Running servers in processes: uvicorn's server that exits 0 after a drained shutdown,
and the engine host as a child process of ``openmaas serve --workers N``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn

from openmaas.core.errors import SetupError
from openmaas.engines.hosted import BASE_URL, HEALTH_PATH
from openmaas.settings import Settings

log = logging.getLogger("openmaas.server")

_READY_POLL_S = 0.1
_STOP_SLACK_S = 10.0  # beyond the grace, how long a stopping host may take before SIGKILL


class StopFlag:
    """Set by a signal handler, waited on by the main thread. Unlike ``threading.Event``,
    ``set`` takes no lock: a second signal arriving while the first one's handler runs (two
    Ctrl-C, or SIGTERM sent to a process and to its group) cannot deadlock the handler on a
    lock its own thread holds. ``wait`` looks at the flag every ``poll`` seconds."""

    def __init__(self, poll: float = 0.05) -> None:
        self._set = False
        self._poll = poll

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """True once set; False when ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._poll, left))
        return True


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700).
Requests allocate many short-lived objects; collecting them 14 times less often cost less
CPU per request in the benchmarks (docs/benchmarks.md) and bounds the garbage waiting."""


def settle_heap() -> None:
    """Once the server has started: collect, then freeze what is left (modules, the
    application, the catalog) out of the collector's sight, so that a full collection no
    longer walks the objects of start-up, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class QuietServer(uvicorn.Server):
    """uvicorn's server; a drained shutdown after SIGTERM or SIGINT exits 0 instead of
    re-raising the signal. ``on_exit`` is called when shutdown begins; ``on_started`` is
    run as a task once the server listens and the application has started."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_exit: Callable[[], None] | None = None,
        on_started: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._on_started = on_started
        self._started_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and threading.current_thread() is threading.main_thread():
            settle_heap()  # a serving process's own (not a server a test runs in a thread)
        if self.started and self._on_started is not None and not self.should_exit:
            self._started_task = asyncio.create_task(self._on_started())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._started_task is not None:
            self._started_task.cancel()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._on_exit is not None:
            self._on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class ChildProcess:
    """``python -m MODULE --settings-stdin`` as a child: the settings go in on its stdin,
    which stays open while this process lives. Its end (this process stopped, or died even
    by ``kill -9``) stops the child (:func:`stop_at_eof`): no orphans."""

    def __init__(
        self,
        module: str,
        settings: Settings,
        name: str,
        pass_fds: tuple[int, ...] = (),
        environment: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self._environment = environment  # added to this process's environment
        self.name = name
        self._settings_line = settings.model_dump_json().encode() + b"\n"
        self._pass_fds = pass_fds
        self._args = [f"--fd={fd}" for fd in pass_fds]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--settings-stdin", *self._args],
            stdin=subprocess.PIPE,
            pass_fds=self._pass_fds,
            env={**os.environ, **self._environment} if self._environment else None,
        )
        assert proc.stdin is not None
        proc.stdin.write(self._settings_line)
        proc.stdin.flush()
        self._proc = proc
        log.info(f"{self.name} started", extra={"pid": proc.pid})

    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self._proc is None else self._proc.poll()

    def terminate(self) -> None:
        """SIGTERM: the child drains, then exits."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        """Wait for the exit; SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error(f"{self.name} did not stop; killing it", extra={"pid": proc.pid})
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def stop(self, grace: float) -> None:
        self.terminate()
        self.wait(grace + _STOP_SLACK_S)


class EngineHostProcess(ChildProcess):
    """The engine host (``server/enginehost.py``) as a child."""

    def __init__(self, settings: Settings, socket: Path) -> None:
        super().__init__("openmaas.server.enginehost", settings, "engine host")
        self.socket = socket

    def wait_ready(self, stop: StopFlag) -> bool:
        """Wait until every model of the host is loaded (or failed); False when ``stop``
        is set first. ``SetupError`` when the host exits instead."""
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(base_url=BASE_URL, transport=transport, timeout=5.0) as client:
            while not stop.is_set():
                code = self.exit_code()
                if code is not None:
                    raise SetupError(f"The engine host exited with code {code} while starting.")
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    if client.get(HEALTH_PATH).json()["status"] == "ready":
                        return True
                stop.wait(_READY_POLL_S)
        return False


def read_settings_line() -> Settings:
    """The settings a supervisor wrote on our stdin (one JSON line; no environment)."""
    return Settings.model_validate_json(sys.stdin.buffer.readline())


def stop_at_eof() -> None:
    """SIGTERM this process (a drained shutdown) when stdin ends: the supervisor that holds
    it open stopped or died."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()
