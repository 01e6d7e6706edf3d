"""The ledger's memory per settled request and a process's start-up on a long log.

Two measurements of ``store/ledger/log.py`` alone (no HTTP, no accountant) on a SQLite file in a
temporary directory, with requests settled from a lease (``SpendLease``, the hot path) by
``--concurrency`` coroutines (group-committed batches):

* memory: Python heap growth (``tracemalloc``) of the process over ``--settle`` settled
  requests and over twice as many, after ``--settle`` first (which fill the window of
  settled ids, ``--window``, when the code has one); the difference of the two per
  settlement is what each one more settled request keeps (the growth that does not depend
  on their number, like a set's table resized or the batches in flight, cancels out);
* start-up: a log of ``--history`` events, then a new ``LedgerStore`` on it (a process
  starting): seconds to its first state and events read, after a ``kill -9`` (the writer
  never closed: the newest periodic snapshot and the events after it) and after a clean
  shutdown (``close``, which writes a snapshot).

Runs on code with or without snapshots and a bounded window (to compare with older
commits), reporting what that code has.

    .venv/bin/python benchmarks/ledger_memory.py
    .venv/bin/python benchmarks/ledger_memory.py --history 200000 --settle 50000 --window 10000
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from openmaas.core.ledger_events import DrawLease, SpendLease, TopUp  # noqa: E402
from openmaas.core.prices import AppliedPrice, ModelPrice  # noqa: E402
from openmaas.core.types import Usage  # noqa: E402
from openmaas.store.database import migrate, open_database  # noqa: E402
from openmaas.store.ledger.log import LedgerStore  # noqa: E402
from openmaas.store.repositories import OrganizationRepository  # noqa: E402

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 2_000_000, 500_000, 8_000_000))
USAGE = Usage(prompt_tokens=200, completion_tokens=300)


def new_store(engine: Any, window: int | None) -> LedgerStore:
    """A ``LedgerStore`` with ``window`` settled ids kept, where the code has the option."""
    options = inspect.signature(LedgerStore).parameters
    kwargs: dict[str, Any] = {}
    if window is not None and "settled_window" in options:
        kwargs["settled_window"] = window
    return LedgerStore(engine, lambda: NOW_MS, **kwargs)


async def settle(store: LedgerStore, first: int, count: int, concurrency: int) -> None:
    """``count`` requests settled from the lease, ``concurrency`` at a time."""
    ids = iter(range(first, first + count))

    async def worker() -> None:
        for n in ids:
            await store.execute(SpendLease(f"req_{n:012d}", "lease-1", PRICE, USAGE, 10_000))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def opened(path: str, window: int | None) -> tuple[Any, LedgerStore]:
    engine = open_database("sqlite+aiosqlite:///" + path)
    await migrate(engine)
    org = (await OrganizationRepository(engine).create("bench", NOW_MS)).id
    store = new_store(engine, window)
    await store.execute(TopUp("t1", org, 10**15))
    await store.execute(DrawLease("lease-1", org, "gw-1", want=10**14, at_least=1))
    return engine, store


async def memory(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    engine, store = await opened(os.path.join(directory, "memory.db"), args.window)
    try:
        await settle(store, 0, args.settle, args.concurrency)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await settle(store, args.settle, args.settle, args.concurrency)
        once = tracemalloc.get_traced_memory()[0] - before
        await settle(store, 2 * args.settle, args.settle, args.concurrency)
        twice = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        ledger: Any = store.ledger  # older code: ``resolved`` and ``spent``, every id
        ids = getattr(ledger, "settled_ids", None)
        kept = len(ids) if ids is not None else len(ledger.resolved) + len(ledger.spent)
        return {
            "grown": (once, twice),
            "bytes_per_settled": (twice - once) / args.settle,
            "ids_kept": kept,
        }
    finally:
        await store.close()
        await engine.dispose()


async def start_up(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "history.db")
    engine, store = await opened(path, args.window)
    started = time.perf_counter()
    await settle(store, 0, args.history - 3, args.concurrency)
    written_s = time.perf_counter() - started
    if hasattr(store, "snapshot_written"):
        await store.snapshot_written()
    result: dict[str, Any] = {"history_events": args.history, "written_s": written_s}
    result["after_kill"] = await one_start(engine, args.window)  # the writer never closed
    await store.close()  # a clean shutdown
    result["after_clean_shutdown"] = await one_start(engine, args.window)
    await engine.dispose()
    return result


async def one_start(engine: Any, window: int | None) -> dict[str, Any]:
    fresh = new_store(engine, window)
    started = time.perf_counter()
    ledger = await fresh.refresh()
    seconds = time.perf_counter() - started
    from_snapshot = getattr(fresh, "snapshot_read", None)
    read = getattr(fresh, "events_read", None)
    if read is None:  # older code: a start-up replays the whole log
        read = fresh._seq
    assert ledger.orgs
    return {"seconds": seconds, "events_read": read, "snapshot_seq": from_snapshot}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--history", type=int, default=200_000, help="events in the log (0: no start-up)"
    )
    parser.add_argument("--settle", type=int, default=50_000, help="settlements measured")
    parser.add_argument("--window", type=int, default=None, help="settled ids kept")
    parser.add_argument("--concurrency", type=int, default=128)
    return parser.parse_args(argv)


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as directory:
        mem = await memory(args, directory)
        once, twice = mem["grown"]
        print(
            f"memory: {once / 1024:,.0f} KiB grown over {args.settle:,} settlements, "
            f"{twice / 1024:,.0f} KiB over {2 * args.settle:,}: "
            f"{mem['bytes_per_settled']:.1f} bytes per settled request; "
            f"{mem['ids_kept']:,} ids kept"
        )
        if not args.history:
            return 0
        up = await start_up(args, directory)
        print(f"history: {up['history_events']:,} events written in {up['written_s']:.1f} s")
        for case in ("after_kill", "after_clean_shutdown"):
            one = up[case]
            print(
                f"start-up {case.replace('_', ' ')}: {one['seconds'] * 1000:,.0f} ms, "
                f"{one['events_read']:,} events read, snapshot at seq {one['snapshot_seq']}"
            )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
