"""``sse_stream``: frames of events that came together leave together, in one write, and
never wait for an event that is not in hand; an error frame follows what came before it."""

from __future__ import annotations

from typing import Any

import pytest

from openmaas.core.errors import EngineFailure, OpenMaaSError
from openmaas.core.types import Finished, FinishReason, StreamEvent, TextDelta, Usage
from openmaas.server.routes.common import sse_stream


class Generation:
    """What ``sse_stream`` reads of a generation: its events, each with whether the next
    one is in hand, then an error or the end (a test double of ``serving.Generation``)."""

    def __init__(self, events: list[tuple[StreamEvent, bool]], error: Exception | None = None):
        self._events = list(events)
        self._error = error
        self._next_ready = False
        self.closed = 0

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> StreamEvent:
        if not self._events:
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        event, self._next_ready = self._events.pop(0)
        return event

    def ready(self) -> bool:
        return self._next_ready

    async def aclose(self) -> None:
        self.closed += 1


class Writer:
    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return f"data: {event.text}\n\n".encode()
        return b"data: [DONE]\n\n"

    def error(self, body: dict[str, Any]) -> bytes:
        return f"data: error {body['message']}\n\n".encode()


def render(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 500, {"message": str(exc)}, {}


def text(word: str) -> TextDelta:
    return TextDelta(word, 1)


async def writes(generation: Generation) -> list[bytes]:
    return [frame async for frame in sse_stream(generation, Writer(), render)]  # type: ignore[arg-type]


async def test_frames_in_hand_go_out_in_one_write() -> None:
    generation = Generation(
        [
            (text("a"), True),
            (text("b"), True),
            (text("c"), False),  # the next one has to be waited for
            (text("d"), False),
            (Finished(FinishReason.STOP, Usage(1, 0, 4)), False),
        ]
    )
    assert await writes(generation) == [
        b"data: a\n\ndata: b\n\ndata: c\n\n",
        b"data: d\n\n",
        b"data: [DONE]\n\n",
    ]
    assert generation.closed >= 1  # the usage record before the end is sent


async def test_an_error_follows_the_frames_before_it() -> None:
    generation = Generation(
        [(text("a"), True), (text("b"), True)], EngineFailure("upstream broke off")
    )
    assert await writes(generation) == [b"data: a\n\ndata: b\n\ndata: error upstream broke off\n\n"]


@pytest.mark.parametrize("ready", [False, True])
async def test_the_last_frames_are_sent_however_the_events_end(ready: bool) -> None:
    generation = Generation([(text("only"), ready)])
    assert await writes(generation) == [b"data: only\n\n"]
