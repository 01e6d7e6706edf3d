"""Core stream events -> Anthropic Messages server-sent events.

The sequence is ``message_start``, ``ping``, then for each content block in order
``content_block_start`` / ``content_block_delta``... / ``content_block_stop``, then
``message_delta`` (stop reason and final usage) and ``message_stop``. A block is a run of
events of one kind: reasoning (a ``thinking`` block), text, or one tool call (a
``tool_use`` block). The writer keeps O(1) state: the open block and a few counters.
With ``omit_thinking`` (``thinking.display: "omitted"``) a thinking block is opened and
closed with its signature but gets no ``thinking_delta``, as Anthropic sends it.
"""

from __future__ import annotations

from typing import Any

import orjson

from openmaas.core.types import (
    Finished,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.protocols.anthropic.adapter import (
    THINKING_SIGNATURE,
    stop_reason,
    tool_use_id,
    usage_json,
)


def frame(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessageStreamWriter:
    """Builds the frames of one streamed message."""

    __slots__ = (
        "_block",
        "_called_tools",
        "_index",
        "_model",
        "_omit_thinking",
        "_request_id",
        "_started",
    )

    def __init__(self, request_id: str, model: str, *, omit_thinking: bool = False) -> None:
        self._request_id = request_id
        self._model = model
        self._omit_thinking = omit_thinking
        self._started = False
        self._index = -1  # index of the open (or last) content block
        self._block: tuple[str, int] | None = None  # (kind, tool call index) of the open block
        self._called_tools = False

    def _start(self, event: StreamEvent) -> bytes:
        if self._started:
            return b""
        self._started = True
        prompt = event.prompt_tokens if isinstance(event, TextDelta) else 0
        cached = event.cached_tokens if isinstance(event, TextDelta) else 0
        usage = usage_json(Usage(prompt_tokens=prompt, cached_tokens=cached))
        message: dict[str, Any] = {
            "id": self._request_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return frame("message_start", {"type": "message_start", "message": message}) + frame(
            "ping", {"type": "ping"}
        )

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        out = b""
        if self._block[0] == "thinking":
            out += self._delta({"type": "signature_delta", "signature": THINKING_SIGNATURE})
        self._block = None
        return out + frame(
            "content_block_stop", {"type": "content_block_stop", "index": self._index}
        )

    def _open(self, kind: str, call: int, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._block = (kind, call)
        return out + frame(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return frame(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def event(self, event: StreamEvent) -> bytes:
        """The frames for one event (``Finished`` ends the message)."""
        out = self._start(event)
        if isinstance(event, Finished):
            return out + self._finish(event)
        if isinstance(event, TextDelta):
            if not event.text:
                return out
            if self._block != ("text", 0):
                out += self._open("text", 0, {"type": "text", "text": ""})
            return out + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return out
            if self._block != ("thinking", 0):
                block = {"type": "thinking", "thinking": "", "signature": ""}
                out += self._open("thinking", 0, block)
            if self._omit_thinking:
                return out
            return out + self._delta({"type": "thinking_delta", "thinking": event.text})
        return out + self._tool_call(event)

    def _tool_call(self, event: ToolCallDelta) -> bytes:
        out = b""
        if self._block != ("tool_use", event.index):
            self._called_tools = True
            block = {
                "type": "tool_use",
                "id": event.id or tool_use_id(self._request_id, event.index),
                "name": event.name or "",
                "input": {},
            }
            out += self._open("tool_use", event.index, block)
        if event.arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        return out

    def _finish(self, event: Finished) -> bytes:
        out = self._close()
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(event.reason, self._called_tools),
                "stop_sequence": None,
            },
            "usage": usage_json(event.usage),
        }
        return out + frame("message_delta", delta) + frame("message_stop", {"type": "message_stop"})

    def error(self, body: dict[str, Any]) -> bytes:
        """An ``error`` event (Anthropic's error body); the stream ends after it."""
        return frame("error", body)
