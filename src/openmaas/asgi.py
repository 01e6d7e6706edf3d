"""ASGI helpers shared by the server's routes and the engine host: noticing that the client
went away while the work for it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; if the client disconnects first, cancel it (its own cleanup records
    the usage) and return None. Errors of ``work`` propagate unchanged."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loser = watch_task if work_task.done() else work_task
        loser.cancel()
        await asyncio.gather(loser, return_exceptions=True)
    return work_task.result() if work_task.done() and not work_task.cancelled() else None


async def client_gone(request: Request) -> None:
    """Return once the client has disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
