"""server/heap.py: the server hands freed memory back to the system on a schedule."""

from __future__ import annotations

import asyncio
import sys

import pytest

from openmaas.server.heap import malloc_trim, trim_heap_every
from tests.support.waiting import CountedCalls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_has_malloc_trim() -> None:
    trim = malloc_trim()
    assert trim is not None
    trim()  # returns whether memory was released; either is fine


async def test_the_heap_is_trimmed_again_and_again_until_cancelled() -> None:
    trim = CountedCalls(3)
    task = asyncio.create_task(trim_heap_every(0.001, trim))
    await trim.reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_trim_is_tried_again() -> None:
    trim = CountedCalls(2, fail=OSError("no"))
    task = asyncio.create_task(trim_heap_every(0.001, trim))
    await trim.reached.wait()
    task.cancel()


async def test_zero_seconds_means_never() -> None:
    await trim_heap_every(0, lambda: pytest.fail("trimmed"))
