"""Core stream events -> OpenAI server-sent-event frames."""

from __future__ import annotations

from typing import Any

import orjson

from openmaas.core.types import Finished, ReasoningDelta, TextDelta, ToolCallDelta
from openmaas.protocols.openai.adapter import usage_json

DONE = b"data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class ChunkWriter:
    """Builds the frames of one streamed response, chat or text completion; with ``n`` > 1
    each chunk's choice ``index`` says which choice it continues."""

    __slots__ = ("_base", "_chat", "_include_usage", "_started")

    def __init__(
        self, request_id: str, model: str, created: int, *, chat: bool, include_usage: bool
    ) -> None:
        self._chat = chat
        self._include_usage = include_usage
        self._started: set[int] = set()  # the choices whose role chunk was sent
        self._base = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        payload: dict[str, Any] = {**self._base, "choices": [choice]}
        if self._include_usage:
            payload["usage"] = None
        return frame(payload)

    def _role(self, choice: int = 0) -> bytes:
        """Chat streams open each choice with the assistant's role, once."""
        if not self._chat or choice in self._started:
            return b""
        self._started.add(choice)
        return self._chunk(
            {"index": choice, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        )

    def delta(self, event: TextDelta) -> bytes:
        if not self._chat:
            return self._chunk({"index": event.choice, "text": event.text, "finish_reason": None})
        return self._role(event.choice) + self._chunk(
            {"index": event.choice, "delta": {"content": event.text}, "finish_reason": None}
        )

    def reasoning(self, event: ReasoningDelta) -> bytes:
        return self._role(event.choice) + self._chunk(
            {
                "index": event.choice,
                "delta": {"reasoning_content": event.text},
                "finish_reason": None,
            }
        )

    def tool_call(self, event: ToolCallDelta) -> bytes:
        call: dict[str, Any] = {"index": event.index}
        if event.id is not None:
            call["id"] = event.id
            call["type"] = "function"
        function: dict[str, Any] = {"arguments": event.arguments}
        if event.name is not None:
            function["name"] = event.name
        call["function"] = function
        return self._role(event.choice) + self._chunk(
            {"index": event.choice, "delta": {"tool_calls": [call]}, "finish_reason": None}
        )

    def event(self, event: TextDelta | ReasoningDelta | ToolCallDelta | Finished) -> bytes:
        """The frames for any event of the stream."""
        if isinstance(event, TextDelta):
            return self.delta(event)
        if isinstance(event, ReasoningDelta):
            return self.reasoning(event)
        if isinstance(event, ToolCallDelta):
            return self.tool_call(event)
        return self.finish(event)

    def finish(self, event: Finished) -> bytes:
        out = b""
        for index, reason in enumerate(event.choices or (event.reason,)):
            if self._chat:
                out += self._role(index) + self._chunk(
                    {"index": index, "delta": {}, "finish_reason": reason.value}
                )
            else:
                out += self._chunk({"index": index, "text": "", "finish_reason": reason.value})
        if self._include_usage:
            out += frame({**self._base, "choices": [], "usage": usage_json(event.usage)})
        return out + DONE

    def error(self, body: dict[str, Any]) -> bytes:
        return frame(body) + DONE
