"""The ``vllm serve`` process of a managed vLLM engine: started under a guard that ends its
whole process group when the gateway goes away (even by ``kill -9``), watched, stopped."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:  # the engine owns its process; the process reports to it
    from openmaas.engines.vllm import ManagedVllmEngine

HOST = "127.0.0.1"
_EXIT_POLL_S = 0.05  # how often the guard's exit status is looked at
_PROBE_TIMEOUT_S = 5.0  # one health or models request
_LINE_LIMIT = 1024 * 1024  # longer output lines are dropped
TAIL_LINES = 5  # of vLLM's output, quoted in a failure's reason
TAIL_CHARS = 1000
_GUARD_SLACK_S = 5.0  # beyond the grace, how long the guard may take before it is killed

log = logging.getLogger("openmaas.engines.vllm")
process_log = logging.getLogger("openmaas.engines.vllm.process")  # vLLM's own output, at debug

# -- the guard ------------------------------------------------------------------------------
# Run as ``python -I -c _GUARD GRACE PROGRAM ARGS...`` with a pipe on stdin. It starts the
# program in a process group of its own and ends that group (SIGTERM, then SIGKILL after
# GRACE seconds) when stdin reaches EOF (the gateway stopped the engine or died), on
# SIGTERM, or, SIGKILL only, when the program exits by itself (its workers may survive it).
# Its exit status is the program's (128 + N for a signal N; 127: the program did not run).
_GUARD = r"""
import os, signal, subprocess, sys, threading, time
grace = float(sys.argv[1])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, process_group=0)
except OSError as exc:
    print(f"cannot run {sys.argv[2]!r}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
def watch_parent():
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()
threading.Thread(target=watch_parent, daemon=True).start()
def exited():
    return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
def kill(sig):
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
while not exited() and not stop.wait(0.05):
    pass
if not exited():
    kill(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not exited() and time.monotonic() < deadline:
        time.sleep(0.05)
kill(signal.SIGKILL)
code = child.wait()
os._exit(code if code >= 0 else 128 - code)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _exit_code(proc: asyncio.subprocess.Process) -> int:
    """``proc``'s exit status as soon as it exits. (``proc.wait()`` also waits for its
    pipes to close, which a surviving vLLM worker would keep open.)"""
    while proc.returncode is None:
        await asyncio.sleep(_EXIT_POLL_S)
    return proc.returncode


def _kill_session(sid: int) -> None:
    """SIGKILL every process in session ``sid`` (Linux ``/proc``; elsewhere nothing): what
    is left of a vLLM whose guard was killed. The guard led that session, so a process still
    in it is vLLM or one of its workers (the id stays reserved while any member lives)."""
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields_ = stat.rpartition(")")[2].split()  # state ppid pgrp session ...
        if len(fields_) > 3 and fields_[3] == str(sid):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
                log.warning("killed a process left by vLLM", extra={"pid": int(entry.name)})


def describe_exit(code: int) -> str:
    if code < 0:
        return f"vLLM's guard was killed by {_signal_name(-code)}"
    if code == 127:
        return "vLLM could not be run"
    if 128 < code < 128 + signal.NSIG:
        return f"vLLM was killed by {_signal_name(code - 128)}"
    return f"vLLM exited with code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class VllmProcess:
    """One ``vllm serve`` under its guard: output relayed to the log, health, stop."""

    def __init__(self, owner: ManagedVllmEngine, argv: list[str], port: int, key: str | None):
        self.owner = owner
        self.argv = argv
        self.port = port
        self.key = key
        self.base = f"http://{HOST}:{port}"
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self.exited: asyncio.Task[int] | None = None
        self._client: httpx.AsyncClient | None = None

    async def spawn(self, env: dict[str, str], grace: float) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            _GUARD,
            repr(float(grace)),
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        self._proc = proc
        self.pid = proc.pid
        self._relay = asyncio.create_task(self._relay_output())
        self.exited = asyncio.create_task(_exit_code(proc))
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base,
            headers=headers,
            timeout=_PROBE_TIMEOUT_S,
            trust_env=False,
            follow_redirects=False,
        )

    async def _relay_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        extra = {"model": self.owner.model, "deployment": self.owner.deployment, "pid": self.pid}
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:  # a line over the limit: dropped (the buffer was cleared)
                continue
            if not raw:
                return
            line = self.scrub(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.tail.append(line)
                process_log.debug("%s", line, extra=extra)

    def scrub(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text

    def last_words(self) -> str:
        text = " | ".join(self.tail)
        return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]

    async def healthy(self) -> bool:
        """``GET /health`` answers 200."""
        assert self._client is not None
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def serves(self, name: str) -> bool:
        """``GET /v1/models`` lists ``name``."""
        assert self._client is not None
        try:
            response = await self._client.get("/v1/models")
            if response.status_code != 200:
                return False
            ids = {item.get("id") for item in response.json().get("data", [])}
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return False
        return name in ids

    async def stop(self, grace: float) -> None:
        """End the guard, which ends vLLM's process group; SIGKILL the guard if it hangs."""
        proc, exited = self._proc, self.exited
        if proc is not None and exited is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            done, _ = await asyncio.wait({exited}, timeout=grace + _GUARD_SLACK_S)
            if not done:
                log.error("vLLM's guard did not stop; killing it", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await exited
        if proc is not None and proc.returncode is not None and proc.returncode < 0:
            # The guard was killed before it could end vLLM's group: end its session.
            await asyncio.to_thread(_kill_session, proc.pid)
        await self.close()

    async def close(self) -> None:
        """Release what is left once the guard has exited (the relay, pipes, the client)."""
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        if self._relay is not None:
            # Output stops when the group is gone; a worker that left the group may still
            # hold the pipe open: then stop reading.
            done, _ = await asyncio.wait({self._relay}, timeout=1.0)
            if not done:
                self._relay.cancel()
                await asyncio.gather(self._relay, return_exceptions=True)
        if self.exited is not None and proc is not None and proc.returncode is not None:
            await asyncio.gather(self.exited, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
