"""``aio.finish_despite_cancellation``: a write that must not stop half-way runs to its end
however often its caller is cancelled; nested protections share one task."""

from __future__ import annotations

import asyncio
import gc

import pytest

from openmaas.aio import finish_despite_cancellation


async def test_the_work_ends_however_often_the_caller_is_cancelled() -> None:
    steps: list[str] = []
    release = asyncio.Event()

    async def write() -> str:
        steps.append("begun")
        await release.wait()
        await asyncio.sleep(0)
        steps.append("ended")
        return "written"

    caller = asyncio.ensure_future(finish_despite_cancellation(write()))
    await asyncio.sleep(0.01)
    for _ in range(3):
        caller.cancel()
        await asyncio.sleep(0.01)
    assert steps == ["begun"] and not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["begun", "ended"]


async def test_the_works_own_error_wins_over_the_cancellation() -> None:
    release = asyncio.Event()

    async def write() -> None:
        await release.wait()
        raise ValueError("the write failed")

    caller = asyncio.ensure_future(finish_despite_cancellation(write()))
    await asyncio.sleep(0.01)
    caller.cancel()
    release.set()
    with pytest.raises(ValueError, match="the write failed"):
        await caller


async def test_a_protection_inside_a_protected_work_runs_in_its_task() -> None:
    """A settlement inside a generation's close: no second task, and still to its end."""
    tasks: list[asyncio.Task[object] | None] = []
    release = asyncio.Event()
    ended: list[str] = []

    async def inner() -> str:
        tasks.append(asyncio.current_task())
        await release.wait()
        ended.append("inner")
        return "inner"

    async def outer() -> str:
        tasks.append(asyncio.current_task())
        return await finish_despite_cancellation(inner())

    caller = asyncio.ensure_future(finish_despite_cancellation(outer()))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert ended == ["inner"]
    [outer_task, inner_task] = tasks
    assert inner_task is outer_task and outer_task is not caller


async def test_a_task_started_inside_a_protected_work_protects_its_own() -> None:
    """Its context is a copy of the protected one, but it can be cancelled on its own: a
    protection in it gets a task of its own."""
    release = asyncio.Event()
    ended: list[str] = []
    seen: list[asyncio.Task[object] | None] = []

    async def write() -> None:
        seen.append(asyncio.current_task())
        await release.wait()
        ended.append("write")

    async def side() -> None:
        await finish_despite_cancellation(write())

    async def outer() -> asyncio.Task[None]:
        return asyncio.ensure_future(side())

    spawned = await finish_despite_cancellation(outer())
    await asyncio.sleep(0.01)
    spawned.cancel()
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await spawned
    assert ended == ["write"] and seen[0] is not spawned


async def test_a_protected_work_leaves_nothing_for_the_garbage_collector() -> None:
    """Its task, and so what the work returned, are freed as soon as the caller drops the
    result (a task in a reference cycle would keep its result until a collection)."""

    class Written:
        pass

    async def write() -> Written:
        return Written()

    async def close() -> Written:
        return await finish_despite_cancellation(write())

    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            await finish_despite_cancellation(close())
        await asyncio.sleep(0)  # the loop lets go of the last task's callbacks
        assert not [o for o in gc.get_objects() if isinstance(o, Written)]
    finally:
        gc.enable()
