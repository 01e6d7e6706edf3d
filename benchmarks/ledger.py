"""Settled requests/s through admission and settlement, on SQLite: what billing costs a node.

Each request is what the gateway does around an engine call, without the engine or HTTP:
``Accountant.admit`` (price lookup, worst-case hold on the ledger plus its ``inflight`` row)
then ``Accountant.finish`` with a ``UsageRecord`` (settlement and the usage record in one
transaction), with a fake prompt count (no tokenizer).

- **priced**: the model has a price, so each request is 2 ledger transactions (hold,
  settle + usage record);
- **baseline**: the same loop for an unpriced model, so each request is 1 transaction
  (the usage record alone).

Both run in the same process on the same database file, alternating (baseline then priced,
priced then baseline, ...), at each concurrency (coroutines admitting and finishing
requests back to back on one event loop). The table shows the median of the rounds and the
ratio priced / baseline. With ``--synchronous FULL,NORMAL`` each mode gets its own database
(``PRAGMA synchronous``, ``OPENMAAS_SQLITE_SYNCHRONOUS``).

    .venv/bin/python benchmarks/ledger.py [--requests 1000] [--rounds 3]
                                          [--concurrency 1,16] [--synchronous FULL,NORMAL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter
from openmaas.core.clock import SystemClock
from openmaas.core.ids import new_request_id
from openmaas.core.ledger_events import TopUp
from openmaas.core.prices import ModelPrice
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord
from openmaas.store.billing import set_price
from openmaas.store.database import migrate, open_database
from openmaas.store.ledger import LedgerStore
from openmaas.store.repositories import OrganizationRepository

PRICED = "bench-priced"
UNPRICED = "bench-unpriced"
PROMPT_TOKENS = 200
COMPLETION_TOKENS = 300
MAX_TOKENS = 1024
PRICE = ModelPrice(PRICED, input_per_million=2_000_000, cached_input_per_million=500_000,
                   output_per_million=8_000_000)  # fmt: skip


async def prompt_count() -> int:
    return PROMPT_TOKENS


async def one_request(billing: Accountant, principal: Principal, model: str) -> None:
    request_id = new_request_id()
    started = time.perf_counter()
    ticket = await billing.admit(
        principal,
        model,
        "chat.completions",
        request_id,
        count_prompt=prompt_count,
        max_tokens=MAX_TOKENS,
        context_length=None,
    )
    record = UsageRecord(
        request_id,
        principal.key_id,
        principal.org_id,
        model,
        "chat.completions",
        Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS),
        Termination.FINISHED,
        ticket.request.started_at_ms,
        ttft_ms=5,
        latency_ms=round((time.perf_counter() - started) * 1000),
    )
    await billing.finish(ticket, record)


async def burst(
    billing: Accountant, principal: Principal, model: str, requests: int, concurrency: int
) -> tuple[float, float]:
    """``requests`` requests by ``concurrency`` workers; returns settled requests/s and the
    CPU time this process spent per request (ms, every thread: the event loop and the
    SQLite driver's)."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one_request(billing, principal, model)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return requests / wall, cpu * 1000 / requests


async def open_node(directory: Path, synchronous: str) -> tuple[Accountant, Principal]:
    """A fresh database: one organization with a balance for every request, one price."""
    database = open_database(
        f"sqlite+aiosqlite:///{directory / 'openmaas.db'}", sqlite_synchronous=synchronous
    )
    await migrate(database)
    clock = SystemClock()
    org = await OrganizationRepository(database).create("bench", clock.now_ms())
    async with database.begin() as conn:
        await set_price(conn, PRICE)
    ledger = LedgerStore(database, clock.now_ms)
    await ledger.execute(TopUp("bench", org.id, 10**15))
    billing = Accountant(database, ledger, InProcessLimiter(), clock)
    return billing, Principal("bench-key", org.id, "member")


async def measure(args: argparse.Namespace) -> None:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = [m.strip().upper() for m in args.synchronous.split(",")]
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{args.requests} requests per burst, {args.rounds} rounds (median); "
          "load average at the start: %.2f %.2f %.2f" % os.getloadavg())  # fmt: skip
    print()
    print("| synchronous | concurrency | baseline req/s (usage record) | CPU ms/req "
          "| priced req/s (hold + settle) | CPU ms/req | ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="openmaas-bench-ledger-") as tmp:
            billing, principal = await open_node(Path(tmp), mode)
            await burst(billing, principal, UNPRICED, 100, 4)  # warm up both paths
            await burst(billing, principal, PRICED, 100, 4)
            for concurrency in concurrencies:
                runs: dict[str, list[tuple[float, float]]] = {UNPRICED: [], PRICED: []}
                for round_ in range(args.rounds):
                    order = (UNPRICED, PRICED) if round_ % 2 == 0 else (PRICED, UNPRICED)
                    for model in order:
                        runs[model].append(
                            await burst(billing, principal, model, args.requests, concurrency)
                        )
                base, base_cpu = (statistics.median(x) for x in zip(*runs[UNPRICED], strict=True))
                priced, priced_cpu = (statistics.median(x) for x in zip(*runs[PRICED], strict=True))
                print(f"| {mode} | {concurrency} | {base:,.0f} | {base_cpu:.2f} "
                      f"| {priced:,.0f} | {priced_cpu:.2f} | {priced / base:.2f} |",
                      flush=True)  # fmt: skip
            await billing.ledger.refresh()
            totals = billing.ledger.ledger.totals_by_unit()
            assert all(v == 0 for v in totals.values()) and not billing.ledger.ledger.holds
    print()
    one, five, fifteen = os.getloadavg()
    print(f"load average (1, 5, 15 min) at the end: {one:.2f} {five:.2f} {fifteen:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per burst")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--synchronous", default="FULL,NORMAL")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
