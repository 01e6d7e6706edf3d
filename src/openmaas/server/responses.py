"""Responses for the hot path: JSON by orjson, and server-sent events without a task group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from openmaas.asgi import CancelOnDisconnect

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


class EventStreamResponse(Response):
    """``text/event-stream`` frames, sent as ``frames`` yields them. The client going away
    cancels the iteration where it waits (its ``finally`` runs: a generation records its
    usage), as Starlette's ``StreamingResponse`` does, but from one watcher task instead of
    an anyio task group per stream."""

    media_type = "text/event-stream"

    def __init__(
        self, frames: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        self.frames = frames
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = CancelOnDisconnect(receive)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for frame in self.frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone():
                raise
        finally:
            watch.stop()
            close = getattr(self.frames, "aclose", None)
            if close is not None:  # cut while sending: the iteration's own cleanup runs now
                await close()
