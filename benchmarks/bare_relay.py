"""The bare relay: the floor of a Python gateway, for ``benchmarks/gateway.py`` (target
``bare``). Starlette on uvicorn, one aiohttp ``ClientSession`` per process towards the
upstream, orjson; no auth, no limits, no accounting, no logging per request.

``POST /v1/chat/completions``: the body is parsed (orjson), its ``model`` replaced by the
upstream's, re-serialized and sent upstream; a non-streamed answer is returned as the
upstream's bytes with its status, a stream (``"stream": true``) is passed through chunk by
chunk (each HTTP chunk the upstream sends, i.e. each SSE event, is one chunk to the client).
``GET /healthz`` answers ``ok``. Run it as its own process, e.g.

    BENCH_UPSTREAM_URL=http://127.0.0.1:9000/v1 BENCH_UPSTREAM_MODEL=bench-upstream \\
      .venv/bin/python -m uvicorn --factory bare_relay:create_app --app-dir benchmarks \\
      --workers 2 --port 8100 --loop uvloop --http httptools --no-access-log

It needs ``aiohttp`` (the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


class Relay:
    """The one upstream client of this process, opened with the app and closed with it."""

    def __init__(self, base_url: str, model: str, key: str) -> None:
        self.session: aiohttp.ClientSession | None = None
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.headers = headers
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.model = model

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)  # no pool cap
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        body["model"] = self.model
        assert self.session is not None
        upstream = await self.session.post(self.url, data=orjson.dumps(body), headers=self.headers)
        if not body.get("stream"):
            try:
                content = await upstream.read()
            finally:
                upstream.release()
            return Response(
                content,
                status_code=upstream.status,
                media_type=upstream.headers.get("content-type", "application/json"),
            )
        return StreamingResponse(
            _chunks(upstream),
            status_code=upstream.status,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )


async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The upstream's body, one HTTP chunk (one SSE event) at a time."""
    try:
        pending = b""
        async for data, end_of_chunk in upstream.content.iter_chunks():
            pending += data
            if end_of_chunk and pending:
                yield pending
                pending = b""
        if pending:
            yield pending
    finally:
        upstream.release()


def create_app() -> Starlette:
    """The app (``uvicorn --factory bare_relay:create_app``), its upstream from
    ``BENCH_UPSTREAM_URL``, ``BENCH_UPSTREAM_MODEL`` and ``BENCH_UPSTREAM_KEY``."""
    relay = Relay(
        os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9000/v1"),
        os.environ.get("BENCH_UPSTREAM_MODEL", "bench-upstream"),
        os.environ.get("BENCH_UPSTREAM_KEY", ""),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.open()
        try:
            yield
        finally:
            await relay.close()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", relay.chat, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
