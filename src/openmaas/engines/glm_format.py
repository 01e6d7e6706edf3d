"""Serving GLM models from an engine that completes raw prompts.

The chat is rendered with the GLM template of the model's family (``glm.templates``), the
inner engine completes that prompt, and its raw output (``<think>``, ``<tool_call>`` ...)
is parsed into canonical reasoning, text and tool-call events (``glm.parser``). Usage and
stopping are the inner engine's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from openmaas.engines.base import Engine, ModelKind, SlotEngine, UsageTracker
from openmaas.glm import GlmFamily, GlmOutputParser, render_prompt, stop_strings


class GlmFormatEngine(SlotEngine):
    def __init__(self, model: str, family: GlmFamily, inner: Engine) -> None:
        capacity = inner.capacity()
        super().__init__(model, ModelKind.CHAT, slots=capacity.slots, queue=capacity.queue)
        self.family = family
        self._inner = inner

    async def _load(self) -> None:
        await self._inner.start()

    async def _unload(self) -> None:
        await self._inner.stop()

    def prompt_request(self, request: GenerationRequest) -> GenerationRequest:
        """The raw-prompt request the inner engine completes."""
        tools = request.tools if request.wants_tools else ()
        prompt = render_prompt(self.family, request.messages or (), tools, request.thinking)
        stops = tuple(dict.fromkeys(request.sampling.stop + stop_strings(self.family)))
        return dataclasses.replace(
            request,
            messages=None,
            prompt=prompt,
            tools=(),
            sampling=dataclasses.replace(request.sampling, stop=stops),
        )

    async def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        inner = self.prompt_request(request) if request.is_chat else request
        return await self._inner.count_prompt_tokens(inner)

    async def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        if not request.is_chat:
            inner_request = request
        else:
            inner_request = self.prompt_request(request)
        tools = request.tools if request.wants_tools else ()
        parser = GlmOutputParser.for_request(
            self.family, request.thinking, tools, id_prefix=request.request_id
        )
        stream = self._inner.stream(inner_request)
        try:
            async for event in stream:
                if isinstance(event, TextDelta) and request.is_chat:
                    for parsed in parser.feed(event.text):
                        yield _counted(parsed, event.completion_tokens)
                elif isinstance(event, Finished) and request.is_chat:
                    for parsed in parser.finish():
                        yield _counted(parsed, event.usage.completion_tokens)
                    calls = parser.tool_call_count > 0
                    yield Finished(FinishReason.TOOL_CALLS if calls else event.reason, event.usage)
                else:
                    yield event
        finally:
            await stream.aclose()
            tracker.prompt_tokens = stream.tracker.prompt_tokens
            tracker.cached_tokens = stream.tracker.cached_tokens
            tracker.completion_tokens = stream.tracker.completion_tokens


def _counted(
    event: TextDelta | ReasoningDelta | ToolCallDelta, completion_tokens: int
) -> TextDelta | ReasoningDelta | ToolCallDelta:
    return dataclasses.replace(event, completion_tokens=completion_tokens)
