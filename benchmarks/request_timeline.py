"""Where the time of one priced request goes, step by step, at concurrency 1.

The application (``server/app.py``, its ledger on SQLite) is called directly as an ASGI app,
as ``benchmarks/gc_per_request.py`` calls it: one priced, non-streamed chat request at a
time against the zero-latency upstream of ``benchmarks/gateway.py`` (its own process, on the
other CPU). Marks set around the steps of the request's path (methods wrapped here, in this
process only) give, per request, the time since it arrived at which each step began; the
table shows their medians and each step's share. The baseline, measured in the same run, is
the upstream's own answer (from the request written to its socket to the answer read):
what a relay could not save.

Run once with the ledger's commits durable against power loss (``PRAGMA synchronous=FULL``,
the default: each commit waits for ``fsync``) and once with ``NORMAL`` (durable against a
crash of the process, not of the machine), to show what the ``fsync`` of a commit adds to a
request nobody else's commit shares::

    .venv/bin/python benchmarks/request_timeline.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gc_per_request import (  # noqa: E402
    App,
    call,
    in_process,
    request_body,
    request_headers,
    serving,
)

ARRIVED = "arrival: dispatch, authentication, parsing"
ADMISSION = "admission"
ADMITTED = "admitted: routing, the engine's slot"
UPSTREAM_SENT = "upstream request written"
UPSTREAM_READ = "upstream answer read"
SETTLING = "settlement (the engine closed)"
HANDED = "ledger batch handed to the writer thread"
WRITER_BEGAN = "writer thread: BEGIN, the rows"
COMMIT = "writer thread: COMMIT"
WRITER_DONE = "writer thread done"
SETTLED = "settled, back on the event loop"
SENT = "response sent"
DONE = "request done (its access-log line written)"
STEPS = [
    ARRIVED, ADMISSION, ADMITTED, UPSTREAM_SENT, UPSTREAM_READ, SETTLING, HANDED,
    WRITER_BEGAN, COMMIT, WRITER_DONE, SETTLED, SENT, DONE,
]  # fmt: skip


class Timeline:
    """The marks of the request being measured: (step, seconds since it arrived)."""

    def __init__(self) -> None:
        self.began = 0.0
        self.marks: list[tuple[str, float]] = []

    def start(self) -> None:
        self.began = time.perf_counter()
        self.marks = [(ARRIVED, 0.0)]

    def mark(self, step: str) -> None:
        self.marks.append((step, time.perf_counter() - self.began))


def instrument(timeline: Timeline) -> None:
    """Wrap the steps of the request path (this process only) to mark ``timeline``."""
    from openmaas.engines.upstream.http1 import HttpPool
    from openmaas.serving.gateway import Gateway
    from openmaas.store.writers.sqlite import SqliteWriter

    def around(cls: type, name: str, before: str | None, after: str | None) -> None:
        original = getattr(cls, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                timeline.mark(before)
            try:
                return await original(*args, **kwargs)
            finally:
                if after:
                    timeline.mark(after)

        setattr(cls, name, wrapped)

    around(Gateway, "reserve", ADMISSION, ADMITTED)
    around(HttpPool, "request", UPSTREAM_SENT, UPSTREAM_READ)
    around(Gateway, "finish", SETTLING, None)
    around(SqliteWriter, "call", HANDED, SETTLED)

    def on_thread(name: str) -> None:
        original: Callable[..., Any] = getattr(SqliteWriter, name)

        def wrapped(self: SqliteWriter, *args: Any) -> Any:
            timeline.mark(WRITER_BEGAN)
            self._connection().set_trace_callback(
                lambda sql: timeline.mark(COMMIT) if sql == "COMMIT" else None
            )
            try:
                return original(self, *args)
            finally:
                timeline.mark(WRITER_DONE)

        setattr(SqliteWriter, name, wrapped)

    for name in ("append", "commit_at", "write"):
        on_thread(name)


async def measure(app: App, key: str, requests: int, timeline: Timeline) -> dict[str, float]:
    """The median time (µs since arrival) at which each step began, over ``requests``."""
    headers = request_headers(key)
    body = request_body(False)
    seen: dict[str, list[float]] = {step: [] for step in STEPS}
    for i in range(requests + requests // 10):
        timeline.start()
        if await call(app, headers, body, lambda: timeline.mark(SENT)) != 200:
            raise RuntimeError("a request failed")
        timeline.mark(DONE)
        if i < requests // 10:  # warm-up
            continue
        first: dict[str, float] = {}
        for step, at in timeline.marks:
            first.setdefault(step, at)
        if len(first) == len(STEPS):  # a request whose settlement another's batch carried
            for step, at in first.items():  # has no writer steps of its own: left out
                seen[step].append(at * 1e6)
    return {step: statistics.median(times) for step, times in seen.items() if times}


async def run(args: argparse.Namespace, key: str) -> None:
    from openmaas.server.app import create_app
    from openmaas.settings import Settings

    timeline = Timeline()
    instrument(timeline)
    results: dict[str, dict[str, float]] = {}
    for synchronous in ("FULL", "NORMAL"):
        app = create_app(Settings(sqlite_synchronous=synchronous))
        async with app.router.lifespan_context(app):
            await serving(app, request_headers(key))
            results[synchronous] = await measure(app, key, args.requests, timeline)
    full, normal = results["FULL"], results["NORMAL"]
    answered = SENT  # what the client waits for; the access log comes after
    print("| step begins | FULL: µs since arrival | step µs | share of the answer |", end="")
    print(" NORMAL: µs | step µs |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, step in enumerate(STEPS):
        if i + 1 < len(STEPS):
            took = [t[STEPS[i + 1]] - t[step] for t in (full, normal)]
            share = f"{took[0] / full[answered]:.0%}" if i + 2 < len(STEPS) else "after it"
            line = f"{took[0]:.0f} | {share} | {normal[step]:.0f} | {took[1]:.0f}"
        else:  # after the response: the access log
            line = f"— | — | {normal[step]:.0f} | —"
        print(f"| {step} | {full[step]:.0f} | {line} |")
    for name, timing in results.items():
        upstream = timing[UPSTREAM_READ] - timing[UPSTREAM_SENT]
        total = timing[answered]
        print(
            f"{name}: answered in {total:.0f} µs; the upstream's own answer {upstream:.0f} µs "
            f"(baseline); the answer ÷ the baseline {total / upstream:.2f}; "
            f"the gateway's own {total - upstream:.0f} µs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    in_process("timeline-bench-", lambda key: run(args, key))


if __name__ == "__main__":
    main()
