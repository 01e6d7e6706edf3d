"""A scriptable fake engine, for tests of what real engines cannot do on demand.

It "generates" the words of a fixed text, one token per word, with configurable delays, and
can fail before the first token (every stream, or the first N) with a chosen error, or after
N tokens. It can also reason first (words of
``reasoning``) and, when the request offers tools, call them (``tool_calls``). Its prompt
count is the number of whitespace-separated words in the prompt. It is only ever served
when configured explicitly (``OPENMAAS_FAKE_MODELS``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from openmaas.core.errors import (
    EngineFailure,
    EngineTimeout,
    InvalidRequest,
    OpenMaaSError,
    UpstreamUnavailable,
)
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    ReasoningDelta,
    RoutingHints,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from openmaas.engines.base import ModelKind, SlotEngine, UsageTracker


class FakeToolCall(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class FakeScript(BaseModel):
    text: str = "Hello from the fake engine."
    first_token_delay: float = Field(0.0, ge=0)
    token_delay: float = Field(0.0, ge=0)
    load_delay: float = Field(0.0, ge=0)
    fail_on_load: bool = False
    fail_before_first_token: bool = False
    fail_after_tokens: int | None = Field(None, ge=0)
    slots: int = Field(4, ge=1)
    queue: int = Field(0, ge=0)
    reasoning: str = ""  # words streamed as reasoning before the text (unless thinking is off)
    tool_calls: list[FakeToolCall] = Field(default_factory=list)  # made when tools are offered
    fail_first_streams: int = Field(0, ge=0)  # the first N streams fail before their first token
    # What a failure before the first token raises (fail_before_first_token, fail_first_streams).
    failure: Literal[
        "engine_failure",
        "upstream_unavailable",
        "timeout_connect",
        "timeout_first_token",
        "invalid_request",
    ] = "engine_failure"


@dataclass
class FakeStats:
    """What the fake actually generated, so tests can see that a stop really stopped it."""

    tokens_generated: int = 0
    streams_started: int = 0
    streams_open: int = 0
    last_prompt: str | None = None  # the raw prompt of the latest completion request
    # The last message (or the prompt) of each stream, in the order they started.
    started: list[str] = field(default_factory=list)
    last_routing: RoutingHints | None = None  # what the latest stream was routed with


class FakeEngine(SlotEngine):
    many_choices = True  # n > 1: n scripted generations

    def __init__(self, model: str, script: FakeScript) -> None:
        super().__init__(model, ModelKind.CHAT, slots=script.slots, queue=script.queue)
        self.script = script
        self.stats = FakeStats()
        # A stream whose last message (or prompt) is a key here waits, before its first
        # token, until that event is set: a test holds a slot as long as it needs.
        self.gates: dict[str, asyncio.Event] = {}

    async def _load(self) -> None:
        await asyncio.sleep(self.script.load_delay)
        if self.script.fail_on_load:
            raise EngineFailure("scripted load failure")

    async def _unload(self) -> None:
        return None

    async def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        return _count_prompt_words(request)

    def _pieces(self, request: GenerationRequest) -> list[tuple[str, Any]]:
        """What this request generates, one token each: reasoning words, text words, calls."""
        script = self.script
        pieces: list[tuple[str, Any]] = []
        if script.reasoning and request.thinking.enabled is not False:
            pieces += [("reasoning", w) for w in _words(script.reasoning)]
        if request.wants_tools and script.tool_calls:
            pieces += [("call", (i, call)) for i, call in enumerate(script.tool_calls)]
        elif script.text:
            pieces += [("text", w) for w in _words(script.text)]
        return pieces

    async def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        script = self.script
        self.stats.streams_started += 1
        number = self.stats.streams_started
        self.stats.last_prompt = request.prompt
        text = _last_text(request)
        self.stats.started.append(text)
        self.stats.last_routing = request.routing
        self.stats.streams_open += 1
        try:
            tracker.prompt_tokens = _count_prompt_words(request)
            await asyncio.sleep(script.first_token_delay)
            gate = self.gates.get(text)
            if gate is not None:
                await gate.wait()
            if script.fail_before_first_token or number <= script.fail_first_streams:
                raise _scripted_failure(script.failure, self.model)
            limit = request.sampling.max_tokens
            pieces = self._pieces(request)
            for index, (kind, piece) in enumerate(pieces):
                if limit is not None and index >= limit:
                    yield Finished(FinishReason.LENGTH, tracker.snapshot())
                    return
                if script.fail_after_tokens is not None and index >= script.fail_after_tokens:
                    raise EngineFailure("scripted failure mid-stream")
                if index and script.token_delay:
                    await asyncio.sleep(script.token_delay)
                tracker.completion_tokens += 1
                self.stats.tokens_generated += 1
                yield _event(kind, piece, tracker)
            calls = any(kind == "call" for kind, _ in pieces)
            reason = FinishReason.TOOL_CALLS if calls else FinishReason.STOP
            yield Finished(reason, tracker.snapshot())
        finally:
            self.stats.streams_open -= 1


def _scripted_failure(kind: str, model: str) -> OpenMaaSError:
    if kind == "upstream_unavailable":
        return UpstreamUnavailable("scripted: upstream unavailable", deployment=model, status=503)
    if kind == "timeout_connect":
        return EngineTimeout("connect", 1.0)
    if kind == "timeout_first_token":
        return EngineTimeout("first_token", 1.0)
    if kind == "invalid_request":
        return InvalidRequest("scripted: invalid request")
    return EngineFailure("scripted failure before the first token")


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def _event(kind: str, piece: Any, tracker: UsageTracker) -> StreamEvent:
    if kind == "reasoning":
        return ReasoningDelta(piece, tracker.completion_tokens)
    if kind == "call":
        number, call = piece
        arguments = json.dumps(call.arguments)
        count = tracker.completion_tokens
        return ToolCallDelta(number, f"call_{number}", call.name, arguments, count)
    return TextDelta(piece, tracker.completion_tokens, tracker.prompt_tokens)


def _last_text(request: GenerationRequest) -> str:
    if request.messages:
        return request.messages[-1].content
    return request.prompt or ""


def _count_prompt_words(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(m.content.split()) for m in request.messages)
    return len((request.prompt or "").split())
