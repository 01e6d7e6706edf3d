"""The engine seam: one interface for every way OpenMaaS runs a model.

An engine turns a canonical ``GenerationRequest`` into an async stream of canonical events
(``TextDelta`` ... ``Finished``) and an ``EmbeddingRequest`` into vectors. Closing the stream
early (``aclose()``, or cancelling the task that iterates it) must stop generation in the
engine: no tokens are generated for nobody.

:class:`Engine` is that interface, a protocol: the router (``routing/router.py``) and the
managed vLLM engine (``engines/vllm.py``) implement it directly. :class:`SlotEngine` is a
template for the engines that really have slots (llama.cpp, the HTTP relay, the fake, the
GLM wrapper): it counts requests against slots and queue (:class:`SlotCounter`) and runs
the load/unload lifecycle around the ``_load``/``_unload``/``_stream``/``_embed`` hooks.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from openmaas.core.errors import EngineNotReady, EngineOverloaded
from openmaas.core.money import Money
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    GenerationRequest,
    StreamEvent,
    Usage,
)


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
    """

    __slots__ = (
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "estimated",
        "upstream_cost",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.estimated = False
        self.upstream_cost: Money | None = None

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


class SlotEngine(abc.ABC):
    """A template for an :class:`Engine` with slots. Subclasses implement ``_load``,
    ``_unload`` and ``_stream`` or ``_embed`` (and ``_count_prompt_tokens``)."""

    def __init__(self, model: str, kind: ModelKind, *, slots: int, queue: int) -> None:
        self.model = model
        self.kind = kind
        self._slots = SlotCounter(model, slots=slots, queue=queue)
        self._health = EngineHealth(EngineState.LOADING)

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
        return self._slots.capacity()

    # -- serving -----------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> EngineStream:
        """Admit a generation (or raise EngineNotReady/EngineOverloaded) and return its stream.

        The caller must ``aclose()`` the stream (in a ``finally``), which stops the engine
        if the stream has not ended.
        """
        return self._slots.admitted_stream(
            self._health, lambda tracker: self._stream(request, tracker)
        )

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """How many prompt tokens ``request`` would read, exactly as generation would count
        them (template and tools included), without generating anything."""
        if self._health.state is not EngineState.READY:
            raise EngineNotReady(self.model, self._health.detail or self._health.state.value)
        return await self._count_prompt_tokens(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self._slots.admit(self._health)
        try:
            return await self._embed(request)
        finally:
            self._slots.release()

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
