"""Core stream events -> Zhipu paas/v4 server-sent-event frames.

Every delta repeats ``role: assistant`` (as Zhipu's own stream does). The final chunk carries
the finish reason and ``usage`` (no ``stream_options`` needed), then ``data: [DONE]``.
Tool calls stream their argument fragments as they come when ``tool_stream`` is on;
otherwise each call is buffered and sent whole, in one delta, when it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from openmaas.core.types import Finished, ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta
from openmaas.protocols.zhipu.adapter import FINISH_REASONS, usage_json

DONE = b"data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class _BufferedCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChunkWriter:
    """Builds the frames of one streamed chat completion."""

    __slots__ = ("_base", "_buffered", "_tool_stream")

    def __init__(
        self,
        response_id: str,
        client_request_id: str | None,
        model: str,
        created: int,
        *,
        tool_stream: bool,
    ) -> None:
        self._tool_stream = tool_stream
        self._buffered: dict[int, _BufferedCall] = {}
        self._base = {
            "id": response_id,
            "request_id": client_request_id or response_id,
            "created": created,
            "model": model,
            "object": "chat.completion.chunk",
        }

    def _chunk(self, delta: dict[str, Any], **extra: Any) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", **delta}}
        choice.update(extra.pop("choice", {}))
        return frame({**self._base, "choices": [choice], **extra})

    def event(self, event: StreamEvent) -> bytes:
        """The frames of one event (possibly none, while a tool call is buffered)."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, ReasoningDelta):
            return self._chunk({"reasoning_content": event.text}) if event.text else b""
        if isinstance(event, ToolCallDelta):
            return self._tool_call(event)
        return self.finish(event)

    def _tool_call(self, event: ToolCallDelta) -> bytes:
        if not self._tool_stream:
            # A new call means the earlier ones are complete: send those whole now.
            out = b"" if event.index in self._buffered else self._flush_calls()
            call = self._buffered.setdefault(event.index, _BufferedCall())
            call.id = event.id or call.id
            call.name = event.name or call.name
            call.arguments.append(event.arguments)
            return out
        part: dict[str, Any] = {"index": event.index, "type": "function"}
        function: dict[str, Any] = {"arguments": event.arguments}
        if event.id:
            part["id"] = event.id
        if event.name:
            function["name"] = event.name
        part["function"] = function
        return self._chunk({"tool_calls": [part]})

    def _flush_calls(self) -> bytes:
        if not self._buffered:
            return b""
        calls = [
            {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(call.arguments)},
            }
            for index, call in sorted(self._buffered.items())
        ]
        self._buffered.clear()
        return self._chunk({"tool_calls": calls})

    def finish(self, event: Finished) -> bytes:
        reason = FINISH_REASONS[event.reason]
        last = self._chunk(
            {"content": ""}, choice={"finish_reason": reason}, usage=usage_json(event.usage)
        )
        return self._flush_calls() + last + DONE

    def error(self, body: dict[str, Any]) -> bytes:
        """A mid-stream error: the frame Zhipu's SDKs raise on (a top-level ``error``)."""
        return frame(body) + DONE
