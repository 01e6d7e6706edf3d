"""The one timer of an upstream stream's reads (engines/upstream/openai_http.py
``ReadTimer``): a read past its deadline is a TimeoutError, a deadline moved later is
honoured, someone else's cancellation stays a cancellation, and buffered data is read
whatever the deadline."""

from __future__ import annotations

import asyncio

import pytest

from openmaas.engines.upstream.deadlines import ReadTimer


class Pipe:
    """``readany()`` of a response body: what was fed, else waits for the next feed."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()

    async def readany(self) -> bytes:
        return await self.chunks.get()


async def test_a_read_that_waits_past_its_deadline_times_out() -> None:
    pipe, timer = Pipe(), ReadTimer()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await timer.read(pipe, loop.time() + 0.05)
    timer.close()


async def test_a_later_deadline_for_the_next_read_is_honoured() -> None:
    """The timer armed for the first read's deadline must not end the second read, whose
    deadline is later."""
    pipe, timer = Pipe(), ReadTimer()
    loop = asyncio.get_running_loop()
    pipe.chunks.put_nowait(b"first")
    first_deadline = loop.time() + 0.05
    assert await timer.read(pipe, first_deadline) == b"first"
    loop.call_at(first_deadline + 0.1, pipe.chunks.put_nowait, b"second")
    assert await timer.read(pipe, first_deadline + 5) == b"second"
    timer.close()


async def test_buffered_data_is_read_even_past_the_deadline() -> None:
    pipe, timer = Pipe(), ReadTimer()
    loop = asyncio.get_running_loop()
    pipe.chunks.put_nowait(b"waiting already")
    assert await timer.read(pipe, loop.time() - 1) == b"waiting already"
    timer.close()


async def test_another_cancellation_stays_a_cancellation() -> None:
    pipe = Pipe()

    async def reader() -> bytes:
        timer = ReadTimer()
        try:
            return await timer.read(pipe, asyncio.get_running_loop().time() + 60)
        finally:
            timer.close()

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_between_reads_nothing_is_cancelled() -> None:
    """The consumer holds the event past the deadline: its own awaits are not cut short."""
    pipe, timer = Pipe(), ReadTimer()
    loop = asyncio.get_running_loop()
    pipe.chunks.put_nowait(b"event")
    assert await timer.read(pipe, loop.time() + 0.05) == b"event"
    await asyncio.sleep(0.15)  # past the deadline, not reading: the timer fires harmlessly
    pipe.chunks.put_nowait(b"next")
    assert await timer.read(pipe, loop.time() + 5) == b"next"
    timer.close()
