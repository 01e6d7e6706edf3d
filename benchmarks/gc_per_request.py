"""What Python's garbage collector costs a priced request, and what a request leaves to it.

The application (``server/app.py``, its ledger on SQLite) is called directly as an ASGI
app, without uvicorn or a client socket, so that the CPU measured is the gateway's own:
priced chat requests, ``--concurrency`` at a time, against the zero-latency upstream of
``benchmarks/gateway.py`` (its own process, on the other CPU). The heap is set up as
``openmaas serve`` sets it (``server/processes.py``: frozen after start-up, the young
generation collected every 10,000 allocations). For each mode, alternately, with the
collector on and off (the baseline: ``gc.disable()``), it reports the event loop thread's
CPU per request; with it on, the collections (``gc.callbacks``): how many, their time per
request, and the objects they found unreachable per request (a reference cycle a request
leaves behind: ``tests/server/test_reference_cycles.py`` checks there is none)::

    .venv/bin/python benchmarks/gc_per_request.py [--requests 10000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import OM_PRICED, seeded_home  # noqa: E402
from gateway import SCRIPT as GATEWAY_SCRIPT  # noqa: E402
from processes import clean_environment, free_port, start, stop, wait_http  # noqa: E402
from rawhttp import MESSAGES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Collections:
    """The collector's work while counted: collections, seconds, objects found unreachable."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.collected = 0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.count += 1
        self.seconds += time.perf_counter() - self._began
        self.collected += info["collected"]


def request_body(stream: bool) -> bytes:
    payload: dict[str, Any] = {"model": OM_PRICED, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return json.dumps(payload, separators=(",", ":")).encode()


async def call(
    app: App,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    on_sent: Callable[[], None] | None = None,
) -> int:
    """One request through the ASGI app; its status (the body is read and dropped).
    ``on_sent`` is called when the response's last body part is sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    answered = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()
            if on_sent is not None:
                on_sent()

    await app(scope, receive, send)
    answered.set()
    return status


def request_headers(key: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
    ]


async def serving(app: Any, headers: list[tuple[bytes, bytes]]) -> None:
    """Once ``app`` (started) answers a priced request (its upstream deployment's probe has
    run), with the heap settled as ``openmaas serve`` settles it."""
    from openmaas.server.processes import settle_heap

    await app.state.openmaas.platform.catalog.wait_loaded()
    for _ in range(300):
        if await call(app, headers, request_body(False)) == 200:
            break
        await asyncio.sleep(0.1)
    settle_heap()


async def measure(
    app: App, headers: list[tuple[bytes, bytes]], body: bytes, requests: int, concurrency: int
) -> tuple[float, int]:
    """(event-loop thread CPU µs a request, requests answered) of ``requests`` calls."""
    each = max(1, requests // concurrency)
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for _ in range(each):
            if await call(app, headers, body) != 200:
                failed += 1

    began = time.thread_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = each * concurrency
    if failed:
        raise RuntimeError(f"{failed} of {done} requests failed")
    return (time.thread_time() - began) / done * 1e6, done


async def run(args: argparse.Namespace, key: str) -> None:
    from openmaas.server.app import create_app
    from openmaas.settings import Settings

    app = create_app(Settings())
    headers = request_headers(key)
    async with app.router.lifespan_context(app):
        await serving(app, headers)
        print("| mode | collector | CPU µs/request | collections | GC µs/request |", end="")
        print(" unreachable objects/request | CPU ÷ collector off |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for mode in ("json", "stream"):
            body = request_body(mode == "stream")
            await measure(app, headers, body, 1_000, args.concurrency)  # warm-up
            for _ in range(args.rounds):
                gc.disable()
                off, _ = await measure(app, headers, body, args.requests, args.concurrency)
                gc.enable()
                gc.collect()
                counted = Collections()
                gc.callbacks.append(counted)
                on, done = await measure(app, headers, body, args.requests, args.concurrency)
                gc.callbacks.remove(counted)
                print(f"| {mode} | off | {off:.1f} | — | — | — | 1.000 |")
                print(
                    f"| {mode} | on | {on:.1f} | {counted.count} | "
                    f"{counted.seconds / done * 1e6:.1f} | {counted.collected / done:.1f} | "
                    f"{on / off:.3f} |",
                    flush=True,
                )


def in_process(prefix: str, body: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """Run ``body(key)`` on uvloop in this process, pinned to the last CPU, with the
    gateway benchmark's upstream started on the first and a data directory seeded for it
    (``key``: a priced key); OpenMaaS's settings in this process's environment, its access
    log to a file. The harness of this benchmark and ``request_timeline.py``."""
    cpus = sorted(os.sched_getaffinity(0))
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    python = [sys.executable, GATEWAY_SCRIPT]
    upstream_cpus = {cpus[0]} if len(cpus) > 1 else None
    upstream = start("upstream", [*python, "_upstream", str(port)], workdir, upstream_cpus, {})
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(upstream, f"{url}/models", 30)
        env, keys = seeded_home(workdir, workdir / "openmaas", url)
        os.environ.update(clean_environment(env))
        sys.path.insert(0, str(ROOT / "src"))
        from openmaas.server.telemetry.logs import configure_logging

        configure_logging("INFO")
        # The access log as a serving process writes it, to a file here (not the terminal).
        import logging

        log_file = (workdir / "access.log").open("w")
        logging.getLogger().handlers[0].setStream(log_file)  # type: ignore[attr-defined]
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[-1]})
        import uvloop

        uvloop.run(body(keys["plain"]))
    finally:
        stop(upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    in_process("gc-bench-", lambda key: run(args, key))


if __name__ == "__main__":
    main()
