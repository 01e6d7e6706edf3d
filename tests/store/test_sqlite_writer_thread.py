"""The SQLite writer's thread: calls run in order, a result or an exception comes back to
the caller, and a caller cancelled while its call runs does not stop it (the write is
finished, its late answer goes to nobody) nor the calls after it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from openmaas.store.writers.sqlite import SqliteWriter


async def test_results_exceptions_and_a_cancelled_caller(tmp_path: Path) -> None:
    writer = SqliteWriter(str(tmp_path / "writer.db"), "FULL")
    done: list[int] = []
    running, release = threading.Event(), threading.Event()

    def slow() -> int:
        running.set()
        release.wait(10)
        done.append(1)
        return 1

    try:
        assert await writer.call(lambda: threading.current_thread().name) == (
            "openmaas-ledger-sqlite"
        )
        with pytest.raises(ZeroDivisionError):
            await writer.call(lambda: 1 // 0)
        caller = asyncio.ensure_future(writer.call(slow))
        assert await asyncio.to_thread(running.wait, 10)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        assert await writer.call(lambda: len(done)) == 1  # in order: slow finished first
        assert writer.handoffs == 4
    finally:
        release.set()
        await writer.close()
