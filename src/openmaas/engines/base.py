"""The engine seam: one interface for every way OpenMaaS runs a model.

An engine turns a canonical ``GenerationRequest`` into an async stream of canonical events
(``TextDelta`` ... ``Finished``) and an ``EmbeddingRequest`` into vectors. Closing the stream
early (``aclose()``, or cancelling the task that iterates it) must stop generation in the
engine: no tokens are generated for nobody.

:class:`Engine` is that interface, a protocol: the router (``routing/router.py``) and the
managed vLLM engine (``engines/vllm.py``) implement it directly. :class:`SlotEngine` is a
template for the engines that really have slots (llama.cpp, the HTTP relay, the engine
host's models, the fake): a request runs only while it holds one of the slots, and waits
for one in a weighted fair queue shared by the organizations (``engines/slots/fair.py``); it runs
the load/unload lifecycle around the ``_load``/``_unload``/``_stream``/``_embed`` hooks.
:class:`SlotCounter` only counts requests against slots and queue (the managed vLLM engine,
whose relay to its process is a slot engine, queued fairly).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from openmaas.core.errors import EngineFailure, EngineNotReady, EngineOverloaded, InvalidRequest
from openmaas.core.money import Money
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationRequest,
    ReasoningDelta,
    RoutingHints,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.engines.slots.fair import DEFAULT_SHARE, FairQueue, Place, queued


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class ModelKind(StrEnum):
    CHAT = "chat"
    EMBEDDING = "embedding"


@dataclass(frozen=True, slots=True)
class EngineHealth:
    state: EngineState
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Capacity:
    """``slots`` run at once; up to ``queue`` more wait; beyond that requests are refused."""

    slots: int
    queue: int
    in_flight: int

    @property
    def limit(self) -> int:
        return self.slots + self.queue


class UsageTracker:
    """The engine's running token counts for one stream, updated as the engine reports them.

    It outlives the stream, so whoever closes a stream early can still read how many tokens
    the engine generated before it stopped. ``estimated`` is set while the counts are a
    tokenizer's guess rather than the engine's own; ``upstream_cost`` is what an external
    upstream charges for them (copied to the stream's ``Route`` when it ends).

    ``ready``: how many more events the engine has in hand as it hands one out (several
    came in one read), so that the next ones come without waiting; 0 when the next may wait.
    A stream's writer sends the frames it has made only then (``Generation.ready``).
    """

    __slots__ = (
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "estimated",
        "upstream_cost",
        "ready",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.estimated = False
        self.upstream_cost: Money | None = None
        self.ready = 0

    def snapshot(self) -> Usage:
        return Usage(self.prompt_tokens, self.cached_tokens, self.completion_tokens, self.estimated)


@dataclass(slots=True)
class Route:
    """Which deployment served a request and why: set by the router (``routing/router.py``),
    recorded with the request's usage. Empty for a model served by one engine directly."""

    deployment: str | None = None  # the deployment's id in the catalog
    data_class: str | None = None  # "local" or "external"
    decision: str | None = None  # e.g. "least_loaded", "affinity", "burst", "fallback:<model>"
    attempts: int = 0  # deployments tried before the first token (1: no failover)
    upstream_cost: Money | None = None  # what an external upstream charges us for it


class EngineStream:
    """An admitted generation: iterate it for events, ``aclose()`` it to stop the engine."""

    def __init__(
        self,
        events: AsyncIterator[StreamEvent],
        tracker: UsageTracker,
        release: Callable[[], None],
    ) -> None:
        self._events = events
        self.tracker = tracker
        self.route = Route()
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> StreamEvent:
        try:
            event = await self._events.__anext__()
        except BaseException:
            self._release_once()
            raise
        if isinstance(event, Finished):
            self._take_cost()
        return event

    async def aclose(self) -> None:
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            self._release_once()

    def _take_cost(self) -> None:
        if self.tracker.upstream_cost is not None and self.route.upstream_cost is None:
            self.route.upstream_cost = self.tracker.upstream_cost

    def _release_once(self) -> None:
        self._take_cost()
        if self._release is not None:
            self._release()
            self._release = None


class _QueuedStream(EngineStream):
    """One generation of a slot engine: its first event waits for its place's permit in
    the fair queue, then the engine's events are read directly (``queued``'s generator
    around them cost one more resumed frame per event). ``release`` frees the place, as
    ``queued`` did when the events ended or were closed."""

    def __init__(
        self,
        queue: FairQueue,
        place: Place,
        events: Callable[[], AsyncIterator[StreamEvent]],
        tracker: UsageTracker,
        release: Callable[[], None],
    ) -> None:
        super().__init__(_ended(), tracker, release)
        self._queue = queue
        self._place = place
        self._start: Callable[[], AsyncIterator[StreamEvent]] | None = events

    async def __anext__(self) -> StreamEvent:
        if self._start is not None:
            await self._begin(self._start)
        try:
            event = await self._events.__anext__()
        except BaseException:
            self._release_once()
            raise
        if isinstance(event, Finished):
            self._take_cost()
        return event

    async def _begin(self, start: Callable[[], AsyncIterator[StreamEvent]]) -> None:
        self._start = None
        try:
            await self._queue.wait(self._place)
        except BaseException:  # cancelled while queued: the place leaves the queue
            self._release_once()
            raise
        self._events = start()

    async def aclose(self) -> None:
        self._start = None  # never started: only the place to release
        await super().aclose()


async def _ended() -> AsyncIterator[StreamEvent]:
    """No events (a stream not started yet, or one that will not start)."""
    return
    yield  # an async generator


class Engine(Protocol):
    """Serves one model: what the catalog, the router and the gateway rely on.

    ``start`` loads (on failure the engine stays up in state FAILED with the reason and the
    error is raised); ``stop`` unloads (STOPPED). ``stream`` and ``embed`` admit a request
    or raise ``EngineNotReady``/``EngineOverloaded`` (capacity errors: nothing reached the
    engine). The caller must ``aclose()`` a stream (in a ``finally``), which stops the
    engine if the stream has not ended. ``count_prompt_tokens`` says how many prompt tokens
    a request would read, exactly as generation would count them, generating nothing.
    """

    model: str
    kind: ModelKind

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> EngineHealth: ...

    def capacity(self) -> Capacity: ...

    def stream(self, request: GenerationRequest) -> EngineStream: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult: ...

    async def count_prompt_tokens(self, request: GenerationRequest) -> int: ...


class SlotCounter:
    """Requests admitted to ``slots`` (running) plus ``queue`` (waiting); beyond that, and
    while the engine is not READY, a request is refused."""

    __slots__ = ("model", "slots", "queue", "in_flight")

    def __init__(self, model: str, *, slots: int, queue: int) -> None:
        self.model = model
        self.slots = slots
        self.queue = queue
        self.in_flight = 0

    def capacity(self) -> Capacity:
        return Capacity(slots=self.slots, queue=self.queue, in_flight=self.in_flight)

    def admit(self, health: EngineHealth) -> None:
        """Count one more request, or raise EngineNotReady/EngineOverloaded."""
        if health.state is not EngineState.READY:
            raise EngineNotReady(self.model, health.detail or health.state.value)
        if self.in_flight >= self.slots + self.queue:
            raise EngineOverloaded(self.model, self.slots + self.queue)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def admitted_stream(
        self,
        health: EngineHealth,
        events: Callable[[UsageTracker], AsyncIterator[StreamEvent]],
    ) -> EngineStream:
        """Admit a generation and wrap ``events(tracker)`` as its stream, released when the
        stream ends or is closed."""
        self.admit(health)
        tracker = UsageTracker()
        return EngineStream(events(tracker), tracker, self.release)


class ChoicesTracker(UsageTracker):
    """The summed counts of a request's ``n`` choices, each counted by its own tracker."""

    __slots__ = ("parts", "finals")

    def __init__(self, n: int) -> None:
        super().__init__()
        self.parts = [UsageTracker() for _ in range(n)]
        self.finals: dict[int, Usage] = {}  # the usage each finished choice ended with

    def snapshot(self) -> Usage:
        usages = [self.finals.get(i) or part.snapshot() for i, part in enumerate(self.parts)]
        return Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            cached_tokens=sum(u.cached_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
            estimated=any(u.estimated for u in usages),
            reasoning_tokens=sum(u.reasoning_tokens for u in usages),
        )


def choice_request(request: GenerationRequest, choice: int) -> GenerationRequest:
    """Choice ``choice`` of ``request`` as a request of its own: one choice, its own request
    id after the first (``<id>-<choice>``) and, when a seed is set, seed + ``choice`` (the
    choices of a seeded request differ, and are the same each time)."""
    sampling = request.sampling
    seed = None if sampling.seed is None else sampling.seed + choice
    return dataclasses.replace(
        request,
        request_id=request.request_id if choice == 0 else f"{request.request_id}-{choice}",
        sampling=dataclasses.replace(sampling, n=1, seed=seed),
    )


_END = object()


async def merged_choices(
    streams: list[AsyncIterator[StreamEvent]], tracker: ChoicesTracker
) -> AsyncIterator[StreamEvent]:
    """The events of ``streams`` (choice ``i`` is ``streams[i]``, run concurrently) as one
    stream: each event tagged with its choice and the summed running counts, then one
    ``Finished`` once every choice has finished (summed usage, each choice's reason). A
    choice that fails fails the whole; closing it stops every choice."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(choice: int, events: AsyncIterator[StreamEvent]) -> None:
        try:
            async for event in events:
                queue.put_nowait((choice, event))
        except Exception as exc:  # handed to the reader below
            queue.put_nowait((choice, exc))
        queue.put_nowait((choice, _END))

    tasks = [asyncio.create_task(pump(i, events)) for i, events in enumerate(streams)]
    reasons: list[FinishReason | None] = [None] * len(streams)
    try:
        while None in reasons:
            choice, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is _END:
                if reasons[choice] is None:
                    raise EngineFailure("A choice ended without finishing.")
                continue
            if isinstance(item, Finished):
                reasons[choice] = item.reason
                tracker.finals[choice] = item.usage
                continue
            assert isinstance(item, TextDelta | ReasoningDelta | ToolCallDelta)
            yield _tagged(item, choice, tracker.snapshot())
        done = [r for r in reasons if r is not None]
        yield Finished(_overall(done), tracker.snapshot(), tuple(done))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for events in streams:
            await events.aclose()  # type: ignore[attr-defined]


def _tagged(
    event: TextDelta | ReasoningDelta | ToolCallDelta, choice: int, counts: Usage
) -> StreamEvent:
    if isinstance(event, TextDelta):
        return dataclasses.replace(
            event,
            choice=choice,
            completion_tokens=counts.completion_tokens,
            prompt_tokens=counts.prompt_tokens,
            cached_tokens=counts.cached_tokens,
        )
    return dataclasses.replace(event, choice=choice, completion_tokens=counts.completion_tokens)


def _overall(reasons: list[FinishReason]) -> FinishReason:
    for reason in (FinishReason.LENGTH, FinishReason.TOOL_CALLS):
        if reason in reasons:
            return reason
    return reasons[0]


def share_queue(engine: Engine, share: float) -> Engine:
    """``engine``, whose queue one key may fill ``share`` of, if it is a slot engine."""
    if isinstance(engine, SlotEngine):
        engine.share_queue(share)
    return engine


def refuse_choices(request: GenerationRequest, model: str) -> None:
    """A 400 naming ``n`` for an engine that cannot generate several choices."""
    if request.sampling.n > 1:
        raise InvalidRequest(
            f"The model '{model}' generates one choice per request; send n=1.", param="n"
        )


class SlotEngine(abc.ABC):
    """A template for an :class:`Engine` with slots. Subclasses implement ``_load``,
    ``_unload`` and ``_stream`` or ``_embed`` (and ``_count_prompt_tokens``).

    A request reaches ``_stream``/``_embed`` only while it holds one of the ``slots``; up
    to ``queue`` more wait for one in the fair queue (``engines/slots/fair.py``), keyed by their
    ``routing.cache_scope`` and weighted by ``routing.share_weight``; one key may fill
    ``queue_share`` of the queue."""

    def __init__(
        self,
        model: str,
        kind: ModelKind,
        *,
        slots: int,
        queue: int,
        queue_share: float = DEFAULT_SHARE,
    ) -> None:
        self.model = model
        self.kind = kind
        self._queue = FairQueue(model, slots=slots, queue=queue, share=queue_share)
        self._health = EngineHealth(EngineState.LOADING)

    def share_queue(self, share: float) -> None:
        """Let one key fill ``share`` of the queue (``OPENMAAS_ENGINE_QUEUE_SHARE``)."""
        if not 0 < share <= 1:
            raise ValueError("share must be more than 0 and at most 1")
        self._queue.share = share

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model. On failure the engine stays up in state FAILED with the reason."""
        try:
            await self._load()
        except Exception as exc:  # the reason is kept and reported by health()
            self._health = EngineHealth(EngineState.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        self._health = EngineHealth(EngineState.READY)

    async def stop(self) -> None:
        """Unload the model. Stopped even when the unload fails or is cancelled: a second
        ``stop()`` must not unload twice, and nothing is admitted meanwhile."""
        try:
            if self._health.state is EngineState.READY:
                await self._unload()
        finally:
            self._health = EngineHealth(EngineState.STOPPED)

    def health(self) -> EngineHealth:
        return self._health

    def capacity(self) -> Capacity:
        queue = self._queue
        return Capacity(slots=queue.slots, queue=queue.queue, in_flight=queue.in_flight)

    # -- serving -----------------------------------------------------------------------
    many_choices: ClassVar[bool] = False
    """Whether a request's ``n`` > 1 choices run here, as ``n`` generations; else 400."""

    def stream(self, request: GenerationRequest) -> EngineStream:
        """Admit a generation (or raise EngineNotReady/EngineOverloaded) and return its
        stream; its first event waits for a slot.

        The caller must ``aclose()`` the stream (in a ``finally``), which stops the engine
        if the stream has not ended, or leaves the queue if it has not started.
        """
        n = request.sampling.n
        if n > 1 and not self.many_choices:
            refuse_choices(request, self.model)
        limit = self._queue.slots + self._queue.queue
        if n > limit:
            raise InvalidRequest(
                f"n={n} is more than '{self.model}' can run at once ({limit}).", param="n"
            )
        places = self._admit(request.routing, n)
        release = self._releasing(places)
        if n == 1:
            tracker = UsageTracker()
            return _QueuedStream(
                self._queue, places[0], self._events(request, tracker), tracker, release
            )
        choices = ChoicesTracker(n)
        streams = [
            queued(self._queue, place, self._events(choice_request(request, i), part))
            for i, (place, part) in enumerate(zip(places, choices.parts, strict=True))
        ]
        return EngineStream(merged_choices(streams, choices), choices, release)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        [place] = self._admit(request.routing, 1)
        try:
            await self._queue.wait(place)
            return await self._embed(request)
        finally:
            self._queue.release(place)

    def _admit(self, routing: RoutingHints, count: int) -> list[Place]:
        if self._health.state is not EngineState.READY:
            raise EngineNotReady(self.model, self._health.detail or self._health.state.value)
        return self._queue.admit(routing.cache_scope, routing.share_weight, count)

    def _events(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> Callable[[], AsyncIterator[StreamEvent]]:
        return lambda: self._stream(request, tracker)

    def _releasing(self, places: list[Place]) -> Callable[[], None]:
        def release() -> None:
            for place in places:
                self._queue.release(place)

        return release

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """How many prompt tokens ``request`` would read, exactly as generation would count
        them (template and tools included), without generating anything."""
        if self._health.state is not EngineState.READY:
            raise EngineNotReady(self.model, self._health.detail or self._health.state.value)
        return await self._count_prompt_tokens(request)

    # -- implementation hooks ---------------------------------------------------------
    @abc.abstractmethod
    async def _load(self) -> None: ...

    @abc.abstractmethod
    async def _unload(self) -> None: ...

    def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        """Yield events and keep ``tracker`` current; stop the engine when closed early."""
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise NotImplementedError(f"{type(self).__name__} does not embed")

    async def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not count tokens")
