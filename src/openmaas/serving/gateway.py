"""The metered request path: admission to an engine, the stream, and one usage record.

``Gateway.generate`` admits the request (rate limits, then a hold for its worst-case
charge: ``billing/accountant.py``) before any engine sees it, and returns a ``Generation``
only once the engine has produced its first event, so every failure before that still
becomes a proper HTTP error. Whatever happens next (finished, length, client gone, engine
error, shutdown), ``Generation.aclose()`` stops the engine, settles the hold and appends
exactly one usage record, shielded from cancellation.

The two meet at one seam: a ``Generation`` (``serving/generation.py``) knows its engine
stream and how it ended (an ``Outcome``); what admission, settlement and the usage record
need is behind the ``Settlement`` the gateway hands it (``_Admitted``, one per
generation). How an exception ends a request is ``core/termination.py``'s
``failure_for``, for generations and embeddings alike.

A key restricted to models (``Principal.models``) is refused any other before admission,
as a model that does not exist (404, ``ModelCatalog.check_allowed``): every protocol's
generations, embeddings and async jobs pass ``reserve`` or ``embed``.

The gateway keeps its open generations by key: when the change feed reports a key revoked
(``apply_changes``), each of that key's generations is ended (``Generation.revoke``): the
wait for the engine's next event is cancelled, the consumer gets ``KeyRevoked`` (an error
event in a stream), and the request is settled as ``key_revoked`` for what the engine had
counted.

Moderation (``docs/moderation.md``), when the gateway has a moderator: a request whose
texts it refuses is refused before admission (``ContentFiltered``: nothing held, nothing
recorded); a generation's text and reasoning pass an ``OutputGuard``, which holds back a
tail until the next window is checked and, at refused content, ends the stream with
``FinishReason.CONTENT_FILTER`` (settled as ``content_filtered`` for what the engine had
counted). Without one, nothing of it runs.

Prompt logging (``serving/transcripts.py``): a generation of an organization an operator
has turned it on for keeps a ``Transcript`` of what the client was sent and logs it with
the request once the usage record is written; for any other organization nothing is kept.

Traces (``docs/traces.md``), when the request carries one (``RoutingHints.trace``,
``core/tracing.py``): the request's generation, its ``admission``, ``routing`` (the
engine's stream until its first event), the one attempt of an engine served directly (a
router reports its own) and ``settlement`` with the usage record are reported to it.
Without one, the gateway only tests that it has none.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import anyio

from openmaas.accounts.auth import Principal
from openmaas.accounts.keycache import KEY_REVOKED
from openmaas.aio import finish_despite_cancellation
from openmaas.billing.accountant import Accountant, Ticket
from openmaas.catalog.served import ModelCatalog
from openmaas.core.clock import Clock
from openmaas.core.errors import (
    CapacityError,
    ContentFiltered,
    OpenMaaSError,
)
from openmaas.core.termination import (
    Termination,
    failure_for,
    for_interruption,
)
from openmaas.core.tracing import RequestTrace, TraceSpan
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    RoutingHints,
    Usage,
)
from openmaas.core.usage import UsageRecord
from openmaas.engines.base import ModelKind
from openmaas.moderation import FILTERED_INPUT, Moderator, OutputGuard
from openmaas.serving.bounds import RequestBounds, embedding_token_bound
from openmaas.serving.generation import Generation, Outcome
from openmaas.serving.trace_steps import (
    admission_attributes,
    end_spans,
    route_attributes,
    settlement_attributes,
    trace_routing,
)
from openmaas.serving.transcripts import Transcript

log = logging.getLogger("openmaas.gateway")


class Change(Protocol):
    """What the gateway reads of a change the change feed reports (``store/changes.py``)."""

    @property
    def action(self) -> str: ...

    @property
    def target(self) -> str: ...


class Meter(Protocol):
    """Where the gateway reports each usage record as written and each refusal (the
    server's metrics, ``server/telemetry/metrics.py``); both are called on the request path."""

    def recorded(self, record: UsageRecord) -> None: ...

    def refused(self, endpoint: str, model: str, exc: BaseException) -> None: ...


class Gateway:
    def __init__(
        self,
        catalog: ModelCatalog,
        accountant: Accountant,
        clock: Clock,
        shutting_down: Callable[[], bool],
        bounds: RequestBounds | None = None,
        cache_key: bytes | None = None,
        meter: Meter | None = None,
        moderator: Moderator | None = None,
    ) -> None:
        self.catalog = catalog
        self._moderator = moderator  # None: moderation off, nothing checked
        self._meter = meter  # None: nothing counted
        self.bounds = bounds or RequestBounds()
        # Keys the organizations' prompt-cache scopes (``cache_scope``); one of its own when
        # none is given: isolated still, but not shared with other processes.
        self._cache_key = cache_key or secrets.token_bytes(32)
        self.accountant = accountant
        self._clock = clock
        self._shutting_down = shutting_down
        self._open = 0  # generations not yet closed (their usage not yet recorded)
        self._live: dict[str, set[Generation]] = {}  # key id -> its generations not yet closed

    async def generate(
        self, principal: Principal, request: GenerationRequest, endpoint: str
    ) -> Generation:
        return await self.start(await self.reserve(principal, request, endpoint))

    async def reserve(
        self, principal: Principal, request: GenerationRequest, endpoint: str
    ) -> Reservation:
        """Admit ``request`` (bounds, rate limits, its worst-case charge) without starting
        it: an async job is admitted at submit and started when its turn comes. End the
        reservation with :meth:`start` or :meth:`release`."""
        trace = request.routing.trace
        admission: TraceSpan | None = None
        if trace is not None:
            trace.generation(request, endpoint, principal.org_id)
            admission = trace.step("admission")
        try:
            self.catalog.check_allowed(principal.models, request.model)  # the key's models only
            served = self.catalog.for_kind(request.model, ModelKind.CHAT)
        except OpenMaaSError as exc:
            if admission is not None:
                admission.end(None, exc)
            self._refused(endpoint, "", exc)  # not served: the client's name is no label
            raise
        n = request.sampling.n  # n choices: n generations, each reading the prompt
        engine = served.engine

        async def count_prompt() -> int:
            return n * await engine.count_prompt_tokens(request)

        try:
            self.bounds.check_generation(request)  # before admission: a refusal costs nothing
            if self._moderator is not None:
                await self._moderate(principal, request)
            started = self._clock.monotonic()
            ticket = await self.accountant.admit(
                principal,
                served.name,
                endpoint,
                request.request_id,
                count_prompt=count_prompt,
                max_tokens=_times(n, request.sampling.max_tokens),
                context_length=_times(n, served.context_length),
            )
        except BaseException as exc:
            if admission is not None:
                admission.end(None, exc)
            if isinstance(exc, OpenMaaSError):
                self._refused(endpoint, request.model, exc)
            raise
        if admission is not None:
            admission.end(admission_attributes(ticket))
        return Reservation(principal, request, endpoint, ticket, started)

    async def _moderate(self, principal: Principal, request: GenerationRequest) -> None:
        """Refuse a request whose texts the moderator refuses (before admission: free)."""
        assert self._moderator is not None
        texts = [request.prompt] if request.prompt is not None else []
        for message in request.messages or ():
            texts.append(message.content)
            if message.reasoning:
                texts.append(message.reasoning)
        if await self._moderator.check_input(principal.org_id, texts) is not None:
            raise ContentFiltered(FILTERED_INPUT)

    async def start(self, reservation: Reservation) -> Generation:
        """Start a reserved request on its model's engine (the one served now); the
        reservation is released if the engine refuses it."""
        principal, ticket = reservation.principal, reservation.ticket
        trace = reservation.request.routing.trace
        routing_span: TraceSpan | None = None
        attempt: TraceSpan | None = None  # an engine served directly: its one attempt
        try:
            served = self.catalog.for_kind(reservation.request.model, ModelKind.CHAT)
            engine = served.engine
            routing = self._routing(reservation.request.routing, principal, ticket)
            request = replace(reservation.request, routing=routing)
            if trace is not None:
                routing_span, attempt = trace_routing(trace, engine, served.name)
            stream = engine.stream(request)  # may refuse: 429 / 503, nothing reached it
        except BaseException as exc:
            if trace is not None:
                end_spans(exc, routing_span, attempt)
            await self.release(reservation)
            self._refused(reservation.endpoint, reservation.request.model, exc)
            raise
        self._open += 1
        admitted = _Admitted(
            self, principal, request, reservation.endpoint, ticket, reservation.started
        )
        guard = (
            OutputGuard(self._moderator, principal.org_id) if self._moderator is not None else None
        )
        transcript = Transcript(request) if ticket.prompt_logging else None
        generation = admitted.generation = Generation(request, stream, admitted, guard, transcript)
        if attempt is not None:
            generation.attempt = attempt
        self._live.setdefault(principal.key_id, set()).add(generation)
        try:
            await generation.start()
        except CapacityError as exc:  # refused before the first event: nothing recorded
            if routing_span is not None:
                routing_span.end(None, exc)
            self._refused(reservation.endpoint, request.model, exc)
            raise
        except BaseException as exc:
            if routing_span is not None:
                routing_span.end(None, exc)
            raise
        if routing_span is not None:
            routing_span.end(route_attributes(stream.route))
        return generation

    async def release(self, reservation: Reservation) -> None:
        """A reserved request that will not start: its limits and hold are given back."""
        with anyio.CancelScope(shield=True):
            await self.accountant.cancel(reservation.ticket)

    async def apply_changes(self, changes: Sequence[Change]) -> None:
        """A change-feed subscriber: a revoked key's generations in flight are ended."""
        for change in changes:
            if change.action == KEY_REVOKED:
                for generation in list(self._live.get(change.target, ())):
                    generation.revoke()

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens ``request`` would read; nothing is generated or recorded."""
        engine = self.catalog.for_kind(request.model, ModelKind.CHAT).engine
        self.bounds.check_generation(request)
        return await engine.count_prompt_tokens(request)

    async def embed(
        self,
        principal: Principal,
        request: EmbeddingRequest,
        endpoint: str,
        headers: dict[str, str] | None = None,
    ) -> EmbeddingResult:
        """Embed, metered; ``headers`` (if given) receives the admission's rate-limit headers."""
        try:
            self.catalog.check_allowed(principal.models, request.model)
            served = self.catalog.for_kind(request.model, ModelKind.EMBEDDING)
        except OpenMaaSError as exc:
            self._refused(endpoint, "", exc)
            raise

        async def count_prompt() -> int:
            return embedding_token_bound(request, served.context_length)

        try:
            self.bounds.check_embedding(request, served.context_length)
            started = self._clock.monotonic()
            ticket = await self.accountant.admit(
                principal,
                served.name,
                endpoint,
                request.request_id,
                count_prompt=count_prompt,
                max_tokens=0,
                context_length=served.context_length,
            )
        except OpenMaaSError as exc:
            self._refused(endpoint, request.model, exc)
            raise
        if headers is not None and ticket.limit is not None:
            headers.update(ticket.limit.headers)
        termination: Termination | None = Termination.FINISHED
        error: str | None = None
        failed: BaseException | None = None
        usage = Usage()
        request = replace(request, routing=self._routing(request.routing, principal, ticket))
        try:
            result = await served.engine.embed(request)
            usage = result.usage
            return result
        except BaseException as exc:
            failure = failure_for(exc, shutting_down=self._shutting_down())
            termination, error, failed = failure.termination, failure.error, exc
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if termination is None:  # refused before the engine saw it: no record
                    await self.accountant.cancel(ticket)
                    self._refused(endpoint, request.model, failed)
                else:
                    record = UsageRecord(
                        request.request_id,
                        principal.key_id,
                        principal.org_id,
                        request.model,
                        endpoint,
                        usage,
                        termination,
                        ticket.request.started_at_ms,
                        ttft_ms=None,
                        latency_ms=self._elapsed_ms(started),
                        error=error,
                    )
                    await self.finish(ticket, record)

    async def finish(self, ticket: Ticket, record: UsageRecord) -> UsageRecord:
        """Settle and append the usage record (one transaction), and count it in the
        metrics: both run to their end even if the caller is cancelled meanwhile, the
        cancellation re-raised afterwards (inside a generation's close, already protected,
        they run in its task)."""
        try:
            return await finish_despite_cancellation(self._write(ticket, record))
        except Exception:
            # The record is also logged in full, so an operator can replay it.
            log.exception("failed to append usage record", extra={"usage": record})
            raise

    async def _write(self, ticket: Ticket, record: UsageRecord) -> UsageRecord:
        written = await self.accountant.finish(ticket, record)
        if self._meter is not None:  # counted where it is made: counters agree with records
            self._meter.recorded(written)
        return written

    def _refused(self, endpoint: str, model: str, exc: BaseException | None) -> None:
        if self._meter is not None and isinstance(exc, OpenMaaSError):
            self._meter.refused(endpoint, model, exc)

    @property
    def open_generations(self) -> int:
        """Generations admitted whose usage record is not yet written."""
        return self._open

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every generation has recorded its usage (for shutdown)."""
        with anyio.move_on_after(timeout):
            while self._open:
                await asyncio.sleep(0.01)
        return self._open == 0

    def _routing(self, hints: RoutingHints, principal: Principal, ticket: Ticket) -> RoutingHints:
        """The organization's data policy, and its prompt-cache scope: a keyed hash of its
        id, so that engines keep prefix caches per organization and an upstream (vLLM's
        ``cache_salt``) never learns the id; the scope is also the key by which engines
        share their slots fairly, weighted by the organization's tier (engines/slots/fair.py)."""
        scope = hmac.new(self._cache_key, principal.org_id.encode(), hashlib.sha256)
        return replace(
            hints,
            data_policy=ticket.data_policy,
            cache_scope=scope.hexdigest()[:32],
            share_weight=ticket.share_weight,
            trace=hints.trace,  # named: ``replace`` would read it with a call per request
        )

    def _elapsed_ms(self, since: float) -> int:
        return max(0, round((self._clock.monotonic() - since) * 1000))

    def _closed(self, admitted: _Admitted) -> None:
        """A generation was settled or cancelled: no longer open, nor revocable."""
        self._open -= 1
        key_id = admitted.key_id
        live = self._live.get(key_id)
        generation, admitted.generation = admitted.generation, None  # no cycle left behind
        if live is not None and generation is not None:
            live.discard(generation)
            if not live:
                del self._live[key_id]


@dataclass(frozen=True, slots=True)
class Reservation:
    """A generation admitted but not started (``Gateway.reserve``)."""

    principal: Principal
    request: GenerationRequest
    endpoint: str
    ticket: Ticket
    started: float  # monotonic time of the admission


class _Admitted:
    """The gateway's side of one admitted generation (a :class:`Settlement`)."""

    __slots__ = (
        "_gateway",
        "_principal",
        "_request",
        "_endpoint",
        "_ticket",
        "_started",
        "generation",
    )

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        request: GenerationRequest,
        endpoint: str,
        ticket: Ticket,
        started: float,
    ) -> None:
        self._gateway = gateway
        self._principal = principal
        self._request = request
        self._endpoint = endpoint
        self._ticket = ticket
        self._started = started
        self.generation: Generation | None = None  # the generation it settles

    @property
    def key_id(self) -> str:
        return self._principal.key_id

    @property
    def limit_headers(self) -> dict[str, str]:
        limit = self._ticket.limit
        return dict(limit.headers) if limit is not None else {}

    def elapsed_ms(self) -> int:
        return self._gateway._elapsed_ms(self._started)

    def checkpoint(self, usage: Callable[[], Usage]) -> None:
        self._gateway.accountant.checkpoint(self._ticket, usage)

    async def cancel(self) -> None:
        try:
            await self._gateway.accountant.cancel(self._ticket)
        finally:
            self._gateway._closed(self)

    async def settle(self, outcome: Outcome) -> UsageRecord:
        gateway = self._gateway
        termination = outcome.termination or for_interruption(
            shutting_down=gateway._shutting_down()
        )
        route = outcome.route
        record = UsageRecord(
            request_id=self._request.request_id,
            key_id=self._principal.key_id,
            org_id=self._principal.org_id,
            model=self._request.model,
            endpoint=self._endpoint,
            usage=outcome.usage,
            termination=termination,
            started_at_ms=self._ticket.request.started_at_ms,
            ttft_ms=outcome.ttft_ms,
            latency_ms=self.elapsed_ms(),
            error=outcome.error,
            deployment=route.deployment,
            data_class=route.data_class,
            route=route.decision,
            attempts=route.attempts,
            upstream_cost=route.upstream_cost,
        )
        trace = self._request.routing.trace
        if trace is not None:
            return await self._settle_traced(trace, record)
        try:
            return await gateway.finish(self._ticket, record)
        finally:
            gateway._closed(self)

    async def _settle_traced(self, trace: RequestTrace, record: UsageRecord) -> UsageRecord:
        """``settle``'s write as the trace's ``settlement`` step, the record told to it."""
        settlement = trace.step("settlement")
        generation = self.generation  # ``_closed`` lets go of it
        try:
            written = await self._gateway.finish(self._ticket, record)
        except BaseException as exc:
            settlement.end(None, exc)
            raise
        finally:
            self._gateway._closed(self)
        trace.recorded(written, generation.finish_reasons if generation is not None else ())
        settlement.end(settlement_attributes(written))
        return written


def cache_scope_key(master_key: bytes) -> bytes:
    """The key of the prompt-cache scopes, derived from the platform's master key: the
    same in every process (workers share the engine host's and vLLM's caches), and
    unrelated to any API key's secret."""
    return hmac.new(master_key, b"openmaas prompt-cache scope", hashlib.sha256).digest()


def _times(n: int, tokens: int | None) -> int | None:
    return None if tokens is None else n * tokens
