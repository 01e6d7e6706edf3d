"""CPU per upstream request of the engines' HTTP client (``engines/upstream/http1.py``)
against aiohttp's, the client it replaced, measured in the same run.

One process (pinned to one CPU) sends ``--requests`` chat requests, ``--concurrency`` at a
time over keep-alive connections, to the zero-latency upstream of ``benchmarks/gateway.py``
(its own process, on the other CPU), reads each answer whole (``json``) or as it arrives
(``stream``: the SSE events of a short answer), and reports the client's CPU time per
request and requests/s. aiohttp is the baseline (the ``bench`` extra installs it)::

    .venv/bin/python benchmarks/upstream_client.py [--requests 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import free_port, start, stop, wait_http  # noqa: E402
from rawhttp import UPSTREAM_MODEL, run_upstream, use_uvloop  # noqa: E402

from openmaas.engines.upstream.http1 import HttpPool, Origin  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
HEADERS = {"Authorization": "Bearer bench", "Content-Type": "application/json"}

Send = Callable[[bytes], Awaitable[int]]  # a body -> the answer's length


def body(stream: bool) -> bytes:
    request = {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": stream,
    }
    if stream:
        request["stream_options"] = {"include_usage": True}
    return orjson.dumps(request)


async def drain(readany: Callable[[], Awaitable[bytes]]) -> int:
    """The length of a body read as it arrives, to its end."""
    size = 0
    while part := await readany():
        size += len(part)
    return size


async def measure(send: Send, data: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs a request, requests/s) of ``requests`` sends after a warm-up."""
    left = 0

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if not await send(data):
                raise RuntimeError("an empty answer")

    left = concurrency * 20
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    left = requests
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1e6, requests / wall


async def with_http1(port: int, stream: bool, args: argparse.Namespace) -> tuple[float, float]:
    pool = HttpPool(
        Origin("127.0.0.1", port), limit=args.concurrency, connect_timeout=10, headers=HEADERS
    )
    accept = {"Accept": "text/event-stream" if stream else "application/json"}

    async def send(data: bytes) -> int:
        response = await pool.request("POST", "/v1/chat/completions", data, accept)
        try:
            return await drain(response.readany)
        finally:
            response.release()

    try:
        return await measure(send, body(stream), args.requests, args.concurrency)
    finally:
        await pool.close()


async def with_aiohttp(port: int, stream: bool, args: argparse.Namespace) -> tuple[float, float]:
    import aiohttp

    session = aiohttp.ClientSession(
        headers=HEADERS,
        connector=aiohttp.TCPConnector(limit=args.concurrency),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    accept = {"Accept": "text/event-stream" if stream else "application/json"}

    async def send(data: bytes) -> int:
        response = await session.post(url, data=data, headers=accept, allow_redirects=False)
        try:
            return await drain(response.content.readany)
        finally:
            response.release()

    try:
        return await measure(send, body(stream), args.requests, args.concurrency)
    finally:
        await session.close()


def main() -> None:
    if sys.argv[1:2] == ["_upstream"]:
        run_upstream(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        sys.exit("the baseline needs aiohttp: pip install -e '.[bench]'")
    cpus = sorted(os.sched_getaffinity(0))
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))
    port = free_port()
    upstream_cpus = {cpus[0]} if len(cpus) > 1 else None
    upstream = start(
        "upstream-client-bench",
        [sys.executable, SCRIPT, "_upstream", str(port)],
        workdir,
        upstream_cpus,
        {},
    )
    try:
        wait_http(upstream, f"http://127.0.0.1:{port}/v1/models", 30)
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[-1]})
        use_uvloop()
        print("| mode | client | CPU µs/request | req/s | CPU ÷ aiohttp's |")
        print("|---|---|---:|---:|---:|")
        for mode in ("json", "stream"):
            for _ in range(args.rounds):
                base, base_rps = asyncio.run(with_aiohttp(port, mode == "stream", args))
                ours, ours_rps = asyncio.run(with_http1(port, mode == "stream", args))
                print(f"| {mode} | aiohttp | {base:.1f} | {base_rps:,.0f} | 1.000 |")
                print(f"| {mode} | http1 | {ours:.1f} | {ours_rps:,.0f} | {ours / base:.3f} |")
    finally:
        stop(upstream)


if __name__ == "__main__":
    main()
