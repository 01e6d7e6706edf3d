"""The Redis limiter's cost per request: admissions/s, Redis server CPU and client CPU.

Each request is what a gateway does around an engine call for an organization on a tier,
without the engine or HTTP: ``RedisLimiter.admit`` then ``RedisLimiter.settle`` (two Lua
scripts), with RPM, TPM and concurrency limits on both the key's and the organization's
scope (six counters per request), high enough that nothing is refused.

Time is simulated: the run's requests are spread evenly over ``--span`` seconds of the
limiter's clock (120 s by default, two windows), so the counters see what steady traffic
does to them, every bucket of the 60 s window in use, however fast the run goes. A
throwaway ``redis-server`` on loopback (``services.py``) serves the run; its CPU time is
read from ``/proc/<pid>/stat`` before and after each round (so it is in clock ticks: run
enough requests for a few seconds of it), the client's with ``time.process_time``.

For each concurrency (``--concurrency``: coroutines admitting and settling back to back),
``--rounds`` rounds of ``--requests`` requests on fresh counters; the table shows the median
round.

    .venv/bin/python benchmarks/redis_limiter.py              # concurrency 1 and 32
    .venv/bin/python benchmarks/redis_limiter.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from processes import cpu_of
from services import RedisServer, redis_unavailable

ROOT = Path(__file__).resolve().parent.parent
START_MS = 1_700_000_000_000
RESERVE = 1_224  # tokens reserved per request (prompt + max output)
ACTUAL = 500  # tokens used: most of the reservation is refunded at settlement


@dataclass(frozen=True)
class Round:
    rate: float  # requests (admission + settlement) per second
    redis_us: float  # Redis server CPU per request
    client_us: float  # this process's CPU per request


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


async def one_round(server: RedisServer, requests: int, concurrency: int, span_ms: int) -> Round:
    from openmaas.billing.limiter_redis import RedisLimiter
    from openmaas.core.tiers import Limits, Tier, scopes_for

    big = 10**12
    tier = Tier("bench", Limits(rpm=big, tpm=big, concurrency=10**6))
    scopes = scopes_for(org_id="o", org_tier=tier, key_id="k", key_tier=tier)
    limiter = RedisLimiter(server.url, prefix=f"bench:{uuid.uuid4().hex[:8]}:", lease_ms=10**9)
    step = span_ms / requests
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < requests:
            now = START_MS + int(issued * step)
            issued += 1
            admission = await limiter.admit(scopes, "m", RESERVE, now)
            await limiter.settle(admission, ACTUAL, START_MS + int(issued * step))

    try:
        await limiter.health()  # connected before the clock starts
        pid = server.pid
        redis_before, client_before = cpu_of(pid), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        redis_cpu, client_cpu = cpu_of(pid) - redis_before, time.process_time() - client_before
    finally:
        await limiter.aclose()
    return Round(requests / elapsed, redis_cpu / requests * 1e6, client_cpu / requests * 1e6)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 short round")
    parser.add_argument("--concurrency", default="1,32", help="coroutines, e.g. 1,32")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--span", type=float, default=120.0, help="simulated seconds per round")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 1, 2_000
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def measure(args: argparse.Namespace) -> int:
    reason = redis_unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 1
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10
    ).stdout.split()
    print(
        f"commit {_commit()}, python {platform.python_version()}, "
        f"{' '.join(version[:3])}, {os.cpu_count()} CPUs; "
        f"{args.rounds} round(s) of {args.requests} requests over {args.span:g} simulated s "
        "(median round); load average at the start: %.2f %.2f %.2f" % os.getloadavg()
    )
    print(
        "each request: RedisLimiter.admit + RedisLimiter.settle; RPM, TPM and concurrency "
        "on the key and the organization (6 counters)\n"
    )
    print("| concurrency | requests/s | Redis CPU µs/request | client CPU µs/request |")
    print("|---:|---:|---:|---:|")
    server = RedisServer().start()
    try:
        for concurrency in args.concurrency:
            rounds = [
                asyncio.run(one_round(server, args.requests, concurrency, int(args.span * 1e3)))
                for _ in range(args.rounds)
            ]
            print(
                f"| {concurrency} | {statistics.median(r.rate for r in rounds):,.0f} "
                f"| {statistics.median(r.redis_us for r in rounds):.0f} "
                f"| {statistics.median(r.client_us for r in rounds):.0f} |",
                flush=True,
            )
    finally:
        server.stop()
    one, five, fifteen = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) at the end: {one:.2f} {five:.2f} {fifteen:.2f}")
    return 0


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "src"))  # the limiter of this checkout
    return measure(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
