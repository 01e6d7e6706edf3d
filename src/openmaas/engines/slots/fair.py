"""Weighted fair queuing of an engine's slots between organizations (``docs/limits.md``,
"Fair sharing").

A request runs only while it holds one of the engine's ``slots`` permits. The requests
waiting for one (at most ``queue`` in all) are kept per *fairness key* (the request's
``RoutingHints.cache_scope``: a keyed hash of its organization; requests without one
share one key), in arrival order within a key, and a freed permit goes to the waiting key
that is furthest behind its weighted share.

"Furthest behind" is start-time fair queuing (Goyal, Vin and Cheng, 1996): every request
is tagged when it is admitted with a start ``S = max(V, F[key])`` and its key's finish
becomes ``F[key] = S + 1 / weight``; a freed permit goes to the waiting request with the
smallest start (ties: the earlier arrival), and the virtual time ``V`` becomes that start.
Each request counts as one unit of service (how long it will hold its slot is not known
when it is queued), so with every key backlogged, keys get permits in proportion to their
weights; a key that was idle starts at ``V`` (no credit is saved up while idle), so one
that arrives behind another key's long backlog is served next, not after it.

One key cannot take the whole queue: a key may have at most ``share`` of ``queue``
waiting (at least one; the ``n`` choices of one request count as ``n`` requests, and are
not refused for their number alone); beyond that *its* request is refused
(``EngineOverloaded``, 429) while other keys are still admitted.

Admission is synchronous (an engine's ``stream`` refuses before anything reaches it);
waiting is :meth:`FairQueue.wait`; :meth:`FairQueue.release` ends a place whatever its
state, once: a waiting place leaves the queue (a client that left frees its place), a
running one frees its permit for the next. One event loop: no locking.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from openmaas.core.errors import EngineOverloaded

DEFAULT_SHARE = 0.5
"""The part of an engine's queue one key may fill (``OPENMAAS_ENGINE_QUEUE_SHARE``)."""

SHARED_KEY = ""
"""The key of requests that name none (no ``cache_scope``): they share one."""


class PlaceState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False, slots=True)
class Place:
    """One request's place: waiting for a permit, holding one, or done."""

    key: str
    start: float  # its start tag (virtual time)
    seq: int  # arrival order, for ties and FIFO within a key
    state: PlaceState = PlaceState.WAITING
    granted: asyncio.Future[None] | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Key:
    finish: float = 0.0  # the finish tag of the key's latest request
    waiting: int = 0
    running: int = 0


class FairQueue:
    """``slots`` permits, shared fairly by keys; up to ``queue`` requests wait for them."""

    __slots__ = (
        "model",
        "slots",
        "queue",
        "share",
        "_keys",
        "_heap",
        "_running",
        "_waiting",
        "_vtime",
        "_seq",
    )

    def __init__(self, model: str, *, slots: int, queue: int, share: float = DEFAULT_SHARE):
        if slots < 1 or queue < 0:
            raise ValueError("slots must be at least 1 and queue not negative")
        if not 0 < share <= 1:
            raise ValueError("share must be more than 0 and at most 1")
        self.model = model
        self.slots = slots
        self.queue = queue
        self.share = share
        self._keys: dict[str, _Key] = {}  # keys with a request running or waiting
        self._heap: list[tuple[float, int, Place]] = []  # waiting places (and left ones)
        self._running = 0
        self._waiting = 0
        self._vtime = 0.0  # the start tag of the latest request given a permit
        self._seq = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released: running plus waiting."""
        return self._running + self._waiting

    @property
    def key_cap(self) -> int:
        """How many requests of one key may wait: ``share`` of the queue, at least one."""
        return max(1, math.floor(self.queue * self.share + 1e-9))

    def waiting_of(self, key: str | None) -> int:
        state = self._keys.get(key or SHARED_KEY)
        return 0 if state is None else state.waiting

    # -- admission -------------------------------------------------------------------------
    def admit(self, key: str | None, weight: int = 1, count: int = 1) -> list[Place]:
        """Places for ``count`` requests of ``key`` (all or none), each holding a permit
        already or waiting for one; or raise ``EngineOverloaded`` having admitted none."""
        key = key or SHARED_KEY
        weight = max(1, weight)
        free = self.slots - self._running if not self._waiting else 0
        now = min(free, count)
        wait = count - now
        if wait:
            if self._waiting + wait > self.queue:
                raise EngineOverloaded(self.model, self.slots + self.queue)
            # (the choices of one request are never refused for their number alone)
            if self.waiting_of(key) + wait > max(self.key_cap, wait):
                raise _over_share(self.model, self.key_cap)
        state = self._keys.setdefault(key, _Key())
        places = []
        for i in range(count):
            start = max(self._vtime, state.finish)
            state.finish = start + 1 / weight
            self._seq += 1
            place = Place(key, start, self._seq)
            if i < now:
                self._grant(place, state)
            else:
                state.waiting += 1
                self._waiting += 1
                heapq.heappush(self._heap, (start, place.seq, place))
            places.append(place)
        return places

    async def wait(self, place: Place) -> None:
        """Return once ``place`` holds a permit (at once if it does)."""
        if place.state is PlaceState.RUNNING:
            return
        if place.state is PlaceState.DONE:
            raise RuntimeError("the place was released")
        if place.granted is None:
            place.granted = asyncio.get_running_loop().create_future()
        await asyncio.shield(place.granted)  # cancelled: the place stays, release() ends it

    def release(self, place: Place) -> None:
        """End ``place``: a waiting one leaves the queue, a running one frees its permit
        (given to the next). Releasing twice frees nothing twice."""
        state = self._keys.get(place.key)
        if place.state is PlaceState.WAITING:
            place.state = PlaceState.DONE  # its heap entry is skipped when reached
            self._waiting -= 1
            if state is not None:
                state.waiting -= 1
        elif place.state is PlaceState.RUNNING:
            place.state = PlaceState.DONE
            self._running -= 1
            if state is not None:
                state.running -= 1
        else:
            return
        if state is not None and not state.waiting and not state.running:
            del self._keys[place.key]
        self._dispatch()
        if len(self._heap) > 2 * self._waiting + 64:  # many left while waiting: drop them
            self._heap = [entry for entry in self._heap if entry[2].state is PlaceState.WAITING]
            heapq.heapify(self._heap)

    # -- inside ----------------------------------------------------------------------------
    def _grant(self, place: Place, state: _Key) -> None:
        place.state = PlaceState.RUNNING
        state.running += 1
        self._running += 1
        self._vtime = max(self._vtime, place.start)
        if place.granted is not None and not place.granted.done():
            place.granted.set_result(None)

    def _dispatch(self) -> None:
        """Give free permits to the waiting places of smallest start."""
        while self._running < self.slots and self._heap:
            _, _, place = heapq.heappop(self._heap)
            if place.state is not PlaceState.WAITING:
                continue  # left while waiting
            state = self._keys[place.key]
            state.waiting -= 1
            self._waiting -= 1
            self._grant(place, state)
        if not self._waiting:
            self._heap.clear()  # only left places remain


T = TypeVar("T")


async def queued(
    queue: FairQueue, place: Place, events: Callable[[], AsyncIterator[T]]
) -> AsyncIterator[T]:
    """``events()`` once ``place`` holds a permit; the place is released when they end or
    are closed (a choice of several gives its slot to the next as soon as it ends)."""
    try:
        await queue.wait(place)
        inner = events()
        try:
            async for event in inner:
                yield event
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
    finally:
        queue.release(place)


def _over_share(model: str, cap: int) -> EngineOverloaded:
    exc = EngineOverloaded(model, cap)
    message = (
        f"The engine serving '{model}' already has {cap} of your organization's requests "
        "waiting, its share of the queue. Retry after a short delay."
    )
    exc.message, exc.args = message, (message,)
    return exc
