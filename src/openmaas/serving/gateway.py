"""The metered request path: admission to an engine, the stream, and one usage record.

``Gateway.generate`` admits the request (rate limits, then a hold for its worst-case
charge: ``billing/accountant.py``) before any engine sees it, and returns a ``Generation``
only once the engine has produced its first event, so every failure before that still
becomes a proper HTTP error. Whatever happens next (finished, length, client gone, engine
error, shutdown), ``Generation.aclose()`` stops the engine, settles the hold and appends
exactly one usage record, shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

import anyio

from openmaas.aio import finish_despite_cancellation
from openmaas.core.clock import Clock
from openmaas.core.errors import CapacityError, EngineFailure, EngineTimeout, InvalidRequest
from openmaas.core.termination import Termination, for_interruption, from_finish_reason
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    GenerationRequest,
    StreamEvent,
    Usage,
)
from openmaas.core.usage import UsageRecord
from openmaas.engines.base import EngineStream, ModelKind
from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant, Ticket
from openmaas.catalog.served import ModelCatalog

log = logging.getLogger("openmaas.gateway")


class Gateway:
    def __init__(
        self,
        catalog: ModelCatalog,
        accountant: Accountant,
        clock: Clock,
        shutting_down: Callable[[], bool],
    ) -> None:
        self.catalog = catalog
        self.accountant = accountant
        self._clock = clock
        self._shutting_down = shutting_down
        self._open = 0  # generations not yet closed (their usage not yet recorded)

    async def generate(
        self, principal: Principal, request: GenerationRequest, endpoint: str
    ) -> Generation:
        served = self.catalog.for_kind(request.model, ModelKind.CHAT)
        engine = served.engine
        started = self._clock.monotonic()
        ticket = await self.accountant.admit(
            principal,
            served.name,
            endpoint,
            request.request_id,
            count_prompt=lambda: engine.count_prompt_tokens(request),
            max_tokens=request.sampling.max_tokens,
            context_length=served.context_length,
        )
        request = replace(
            request, routing=replace(request.routing, data_policy=ticket.data_policy)
        )
        try:
            stream = engine.stream(request)  # may refuse: 429 / 503, nothing reached it
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.accountant.cancel(ticket)
            raise
        generation = Generation(self, principal, request, endpoint, stream, ticket, started)
        self._open += 1
        try:
            await generation.prime()
        except CapacityError:  # e.g. every deployment refused: nothing was served
            await generation.abandon()
            raise
        except BaseException:
            await generation.aclose()
            raise
        return generation

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens ``request`` would read; nothing is generated or recorded."""
        engine = self.catalog.for_kind(request.model, ModelKind.CHAT).engine
        return await engine.count_prompt_tokens(request)

    async def embed(
        self,
        principal: Principal,
        request: EmbeddingRequest,
        endpoint: str,
        headers: dict[str, str] | None = None,
    ) -> EmbeddingResult:
        """Embed, metered; ``headers`` (if given) receives the admission's rate-limit headers."""
        served = self.catalog.for_kind(request.model, ModelKind.EMBEDDING)
        started = self._clock.monotonic()
        ticket = await self.accountant.admit(
            principal,
            served.name,
            endpoint,
            request.request_id,
            count_prompt=lambda: _embedding_token_bound(request, served.context_length),
            max_tokens=0,
            context_length=served.context_length,
        )
        if headers is not None and ticket.limit is not None:
            headers.update(ticket.limit.headers)
        reached, termination, error, usage = True, Termination.FINISHED, None, Usage()
        request = replace(
            request, routing=replace(request.routing, data_policy=ticket.data_policy)
        )
        try:
            result = await served.engine.embed(request)
            usage = result.usage
            return result
        except CapacityError:
            reached = False  # refused before the engine saw it: nothing to record
            raise
        except InvalidRequest as exc:
            termination, error = Termination.REJECTED, exc.message
            raise
        except EngineTimeout as exc:
            termination, error = Termination.TIMEOUT, exc.message
            raise
        except EngineFailure as exc:
            termination, error = Termination.ENGINE_ERROR, exc.message
            raise
        except BaseException:
            termination = for_interruption(shutting_down=self._shutting_down())
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if not reached:
                    await self.accountant.cancel(ticket)
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
                        latency_ms=self.elapsed_ms(started),
                        error=error,
                    )
                    await self.finish(ticket, record)

    async def finish(self, ticket: Ticket, record: UsageRecord) -> UsageRecord:
        """Settle and append the usage record (one transaction). The write runs as its own
        task and is waited for even if the caller is cancelled again meanwhile (a
        cancellation is re-raised afterwards)."""
        try:
            return await finish_despite_cancellation(self.accountant.finish(ticket, record))
        except Exception:
            # The record is also logged in full, so an operator can replay it.
            log.exception("failed to append usage record", extra={"usage": record})
            raise

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every generation has recorded its usage (for shutdown)."""
        with anyio.move_on_after(timeout):
            while self._open:
                await asyncio.sleep(0.01)
        return self._open == 0

    def closed_one(self) -> None:
        self._open -= 1

    def shutting_down(self) -> bool:
        return self._shutting_down()

    def elapsed_ms(self, since: float) -> int:
        return max(0, round((self._clock.monotonic() - since) * 1000))


class Generation:
    """An admitted, metered generation: iterate its events, and always ``aclose()`` it."""

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        request: GenerationRequest,
        endpoint: str,
        stream: EngineStream,
        ticket: Ticket,
        started: float,
    ) -> None:
        self.request = request
        self._gateway = gateway
        self._principal = principal
        self._endpoint = endpoint
        self._stream = stream
        self._ticket = ticket
        self._started = started
        self._first: StreamEvent | None = None
        self._ttft_ms: int | None = None
        self._finished: Finished | None = None
        self._termination: Termination | None = None
        self._error: str | None = None
        self._closed = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def limit_headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` as of admission (empty when no tier limits the caller)."""
        limit = self._ticket.limit
        return dict(limit.headers) if limit is not None else {}

    async def prime(self) -> None:
        self._first = await self._next()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._first is not None:
            event, self._first = self._first, None
            return event
        if self._finished is not None:
            raise StopAsyncIteration
        return await self._next()

    async def _next(self) -> StreamEvent:
        try:
            event = await self._stream.__anext__()
        except StopAsyncIteration:
            if self._finished is None:
                self._fail(Termination.ENGINE_ERROR, "the engine ended without finishing")
                raise EngineFailure("The engine ended the stream unexpectedly.") from None
            raise
        except InvalidRequest as exc:
            self._fail(Termination.REJECTED, exc.message)
            raise
        except EngineTimeout as exc:
            self._fail(Termination.TIMEOUT, exc.message)
            raise
        except EngineFailure as exc:
            self._fail(Termination.ENGINE_ERROR, exc.message)
            raise
        except CapacityError:
            if self._ttft_ms is None and self._finished is None:
                raise  # refused before serving anything (``Gateway.generate`` abandons it)
            self._fail(Termination.ENGINE_ERROR, "the engine refused mid-stream")
            raise EngineFailure("The engine failed.") from None
        except Exception as exc:
            self._fail(Termination.ENGINE_ERROR, f"{type(exc).__name__}: {exc}")
            raise EngineFailure("The engine failed.") from exc
        if isinstance(event, Finished):
            self._finished = event
            self._termination = from_finish_reason(event.reason)
            return event
        if self._ttft_ms is None:  # the first token of any kind: text, reasoning, tool call
            self._ttft_ms = self._gateway.elapsed_ms(self._started)
        self._gateway.accountant.checkpoint(self._ticket, self._stream.tracker.snapshot)
        return event

    def _fail(self, termination: Termination, error: str) -> None:
        if self._termination is None:
            self._termination = termination
            self._error = error

    async def abandon(self) -> None:
        """Before the first event, the engine (or every deployment) refused: like a refusal
        at ``engine.stream``, nothing is recorded and the hold and limits are released."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self._stream.aclose()
                await self._gateway.accountant.cancel(self._ticket)
            finally:
                self._gateway.closed_one()

    async def aclose(self) -> UsageRecord | None:
        """Stop the engine if it still runs and append the usage record (once)."""
        if self._closed:
            return None
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
            termination = self._termination or for_interruption(
                shutting_down=self._gateway.shutting_down()
            )
            usage = self._finished.usage if self._finished else self._stream.tracker.snapshot()
            route = self._stream.route
            record = UsageRecord(
                request_id=self.request.request_id,
                key_id=self._principal.key_id,
                org_id=self._principal.org_id,
                model=self.request.model,
                endpoint=self._endpoint,
                usage=usage,
                termination=termination,
                started_at_ms=self._ticket.request.started_at_ms,
                ttft_ms=self._ttft_ms,
                latency_ms=self._gateway.elapsed_ms(self._started),
                error=self._error,
                deployment=route.deployment,
                data_class=route.data_class,
                route=route.decision,
                attempts=route.attempts,
                upstream_cost=route.upstream_cost,
            )
            try:
                record = await self._gateway.finish(self._ticket, record)
            finally:
                self._gateway.closed_one()
        return record


async def _embedding_token_bound(request: EmbeddingRequest, context: int | None) -> int:
    """At most this many tokens: a WordPiece or byte-level tokenizer makes no more tokens
    than UTF-8 bytes, plus two special tokens, and each input is cut at the context."""
    total = 0
    for text in request.inputs:
        tokens = len(text.encode()) + 2
        total += tokens if context is None else min(tokens, context)
    return total
