"""A streamed response of the Responses API as its server-sent events, with the types and
fields of the official ``openai`` SDK (``response.created``, ``response.output_item.added``,
``response.output_text.delta``, ... ``response.completed``), each numbered in
``sequence_number``.

Reasoning streams as ``response.reasoning_text.delta`` (the item's ``content``), or as
``response.reasoning_summary_text.delta`` when the request asked for a summary (the
reasoning is then its own summary). Items close (``*.done``, ``response.output_item.done``)
when the next one opens or the generation finishes.
"""

from __future__ import annotations

from typing import Any

import orjson

from openmaas.core.types import Finished, ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta
from openmaas.protocols.openai.responses import (
    Output,
    ResponsesRequest,
    output_text,
    response_object,
)


class ResponseEvents:
    """The frames of one streamed response."""

    def __init__(
        self, body: ResponsesRequest, response_id: str, request_id: str, created: int
    ) -> None:
        self.body = body
        self.response_id = response_id
        self.created = created
        self.output = Output(request_id, summary=body.summary is not None)
        self._summary = body.summary is not None
        self._sequence = 0
        self._closed: set[int] = set()

    def _frame(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, **payload, "sequence_number": self._sequence}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        snapshot = response_object(self.body, self.response_id, self.created, [], None)
        return self._frame("response.created", {"response": snapshot}) + self._frame(
            "response.in_progress", {"response": snapshot}
        )

    def event(self, event: StreamEvent) -> bytes:
        """The frames of one event; ``Finished`` closes the items still open."""
        if isinstance(event, Finished):
            empty = b""
            if not self.output.items:  # an empty answer is still one (empty) message
                empty = self._open(self._empty_message())
            self.output.finished = event
            return empty + self._close_all()
        before = len(self.output.items)
        opened, index = self.output.add(event)
        frames = b""
        if opened:
            frames += self._close_all(upto=before) + self._open(index)
        return frames + self._delta(event, index)

    def _empty_message(self) -> int:
        self.output.open("message", TextDelta("", 0))
        return len(self.output.items) - 1

    def _where(self, index: int) -> dict[str, Any]:
        return {"item_id": self.output.items[index]["id"], "output_index": index}

    def _open(self, index: int) -> bytes:
        item = self.output.items[index]
        frames = self._frame("response.output_item.added", {"item": item, "output_index": index})
        where = self._where(index)
        if item["type"] == "message":
            part = output_text("")
            frames += self._frame(
                "response.content_part.added", {**where, "content_index": 0, "part": part}
            )
        elif item["type"] == "reasoning":
            if self._summary:
                part = {"type": "summary_text", "text": ""}
                frames += self._frame(
                    "response.reasoning_summary_part.added",
                    {**where, "summary_index": 0, "part": part},
                )
            else:
                part = {"type": "reasoning_text", "text": ""}
                frames += self._frame(
                    "response.content_part.added", {**where, "content_index": 0, "part": part}
                )
        return frames

    def _delta(self, event: TextDelta | ReasoningDelta | ToolCallDelta, index: int) -> bytes:
        where = self._where(index)
        if isinstance(event, TextDelta):
            return self._frame(
                "response.output_text.delta",
                {**where, "content_index": 0, "delta": event.text, "logprobs": []},
            )
        if isinstance(event, ReasoningDelta):
            if self._summary:
                return self._frame(
                    "response.reasoning_summary_text.delta",
                    {**where, "summary_index": 0, "delta": event.text},
                )
            return self._frame(
                "response.reasoning_text.delta", {**where, "content_index": 0, "delta": event.text}
            )
        if not event.arguments:
            return b""
        return self._frame(
            "response.function_call_arguments.delta", {**where, "delta": event.arguments}
        )

    def _close_all(self, upto: int | None = None) -> bytes:
        count = len(self.output.items) if upto is None else upto
        return b"".join(self._close(index) for index in range(count) if index not in self._closed)

    def _close(self, index: int) -> bytes:
        self._closed.add(index)
        item = self.output.close(index)
        where = self._where(index)
        text = self.output.text_of(index)
        frames = b""
        if item["type"] == "message":
            frames += self._frame(
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
            )
            frames += self._frame(
                "response.content_part.done",
                {**where, "content_index": 0, "part": item["content"][0]},
            )
        elif item["type"] == "reasoning":
            if self._summary:
                frames += self._frame(
                    "response.reasoning_summary_text.done",
                    {**where, "summary_index": 0, "text": text},
                )
                frames += self._frame(
                    "response.reasoning_summary_part.done",
                    {**where, "summary_index": 0, "part": item["summary"][0]},
                )
            else:
                frames += self._frame(
                    "response.reasoning_text.done", {**where, "content_index": 0, "text": text}
                )
                frames += self._frame(
                    "response.content_part.done",
                    {**where, "content_index": 0, "part": item["content"][0]},
                )
        else:
            frames += self._frame(
                "response.function_call_arguments.done",
                {**where, "name": item["name"], "arguments": item["arguments"]},
            )
        return frames + self._frame(
            "response.output_item.done", {"item": item, "output_index": index}
        )

    def response(self) -> dict[str, Any]:
        """The finished response object (after ``Finished``)."""
        output = self.output.complete()
        return response_object(
            self.body, self.response_id, self.created, output, self.output.finished
        )

    def end(self, response: dict[str, Any]) -> bytes:
        """``response.completed``, or ``response.incomplete`` when it was cut short."""
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self._frame(kind, {"response": response})

    def error(self, body: dict[str, Any]) -> bytes:
        """An ``error`` event and ``response.failed``: the stream broke after it began."""
        error = body.get("error", {})
        frames = self._frame(
            "error",
            {
                "code": error.get("code"),
                "message": error.get("message"),
                "param": error.get("param"),
            },
        )
        failed = response_object(
            self.body, self.response_id, self.created, self.output.complete(), None
        )
        failed |= {
            "status": "failed",
            "error": {"code": "server_error", "message": str(error.get("message"))},
        }
        return frames + self._frame("response.failed", {"response": failed})
