"""ASGI helpers shared by the server's routes and the engine host: noticing that the client
went away while the work for it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

T = TypeVar("T")


class CancelOnDisconnect:
    """Cancels the current task once the client has disconnected, from a watcher task that
    reads ``receive``; ``stop()`` it when the work is done. One task per watch, and the
    work runs in the caller's own task (no task of its own, no ``asyncio.wait``).

    The cancellation reaches the task at the ``await`` it is suspended in, inside the
    watched work; ``gone()`` tells the caller that catches it whether it was this watch's
    alone (then forgotten, as ``asyncio.timeout`` forgets its own) or also someone else's.
    """

    __slots__ = ("_task", "_watcher", "_fired")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CancelOnDisconnect needs a running task")
        self._task = task
        self._fired = False
        self._watcher: asyncio.Future[None] | None = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._fired = True
        self._task.cancel()

    def gone(self) -> bool:
        """After a ``CancelledError``: True when the client's going away caused it and
        nothing else cancelled the task (the cancellation is then spent); False when it is
        to be re-raised."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def stop(self) -> None:
        """Stop watching. A watch that fired on work that finished anyway gives its
        cancellation back (the work took it)."""
        # Dropped here: the cancelled watcher keeps its CancelledError, whose traceback holds
        # the watch's frame and so this watch; holding the watcher too would make a reference
        # cycle, left for the garbage collector instead of freed at once.
        watcher, self._watcher = self._watcher, None
        if self._fired:
            self._fired = False
            self._task.uncancel()
        elif watcher is not None:
            watcher.cancel()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; if the client disconnects first, cancel it (its own cleanup records
    the usage) and return None. Errors of ``work`` propagate unchanged."""
    watch = CancelOnDisconnect(request.receive)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.gone():
            return None
        raise
    finally:
        watch.stop()
