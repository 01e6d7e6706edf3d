"""Noticing a client that went away (``asgi.py``): the work is cancelled where it waits and
cleans up, the caller gets None, and no cancellation is left behind for what runs next."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from starlette.requests import Request

from openmaas.asgi import unless_disconnected
from openmaas.server.responses import EventStreamResponse


class Client:
    """An ASGI ``receive`` whose client leaves when the test says so."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    def request(self) -> Request:
        return Request({"type": "http", "method": "POST", "headers": []}, self.receive)


async def test_the_work_s_result_when_the_client_stays() -> None:
    client = Client()
    assert await unless_disconnected(client.request(), asyncio.sleep(0, "done")) == "done"
    await asyncio.sleep(0)  # the task goes on undisturbed
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_client_gone_cancels_the_work_which_cleans_up_and_none_is_returned() -> None:
    client = Client()
    cleaned = asyncio.Event()
    waiting = asyncio.Event()

    async def work() -> str:
        try:
            waiting.set()
            await asyncio.sleep(3600)
            return "never"
        finally:
            cleaned.set()

    async def leave() -> None:
        await waiting.wait()
        client.left.set()

    leaving = asyncio.ensure_future(leave())
    assert await unless_disconnected(client.request(), work()) is None
    await leaving
    assert cleaned.is_set()
    await asyncio.sleep(0)  # no cancellation left for the caller's next await
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_error_of_the_work_propagates() -> None:
    async def work() -> None:
        raise ValueError("the work's own")

    with pytest.raises(ValueError, match="the work's own"):
        await unless_disconnected(Client().request(), work())


async def test_the_caller_s_own_cancellation_is_not_swallowed() -> None:
    client = Client()
    started = asyncio.Event()

    async def caller() -> None:
        started.set()
        await unless_disconnected(client.request(), asyncio.sleep(3600))

    task = asyncio.ensure_future(caller())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_event_stream_cut_by_the_client_closes_its_frames() -> None:
    client = Client()
    sent: list[MutableMapping[str, Any]] = []
    closed = asyncio.Event()

    async def frames() -> Any:
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(3600)  # the engine is slow to produce the next frame
            yield b"data: 2\n\n"
        finally:
            closed.set()

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message.get("body") == b"data: 1\n\n":
            client.left.set()

    response = EventStreamResponse(frames())
    await response({"type": "http"}, client.receive, send)
    assert closed.is_set()
    assert [m.get("body") for m in sent] == [None, b"data: 1\n\n"]
    assert dict(sent[0]["headers"])[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_event_stream_sent_whole_ends_with_an_empty_last_body() -> None:
    client = Client()
    sent: list[MutableMapping[str, Any]] = []

    async def frames() -> Any:
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await EventStreamResponse(frames())({"type": "http"}, client.receive, send)
    assert [(m.get("body"), m.get("more_body")) for m in sent] == [
        (None, None),
        (b"data: 1\n\n", True),
        (b"data: [DONE]\n\n", True),
        (b"", False),
    ]
    assert (b"cache-control", b"no-cache") in sent[0]["headers"]
