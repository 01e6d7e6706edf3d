"""Child processes of the benchmarks (``gateway.py``, ``ledger.py``): starting them pinned
or not, waiting until they answer, stopping them (and what they started, by id), and the
CPU time of a whole process tree read from ``/proc``: a supervisor, its workers, an engine
host, a database server and its backends all count."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_of(pid: int) -> float:
    """CPU seconds of one process (all its threads, and its children it has waited for)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds of the processes ``roots`` and all their live descendants."""
    pids: set[int] = set()
    for root in roots:
        pids.add(root)
        pids.update(descendants(root))
    return sum(cpu_of(pid) for pid in pids)


@dataclass
class Trees:
    """Process trees measured by their roots' ids: a gateway's supervisor, a PostgreSQL
    postmaster, a Redis server."""

    roots: list[int]

    def cpu_seconds(self) -> float:
        return tree_cpu(self.roots)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """CPU time of the process, its threads and its live descendants (a supervisor, its
        workers, an engine host)."""
        return tree_cpu([self.proc.pid])

    def processes(self) -> int:
        return 1 + len(descendants(self.proc.pid))


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any OpenMaaS or database setting of the caller's
    shell (the benchmark sets its own), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OPENMAAS_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {**env, **extra}


def start(
    name: str, argv: list[str], logdir: Path, cpus: set[int] | None, env: dict[str, str]
) -> Child:
    """``argv`` as a child writing to ``logdir/name.log``, pinned to ``cpus`` (inherited by
    its threads and children) when given."""
    log = logdir / f"{name}.log"
    handle = open(log, "wb")  # noqa: SIM115 (closed with the process)

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=clean_environment(env),
        preexec_fn=pin,
        cwd=str(logdir),
    )
    handle.close()
    return Child(name, proc, log)


def stop(child: Child, timeout: float = 15) -> None:
    """SIGINT (a graceful stop), SIGKILL after ``timeout``; then any descendant it left
    behind, by id."""
    if child.proc.poll() is not None:
        return
    pids = descendants(child.proc.pid)
    child.proc.send_signal(signal.SIGINT)
    try:
        child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait(timeout=5)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_http(child: Child, url: str, timeout: float) -> None:
    """Until ``url`` answers 200; fails when the child exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited; see {child.log}:\n{tail(child.log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready after {timeout:.0f} s; see {child.log}")


def answering_workers(url: str, header: str, want: int, timeout: float) -> int:
    """How many distinct values of ``header`` (a worker's id) new connections to ``url``
    saw, polling until ``want`` of them answered or ``timeout`` passed."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                value = response.headers.get(header)
                if response.status == 200 and value:
                    seen.add(value)
        except OSError:
            time.sleep(0.1)
    return len(seen)


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
