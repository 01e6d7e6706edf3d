"""A generation once admitted (``Gateway.start``): its engine's events handed out (after
moderation, when the gateway has a moderator; kept for prompt logging when the
organization has it on), a revoked key's wait cut short, and exactly one ``settle`` (or
``cancel``) of whoever admitted it (a ``Settlement``) however it ends: ``aclose`` stops
the engine and settles, shielded from cancellation. How the generation ended is an
``Outcome``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from openmaas.aio import finish_despite_cancellation
from openmaas.core.errors import CapacityError, EngineFailure, InvalidRequest
from openmaas.core.keys import KeyRevoked
from openmaas.core.termination import Termination, failure_for, from_finish_reason
from openmaas.core.tracing import TraceSpan
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    Usage,
)
from openmaas.core.usage import UsageRecord
from openmaas.engines.base import EngineStream, Route
from openmaas.moderation import FILTERED_OUTPUT, OutputGuard
from openmaas.serving.transcripts import Transcript

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation ended, as its usage record states it."""

    usage: Usage
    termination: Termination | None  # None: cut off from outside (the client, a shutdown)
    ttft_ms: int | None
    error: str | None
    route: Route


class Settlement(Protocol):
    """What a generation asks of whoever admitted it: the time since admission, a
    checkpoint of its running count, and, once, either ``cancel`` (nothing was served: the
    hold and limits are released, nothing recorded) or ``settle`` (the usage record)."""

    @property
    def limit_headers(self) -> dict[str, str]: ...

    def elapsed_ms(self) -> int: ...

    def checkpoint(self, usage: Callable[[], Usage]) -> None: ...

    async def cancel(self) -> None: ...

    async def settle(self, outcome: Outcome) -> UsageRecord: ...


class Generation:
    """An admitted, metered generation: iterate its events, and always ``aclose()`` it."""

    def __init__(
        self,
        request: GenerationRequest,
        stream: EngineStream,
        settlement: Settlement,
        guard: OutputGuard | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.request = request
        self._stream = stream
        self._settlement = settlement
        self._guard = guard  # None: output passes unchecked
        self._transcript = transcript  # None: the organization's prompts are not logged
        self._ready: deque[StreamEvent] = deque()  # checked events not yet handed out
        self._first: StreamEvent | None = None
        self._ttft_ms: int | None = None
        self._finished: Finished | None = None
        self._termination: Termination | None = None
        self._error: str | None = None
        self._closed = False
        self._revoked = False
        self.attempt: TraceSpan | None = None  # traced, an engine served directly: its span
        # While the engine's next event is awaited: the task awaiting it and how many
        # cancellations it had then; ``revoke`` cancels that wait (``_taken_back`` undoes it).
        self._waiter: asyncio.Task[object] | None = None
        self._waiter_cancelling = 0
        self._cancelled: asyncio.Task[object] | None = None

    async def start(self) -> Generation:
        """This generation once its engine has produced the first event. A refusal before
        it (the engine, or every deployment, could not take the request) is cancelled like
        a refusal at ``engine.stream``: nothing recorded, hold and limits released. Any
        other failure is settled (one usage record) and raised."""
        try:
            self._first = await self._next()
        except CapacityError:
            await self._cancel()
            raise
        except BaseException:
            await self.aclose()
            raise
        return self

    def revoke(self) -> None:
        """End this generation: its key was revoked. A wait for the engine's next event is
        cancelled at once; the next event asked for (or the one awaited) raises
        ``KeyRevoked``, and ``aclose`` settles it as ``key_revoked``. Nothing happens to a
        generation that has finished or is closed."""
        if self._revoked or self._finished is not None or self._closed:
            return
        self._revoked = True
        waiter = self._waiter
        if waiter is not None and self._cancelled is None:
            self._cancelled = waiter
            waiter.cancel("the API key was revoked")

    def _taken_back(self) -> bool:
        """Undo ``revoke``'s cancellation of the waiting task, as ``asyncio.timeout`` does;
        False when another cancellation arrived meanwhile (it wins: the task must end)."""
        task, self._cancelled = self._cancelled, None
        return task is None or task.uncancel() <= self._waiter_cancelling

    def _revocation(self) -> KeyRevoked:
        self._fail(Termination.KEY_REVOKED, "the API key was revoked")
        return KeyRevoked("This API key has been revoked.")

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def limit_headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` as of admission (empty when no tier limits the caller)."""
        return self._settlement.limit_headers

    def __aiter__(self) -> Generation:
        return self

    def ready(self) -> bool:
        """Whether the next event is in hand: checked already, or among the events the
        engine got in one read. False when it may have to wait for the engine."""
        return bool(self._ready) or self._first is not None or self._stream.tracker.ready > 0

    async def __anext__(self) -> StreamEvent:
        if self._guard is not None:
            event = await self._checked()
        elif self._first is not None:
            event, self._first = self._first, None
        elif self._finished is not None:
            raise StopAsyncIteration
        else:
            event = await self._next()
        if self._transcript is not None:  # the organization's prompts are logged
            self._transcript.saw(event)
        return event

    async def _checked(self) -> StreamEvent:
        """The next event once moderation has passed it: text is handed out as its window
        clears, a tail held back; refused content ends the stream (``content_filter``)."""
        assert self._guard is not None
        while not self._ready:
            if self._first is not None:
                event, self._first = self._first, None
            elif self._finished is not None:
                raise StopAsyncIteration
            else:
                event = await self._next()
            await self._screen(self._guard, event)
        return self._ready.popleft()

    async def _screen(self, guard: OutputGuard, event: StreamEvent) -> None:
        if isinstance(event, Finished):
            for (kind, choice), text in guard.drain():  # the held-back tails, checked
                count = event.usage.completion_tokens
                self._ready.append(
                    TextDelta(text, count, choice=choice)
                    if kind == "text"
                    else ReasoningDelta(text, count, choice=choice)
                )
            self._ready.append(event)
            return
        if not isinstance(event, TextDelta | ReasoningDelta):
            self._ready.append(event)
            return
        kind = "text" if isinstance(event, TextDelta) else "reasoning"
        text, cut = await guard.feed((kind, event.choice), event.text)
        if text:
            self._ready.append(replace(event, text=text))
        if cut:
            self._cut_by_moderation()

    def _cut_by_moderation(self) -> None:
        """End the stream at refused content: the engine is stopped by ``aclose``, the
        request is settled as ``content_filtered`` for the engine's counts so far."""
        n = self.request.sampling.n
        reason = FinishReason.CONTENT_FILTER
        finished = Finished(reason, self._stream.tracker.snapshot(), (reason,) * n if n > 1 else ())
        self._finished = finished
        self._fail(Termination.CONTENT_FILTERED, FILTERED_OUTPUT)
        self._ready.append(finished)

    async def _next(self) -> StreamEvent:
        if self._revoked:
            raise self._revocation()
        waiter = self._waiter = asyncio.current_task()
        self._waiter_cancelling = waiter.cancelling() if waiter is not None else 0
        try:
            event = await self._stream.__anext__()
        except asyncio.CancelledError:
            if self._cancelled is not None and self._taken_back():  # revoke's, and only it
                raise self._revocation() from None
            raise
        except StopAsyncIteration:
            if self._finished is None:
                self._fail(Termination.ENGINE_ERROR, "the engine ended without finishing")
                raise EngineFailure("The engine ended the stream unexpectedly.") from None
            raise
        except Exception as exc:
            if self._revoked:  # the engine answered the cancellation with an error of its own
                self._taken_back()
                raise self._revocation() from None
            failure = failure_for(exc)
            if failure.termination is None:  # a capacity error
                if self._ttft_ms is None and self._finished is None:
                    raise  # refused before serving anything (``open`` cancels it)
                self._fail(Termination.ENGINE_ERROR, "the engine refused mid-stream")
                raise EngineFailure("The engine failed.") from None
            self._fail(failure.termination, failure.error)
            if not isinstance(exc, EngineFailure | InvalidRequest):
                raise EngineFailure("The engine failed.") from exc
            raise
        finally:
            self._waiter = None
        if self._cancelled is not None:  # revoked, and the engine answered all the same
            if self._taken_back():
                raise self._revocation()
        if isinstance(event, Finished):
            self._finished = event
            self._termination = from_finish_reason(event.reason)
            return event
        if self._ttft_ms is None:  # the first token of any kind: text, reasoning, tool call
            self._ttft_ms = self._settlement.elapsed_ms()
        self._settlement.checkpoint(self._stream.tracker.snapshot)
        return event

    async def _stop_engine(self) -> None:
        """Close the engine's stream (it stops generating) and end the attempt's trace step."""
        try:
            await self._stream.aclose()
        finally:
            if self.attempt is not None:
                self._end_attempt(self.attempt)

    def _fail(self, termination: Termination, error: str | None) -> None:
        if self._termination is None:
            self._termination = termination
            self._error = error

    async def _cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        await finish_despite_cancellation(self._stop_and(self._settlement.cancel))

    async def aclose(self) -> UsageRecord | None:
        """Stop the engine if it still runs and append the usage record (once). Both run to
        their end even if the caller is cancelled meanwhile (a client hanging up); the
        cancellation comes after."""
        if self._closed:
            return None
        self._closed = True
        return await finish_despite_cancellation(self._stop_and(self._settle))

    async def _stop_and(self, then: Callable[[], Awaitable[T]]) -> T:
        """Stop the engine, then ``then()`` however the stop went."""
        try:
            await self._stop_engine()
        finally:
            result = await then()
        return result

    async def _settle(self) -> UsageRecord:
        record = await self._settlement.settle(self._outcome())
        if self._transcript is not None:
            self._transcript.log(record)
        return record

    @property
    def finish_reasons(self) -> tuple[str, ...]:
        """How each choice finished (empty when the generation did not finish)."""
        finished = self._finished
        if finished is None:
            return ()
        return tuple(r.value for r in finished.choices or (finished.reason,))

    def _end_attempt(self, span: TraceSpan) -> None:
        """The traced attempt of an engine served directly ended with the generation."""
        termination = self._termination
        if termination in _ATTEMPT_FAILED:
            span.end({"openmaas.attempt.outcome": "error"}, self._error or termination)
        else:
            served = self._ttft_ms is not None or self._finished is not None
            span.end({"openmaas.attempt.outcome": "served" if served else "abandoned"})

    def _outcome(self) -> Outcome:
        finished = self._finished
        usage = finished.usage if finished else self._stream.tracker.snapshot()
        return Outcome(usage, self._termination, self._ttft_ms, self._error, self._stream.route)


_ATTEMPT_FAILED = frozenset({Termination.ENGINE_ERROR, Termination.TIMEOUT, Termination.REJECTED})
