"""Asyncio helpers shared by the store and the feature packages (no I/O of their own)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Coroutine
from contextvars import ContextVar
from typing import Any, TypeVar, cast

T = TypeVar("T")

# The task that ``finish_despite_cancellation`` made to run a work, as that task's own
# context sees it: a task it made for another work (or any task they start) sees a
# different task in it. A weak reference: the task holds its context, which would hold
# the task (a reference cycle, each one left to the garbage collector).
_protected: ContextVar[weakref.ref[asyncio.Task[Any]] | None] = ContextVar(
    "_protected", default=None
)


async def finish_despite_cancellation(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled (any number of times)
    meanwhile; then re-raise the cancellation, or return its result. For writes that must
    not stop half-way: a ledger transaction, a usage record. A future (rather than a
    coroutine) is waited for as it is, without a task of its own.

    A coroutine is run in a task of its own, which the caller's cancellations never reach;
    one called from such a task's own work (a settlement inside a generation's close) is
    protected already and runs in it directly: one task per request's close, not one per
    layer that protects its own callers."""
    protected: asyncio.Future[T]
    if isinstance(work, Coroutine):
        coroutine = cast("Coroutine[Any, Any, T]", work)
        task = _protected.get()
        if task is not None and task() is asyncio.current_task():
            return await coroutine
        protected = asyncio.ensure_future(_run_protected(coroutine))
    else:
        protected = asyncio.ensure_future(work)
    cancelled = False
    while not protected.done():
        try:
            await asyncio.shield(protected)
        except asyncio.CancelledError:
            cancelled = True
    result = protected.result()  # the work's own exception, if any, wins
    if cancelled:
        raise asyncio.CancelledError
    return result


async def _run_protected(work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    _protected.set(weakref.ref(task))  # this task's context: a copy of its caller's
    return await work
