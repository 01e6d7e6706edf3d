"""Routing and failover: one public model served by several deployments (``docs/routing.md``).

A :class:`RoutedEngine` implements the :class:`~openmaas.engines.base.Engine` protocol, so the
gateway serves it like any other engine. Per request it picks a deployment:

1. candidates: engine READY, circuit not open, free concurrency;
2. data policy: ``local_only`` never sees an ``external`` deployment; ``burst`` sees one only
   when no ``local`` deployment can take the request;
3. the lowest ``priority`` value among them;
4. within that tier: bounded-load consistent hashing on the affinity key (when the model
   has affinity on), else weighted least outstanding requests.

A failure before the first event (a capacity error, an engine failure, a connect or
first-token timeout) is recorded in the deployment's circuit breaker and the next candidate
is tried after a short backoff, within ``max_attempts`` and ``failover_budget_s``; then the
model's fallback models in order. Nothing is retried after the first event: the client has
seen output. The stream's ``route`` says which deployment served and why.

The algorithms are pure (``core/routing.py``); this module holds their state and the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import (
    CapacityError,
    ConfigurationError,
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    EngineTimeout,
    UpstreamUnavailable,
)
from openmaas.core.routing import (
    DEFAULT_AFFINITY_CHARS,
    DEFAULT_EPSILON,
    DEFAULT_VNODES,
    Backoff,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    HashRing,
    Load,
    affinity_key,
    bounded_choice,
    least_loaded,
    stable_hash,
)
from openmaas.core.termination import failure_for
from openmaas.core.tracing import TraceSpan
from openmaas.core.types import (
    DataPolicy,
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    GenerationRequest,
    StreamEvent,
)
from openmaas.engines.base import (
    Capacity,
    Engine,
    EngineHealth,
    EngineState,
    EngineStream,
    ModelKind,
)

log = logging.getLogger("openmaas.router")

Probe = Callable[[], Awaitable[object]]
"""A lightweight health probe: returns when the deployment answers, raises when it does not."""


class DataClass(StrEnum):
    LOCAL = "local"  # runs on the operator's machines: the data stays in the building
    EXTERNAL = "external"  # a cloud upstream: the data leaves


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way to serve a model. ``max_concurrency`` caps the requests this router sends it
    at once (None: only the engine's own slots and queue); ``probe`` replaces the default
    health probe (the engine reports READY) used to bring it back after its circuit opened.
    """

    id: str
    engine: Engine
    weight: int = 1
    max_concurrency: int | None = None
    data_class: DataClass = DataClass.LOCAL
    priority: int = 0  # lower first
    probe: Probe | None = None


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Per-model routing options, with their defaults (``docs/routing.md``)."""

    affinity: bool = False  # bounded-load consistent hashing on session id / prompt opening
    affinity_chars: int = DEFAULT_AFFINITY_CHARS
    epsilon: float = DEFAULT_EPSILON  # CHWBL load bound: (1 + epsilon) × weighted mean
    vnodes: int = DEFAULT_VNODES  # ring points per unit of weight
    max_attempts: int = 3  # deployments tried per model before its fallbacks
    failover_budget_s: float = 30.0  # no new attempt starts later than this after the first
    # Longest wait for an attempt's first event (None: the engine's own timeouts only); on
    # expiry the attempt fails with EngineTimeout("first_token") and the next is tried.
    first_token_timeout_s: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    health_interval_s: float = 1.0  # how often open circuits are checked for a probe
    probe_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.failover_budget_s < 0 or self.affinity_chars < 1:
            raise ConfigurationError("invalid routing settings")
        if self.health_interval_s <= 0 or self.probe_timeout_s <= 0 or self.epsilon < 0:
            raise ConfigurationError("invalid routing settings")
        if self.first_token_timeout_s is not None and self.first_token_timeout_s <= 0:
            raise ConfigurationError("invalid routing settings")


class _Member:
    """A deployment and the router's state for it."""

    __slots__ = ("deployment", "breaker", "outstanding")

    def __init__(self, deployment: Deployment, breaker: CircuitBreaker) -> None:
        self.deployment = deployment
        self.breaker = breaker
        self.outstanding = 0

    @property
    def id(self) -> str:
        return self.deployment.id

    @property
    def engine(self) -> Engine:
        return self.deployment.engine

    @property
    def local(self) -> bool:
        return self.deployment.data_class is DataClass.LOCAL

    def limit(self) -> int:
        own = self.engine.capacity().limit
        cap = self.deployment.max_concurrency
        return own if cap is None else min(own, cap)

    def has_room(self) -> bool:
        cap = self.deployment.max_concurrency
        if cap is not None and self.outstanding >= cap:
            return False
        capacity = self.engine.capacity()
        return capacity.in_flight < capacity.limit

    def ready(self) -> bool:
        return self.engine.health().state is EngineState.READY


class _Lease:
    """One attempt on one deployment: counted in its outstanding requests until released,
    and the circuit's half-open probe when ``probe``. In a traced request (``span``) the
    attempt is a span, ended when the lease is released, with its outcome."""

    __slots__ = (
        "router",
        "member",
        "decision",
        "probe",
        "span",
        "_released",
        "_resolved",
        "_failed",
        "_error",
    )

    def __init__(self, router: RoutedEngine, member: _Member, decision: str) -> None:
        self.router = router
        self.member = member
        self.decision = decision
        self.probe = member.breaker.begin(router.now())
        member.outstanding += 1
        self.span: TraceSpan | None = None
        self._released = False
        self._resolved = False
        self._failed = False
        self._error: BaseException | None = None

    def succeeded(self) -> None:
        if not self._resolved:
            self._resolved = True
            self.member.breaker.record_success(self.router.now())

    def failed(self, exc: BaseException) -> None:
        """Count ``exc`` against the deployment (once per attempt), before or after its
        first event: a deployment that drops streams midway is unhealthy too."""
        if self.span is not None and self._error is None:
            self._error = exc
        if self._failed or not failure_for(exc).deployment_failed:
            return
        self._failed = self._resolved = True
        self.member.breaker.record_failure(self.router.now())
        log.warning(
            "deployment failed",
            extra={"model": self.router.model, "deployment": self.member.id},
        )

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.member.outstanding -= 1
            if self.probe and not self._resolved:
                self.member.breaker.abandon()
            if self.span is not None:
                self._end_span(self.span)

    def _end_span(self, span: TraceSpan) -> None:
        """The attempt's outcome: ``error`` (it failed, before or after its first event),
        ``served`` (it answered), ``abandoned`` (released before answering, e.g. the
        client left while it waited)."""
        error = self._error
        served = self._resolved and not self._failed
        outcome = "error" if error is not None else "served" if served else "abandoned"
        span.end({"openmaas.attempt.outcome": outcome}, error)


class _Plan:
    """The order of attempts for one request: this model's deployments (at most its
    ``max_attempts``), then each fallback model's."""

    def __init__(self, router: RoutedEngine, request: GenerationRequest | EmbeddingRequest):
        self.router = router
        self.request = request
        self.sources: list[tuple[RoutedEngine, str | None]] = [(router, None)]
        self.sources += [(fb, f"fallback:{fb.model}") for fb in router.fallbacks]
        self.index = 0
        self.tried: set[str] = set()
        self.attempts = 0  # deployments tried, all sources
        self.failures = 0  # attempts that failed after reaching a deployment
        self.errors: list[BaseException] = []
        self.last_deployment = ""
        self.started = router.now()
        self._keys: dict[int, int | None] = {}

    def lease(self) -> _Lease | None:
        """The next attempt, or None when no source has a candidate left."""
        while self.index < len(self.sources):
            source, label = self.sources[self.index]
            if len(self.tried) < source.config.max_attempts:
                if self.index not in self._keys:
                    self._keys[self.index] = source.key_hash(self.request)
                choice = source.select(self.request, self.tried, self._keys[self.index])
                if choice is not None:
                    member, decision = choice
                    self.tried.add(member.id)
                    self.attempts += 1
                    self.last_deployment = member.id
                    lease = _Lease(source, member, label or decision)
                    trace = self.request.routing.trace
                    if trace is not None:
                        lease.span = trace.attempt(member.id, lease.decision)
                    return lease
            self.index += 1
            self.tried = set()
        return None

    def may_retry(self, exc: BaseException) -> float | None:
        """After a failed attempt: the backoff to wait before the next, or None to stop."""
        self.errors.append(exc)
        if not failure_for(exc).failover:
            return None
        self.failures += 1
        config = self.router.config
        delay = config.backoff.delay(self.failures, self.router.rng)
        if self.router.now() - self.started + delay > config.failover_budget_s:
            return None
        return delay

    def refused(self, exc: BaseException) -> None:
        """An engine refused at once (nothing reached it): try the next without waiting."""
        self.errors.append(exc)

    def final_error(self) -> Exception:
        """What the client gets when nothing could take the request. Built here, never the
        deployment's own message (an upstream's body may name hosts or echo credentials)."""
        model = self.router.model
        last = self.errors[-1] if self.errors else None
        if isinstance(last, EngineTimeout):
            return EngineTimeout(last.phase, last.seconds)
        if isinstance(last, EngineFailure):
            return EngineFailure(
                f"Every deployment of '{model}' that was tried failed before answering."
            )
        message = f"No deployment of '{model}' can take the request now; retry later."
        if not any(isinstance(e, UpstreamUnavailable) for e in self.errors):
            router = self.router
            allowed = [m for m in router.members if router.policy_allows(self.request, m)]
            now = router.now()
            if not allowed:
                message = (
                    f"No deployment of '{model}' may serve this organization's data "
                    "(its data policy is local only)."
                )
            elif not any(m.ready() for m in allowed):
                return EngineNotReady(model, "no deployment is ready")
            elif any(m.ready() and m.breaker.allows(now) for m in allowed):
                return EngineOverloaded(model, router.capacity().limit)
        error = UpstreamUnavailable(
            message,
            deployment=self.last_deployment,
            status=getattr(last, "status", None),
        )
        if isinstance(last, CapacityError):
            error.retry_after_seconds = last.retry_after_seconds
        return error


class RoutedEngine:
    """One public model over its deployments: selection, failover, fallbacks, circuit
    breakers and active health checks. It owns its deployments' engines (starts and stops
    them); ``fallbacks`` are other models' routers, owned by the catalog, whose own
    fallbacks are not followed (no chains, no cycles)."""

    def __init__(
        self,
        model: str,
        deployments: Sequence[Deployment],
        *,
        config: RouterConfig | None = None,
        fallbacks: Sequence[RoutedEngine] = (),
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not deployments:
            raise ConfigurationError(f"Model '{model}' has no deployment.")
        ids = [d.id for d in deployments]
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"Model '{model}' has two deployments with the same id.")
        kinds = {d.engine.kind for d in deployments}
        if len(kinds) != 1:
            raise ConfigurationError(f"The deployments of '{model}' serve different kinds.")
        for d in deployments:
            if d.weight < 1 or (d.max_concurrency is not None and d.max_concurrency < 1):
                raise ConfigurationError(f"Deployment '{d.id}': weight and max_concurrency ≥ 1.")
        self.model = model
        self.kind: ModelKind = kinds.pop()
        self.config = config or RouterConfig()
        self.fallbacks = tuple(fallbacks)
        self.rng = rng or random.Random()
        self._clock = clock or SystemClock()
        self.members = [_Member(d, CircuitBreaker(self.config.breaker)) for d in deployments]
        self._ring = HashRing({d.id: d.weight for d in deployments}, self.config.vnodes)
        self._has_local = any(m.local for m in self.members)
        self._watcher: asyncio.Task[None] | None = None
        self._stopped = False

    def now(self) -> float:
        return self._clock.monotonic()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start every deployment's engine and the health checks. READY when at least one
        deployment is; the others are skipped until they are."""
        self._stopped = False
        results = await asyncio.gather(
            *(m.engine.start() for m in self.members), return_exceptions=True
        )
        for member, result in zip(self.members, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "deployment failed to start",
                    extra={"model": self.model, "deployment": member.id},
                )
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())
        if not any(m.ready() for m in self.members):
            raise EngineFailure(f"No deployment of '{self.model}' started.")

    async def stop(self) -> None:
        self._stopped = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await asyncio.gather(*(m.engine.stop() for m in self.members), return_exceptions=True)

    def health(self) -> EngineHealth:
        if self._stopped:
            return EngineHealth(EngineState.STOPPED)
        states = {m.engine.health().state for m in self.members}
        for state in (EngineState.READY, EngineState.LOADING):
            if state in states:
                return EngineHealth(state)
        return EngineHealth(EngineState.FAILED, "no deployment is ready")

    def capacity(self) -> Capacity:
        return Capacity(
            slots=sum(m.limit() for m in self.members),
            queue=0,
            in_flight=sum(m.outstanding for m in self.members),
        )

    def outstanding(self) -> dict[str, int]:
        """Requests in flight per deployment id (for metrics and tests)."""
        return {m.id: m.outstanding for m in self.members}

    def breaker_state(self, deployment: str) -> BreakerState:
        return self._member(deployment).breaker.state(self.now())

    def _member(self, deployment: str) -> _Member:
        for m in self.members:
            if m.id == deployment:
                return m
        raise KeyError(deployment)

    # -- selection ---------------------------------------------------------------------
    def key_hash(self, request: GenerationRequest | EmbeddingRequest) -> int | None:
        if not self.config.affinity or not isinstance(request, GenerationRequest):
            return None
        return stable_hash(affinity_key(request, self.config.affinity_chars))

    @staticmethod
    def policy_allows(request: GenerationRequest | EmbeddingRequest, member: _Member) -> bool:
        return member.local or _policy(request) is not DataPolicy.LOCAL_ONLY

    def select(
        self,
        request: GenerationRequest | EmbeddingRequest,
        exclude: set[str],
        key_hash: int | None,
        *,
        need_room: bool = True,
    ) -> tuple[_Member, str] | None:
        """The deployment for the next attempt and the decision's name, or None."""
        now = self.now()
        if key_hash is None and len(self.members) == 1:
            return self._select_only(request, exclude, now, need_room)
        usable = [
            m
            for m in self.members
            if m.id not in exclude
            and m.ready()
            and m.breaker.allows(now)
            and (m.has_room() if need_room else m.breaker.state(now) is BreakerState.CLOSED)
        ]
        pool = [m for m in usable if m.local]
        burst = False
        if not pool:
            if _policy(request) is DataPolicy.LOCAL_ONLY:
                return None
            pool = usable
            burst = self._has_local
        if not pool:
            return None
        tier = min(m.deployment.priority for m in pool)
        pool = [m for m in pool if m.deployment.priority == tier]
        if key_hash is not None:
            loads = {m.id: m.outstanding for m in pool}
            chosen, spilled = bounded_choice(self._ring, key_hash, loads, self.config.epsilon)
            member = next(m for m in pool if m.id == chosen)
            decision = "affinity_spill" if spilled else "affinity"
        else:
            loads_list = [Load(m.id, m.outstanding, m.deployment.weight) for m in pool]
            chosen = least_loaded(loads_list, self.rng).id
            member = next(m for m in pool if m.id == chosen)
            decision = "least_loaded"
        return member, "burst" if burst else decision

    def _select_only(
        self,
        request: GenerationRequest | EmbeddingRequest,
        exclude: set[str],
        now: float,
        need_room: bool,
    ) -> tuple[_Member, str] | None:
        """``select`` for a model of one deployment, without affinity: the same checks and
        the same answer, without building the pools (the common case, once per request)."""
        m = self.members[0]
        if (
            m.id in exclude
            or not m.ready()
            or not m.breaker.allows(now)
            or not (m.has_room() if need_room else m.breaker.state(now) is BreakerState.CLOSED)
        ):
            return None
        if not m.local and _policy(request) is DataPolicy.LOCAL_ONLY:
            return None
        if m.deployment.weight < 1:  # least_loaded refuses it: keep its error
            least_loaded([Load(m.id, m.outstanding, m.deployment.weight)], self.rng)
        return m, "least_loaded"

    # -- serving -----------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> EngineStream:
        """Admit on the first deployment that accepts at once (or raise the capacity error
        when none does); failover before the first event happens while the stream is read."""
        plan = _Plan(self, request)
        lease, inner = _open(plan)
        return RoutedStream(_Relay(plan, lease, inner))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embeddings route like generations (no affinity: there is no cache to reuse) and
        fail over on any retryable error: nothing has reached the client yet."""
        plan = _Plan(self, request)
        while True:
            lease = plan.lease()
            if lease is None:
                raise plan.final_error()
            try:
                result = await lease.member.engine.embed(request)
            except Exception as exc:
                failure = failure_for(exc)
                if failure.refused:  # the engine refused at once: nothing reached it
                    lease.release()
                    plan.refused(exc)
                    continue
                lease.failed(exc)
                lease.release()
                delay = plan.may_retry(exc)
                if delay is None:
                    if failure.failover:
                        raise plan.final_error() from exc
                    raise
                await asyncio.sleep(delay)
                continue
            except BaseException:
                lease.release()
                raise
            lease.succeeded()
            lease.release()
            return result

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Counted by a deployment the request may go to (the data policy holds: the prompt
        is sent to count it), the next one on failure; nothing is generated."""
        errors: list[BaseException] = []
        for source in (self, *self.fallbacks):
            tried: set[str] = set()
            while (choice := source.select(request, tried, None, need_room=False)) is not None:
                member = choice[0]
                tried.add(member.id)
                try:
                    return await member.engine.count_prompt_tokens(request)
                except Exception as exc:
                    failure = failure_for(exc)
                    if not (failure.refused or failure.deployment_failed):
                        raise
                    errors.append(exc)
        plan = _Plan(self, request)
        plan.errors = errors
        raise plan.final_error()

    # -- active health checks ----------------------------------------------------------
    async def _watch(self) -> None:
        """Probe every deployment whose circuit has cooled down (half-open, no probe out):
        success closes the circuit, failure opens it for another cool-down."""
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            now = self.now()
            due = [
                m
                for m in self.members
                if m.breaker.state(now) is BreakerState.HALF_OPEN and m.breaker.allows(now)
            ]
            try:
                await asyncio.gather(*(self._probe(m) for m in due))
            except Exception:  # a bug here must not end the health checks
                log.exception("health check failed", extra={"model": self.model})

    async def _probe(self, member: _Member) -> None:
        member.breaker.begin(self.now())
        try:
            async with asyncio.timeout(self.config.probe_timeout_s):
                if member.deployment.probe is not None:
                    await member.deployment.probe()
                elif not member.ready():
                    raise EngineNotReady(member.id)
        except asyncio.CancelledError:
            member.breaker.abandon()
            raise
        except Exception:
            member.breaker.record_failure(self.now())
            return
        member.breaker.record_success(self.now())
        log.info("deployment back", extra={"model": self.model, "deployment": member.id})


def _policy(request: GenerationRequest | EmbeddingRequest) -> DataPolicy:
    return request.routing.data_policy


def _open(plan: _Plan) -> tuple[_Lease, EngineStream]:
    """The next lease whose engine admits the request at once, with its stream."""
    while True:
        lease = plan.lease()
        if lease is None:
            raise plan.final_error()
        try:
            inner = lease.member.engine.stream(plan.request)  # type: ignore[arg-type]
        except CapacityError as exc:  # refused synchronously: nothing reached it
            lease.failed(exc)
            lease.release()
            plan.refused(exc)
            continue
        except BaseException:
            lease.release()
            raise
        return lease, inner


class _Relay:
    """The events of one routed generation: waits for the first event, failing over to the
    next deployment while none has come, then relays the serving deployment's events."""

    def __init__(self, plan: _Plan, lease: _Lease, inner: EngineStream) -> None:
        self.plan = plan
        self.lease = lease
        self.inner = inner
        self.stream: RoutedStream | None = None

    def bind(self, stream: RoutedStream) -> None:
        self.stream = stream
        self._describe()

    def _describe(self) -> None:
        assert self.stream is not None
        deployment = self.lease.member.deployment
        route = self.stream.route
        route.deployment = deployment.id
        route.data_class = deployment.data_class.value
        route.decision = self.lease.decision
        route.attempts = self.plan.attempts
        self.stream.tracker = self.inner.tracker  # the serving attempt's counts are billed

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            first = await self._first()
            yield first
            while True:
                try:
                    event = await self.inner.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    self.lease.failed(exc)  # mid-stream: recorded, never retried
                    raise
                yield event
        finally:
            await self.close()

    async def _first(self) -> StreamEvent:
        while True:
            try:
                event = await self._await_first()
            except StopAsyncIteration:
                exc: Exception = EngineFailure("The deployment ended before its first event.")
            except Exception as error:
                exc = error
            else:
                self.lease.succeeded()
                return event
            self.lease.failed(exc)
            await self.close()
            delay = self.plan.may_retry(exc)
            if delay is None:
                if failure_for(exc).failover:
                    raise self.plan.final_error() from exc
                raise exc
            await asyncio.sleep(delay)
            self.lease, self.inner = _open(self.plan)
            self._describe()

    async def _await_first(self) -> StreamEvent:
        limit = self.plan.router.config.first_token_timeout_s
        if limit is None:
            return await self.inner.__anext__()
        try:
            async with asyncio.timeout(limit):
                return await self.inner.__anext__()
        except TimeoutError:
            raise EngineTimeout("first_token", limit) from None

    def release(self) -> None:
        self.lease.release()

    async def close(self) -> None:
        self.lease.release()
        await self.inner.aclose()
        cost = self.inner.route.upstream_cost
        if self.stream is not None and cost is not None and self.stream.route.upstream_cost is None:
            self.stream.route.upstream_cost = cost


class RoutedStream(EngineStream):
    """An :class:`EngineStream` whose ``route`` names the serving deployment and whose
    ``tracker`` is that deployment's; closing it closes the deployment's stream, even one
    never read.

    The first event comes through ``_Relay.events`` (failover while none has come); every
    later one is read from the serving deployment's stream directly, as ``events`` would
    relay it, one async generator less per event on the hot path."""

    def __init__(self, relay: _Relay) -> None:
        super().__init__(relay.events(), relay.inner.tracker, relay.release)
        self._relay = relay
        self._relaying = False  # the first event came: read the deployment's stream directly
        relay.bind(self)

    async def __anext__(self) -> StreamEvent:
        if not self._relaying:
            event = await super().__anext__()
            self._relaying = True
            return event
        relay = self._relay
        try:
            event = await relay.inner.__anext__()
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, StopAsyncIteration):
                relay.lease.failed(exc)  # mid-stream: recorded, never retried
            try:
                await relay.close()
            finally:
                self._release_once()
            raise
        if isinstance(event, Finished):
            self._take_cost()
        return event

    async def aclose(self) -> None:
        relay = self._relay
        try:
            await super().aclose()
        finally:
            try:
                await relay.close()
            finally:
                relay.stream = None  # closed: no cycle left for the garbage collector
