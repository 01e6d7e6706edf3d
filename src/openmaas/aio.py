"""Asyncio helpers shared by the store and the feature packages (no I/O of their own)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def finish_despite_cancellation(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled (any number of times)
    meanwhile; then re-raise the cancellation, or return its result. For writes that must
    not stop half-way: a ledger transaction, a usage record. A future (rather than a
    coroutine) is waited for as it is, without a task of its own."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()  # the work's own exception, if any, wins
    if cancelled:
        raise asyncio.CancelledError
    return result
