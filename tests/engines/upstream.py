"""A real OpenAI-compatible upstream for tests: uvicorn on 127.0.0.1, a free port, a thread.

Tests (of engines, routing, failover, benchmarks) tell it how to behave, per server or per
request, and read back what it received::

    with Upstream(Behaviour(text="Hello there")) as upstream:   # or: await upstream.astart()
        engine = OpenAIHttpEngine("m", OpenAIHttpConfig(base_url=upstream.base_url, ...))
        upstream.script(Behaviour(status=503), Behaviour())  # next request 503, then normal
        ...
        received = upstream.requests[-1]      # .path .body (JSON) .headers (lower-case)
        await upstream.wait_for(lambda: received.disconnected)

Endpoints (under ``/v1``): ``POST /chat/completions`` and ``POST /completions`` (streamed
when ``"stream": true``, else one JSON body, the faults applied as ``whole`` says),
``POST /embeddings``, ``GET /models``.

Each request takes the next ``Behaviour`` queued with ``script`` or, when none is queued,
``upstream.behaviour`` (the server's default, assignable). A streamed answer sends one
chunk per word of ``reasoning`` (as ``reasoning_content``), then either the ``tool_calls``
(id and name first, then the arguments in two fragments) or one chunk per word of ``text``
(as ``content``), then a chunk with ``finish_reason``, then -- if the client asked for
``stream_options.include_usage`` and ``usage`` is on -- a usage chunk (``prompt_tokens``
etc. as configured; ``completion_tokens`` = chunks of reasoning, text and tool calls sent),
then ``data: [DONE]``. Faults: ``status`` (an error body with that status and
``retry_after``), ``hang_before_headers``, ``first_token_delay``, ``token_delay``,
``hang_after_tokens``, ``drop_after_tokens`` (the connection is cut mid-body),
``malformed_after_tokens``, ``error_event_after_tokens``; ``together`` sends all of a
stream's events in one write at its end; ``raw_events`` streams exactly the
given ``data:`` payloads (another vendor's chunk format, a malformed shape) and nothing else.
Hangs end when the client goes away or the server stops, so tests never leave a thread behind.

Every request is recorded in ``upstream.requests`` (a ``Received``: method, path, headers,
parsed JSON body, ``client_port``, ``tokens_sent``, ``completed``, ``disconnected`` -- the
client went away before the answer was complete). ``in_flight`` / ``max_in_flight`` count
concurrent requests. ``Upstream(log_level="error")`` shows the server's own tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from openmaas.core.types import StreamEvent, TextDelta
from openmaas.engines.base import EngineStream
from openmaas.engines.upstream.openai_http import OpenAIHttpConfig, OpenAIHttpEngine
from tests.support.waiting import eventually, wait_until

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


@dataclass
class ToolCallSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # default: call_<n>


@dataclass
class Behaviour:
    """How the upstream answers one request (see the module docstring)."""

    text: str = "Hello from the upstream."
    reasoning: str = ""
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    finish_reason: str | None = None  # default: "tool_calls" when calling tools, else "stop"
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    usage: bool = True  # send the usage chunk (when the client asks for it)
    prompt_tokens: int = 11
    cached_tokens: int = 0
    reasoning_tokens: int | None = None  # default: the reasoning chunks sent
    cost: float | None = None  # usage.cost, OpenRouter style
    keepalive: bool = False  # a ": keep-alive" comment before each chunk
    split_chunks: bool = False  # write each event in 3-byte pieces (tests chunk boundaries)
    together: bool = False  # a stream's events all in one write, once the last is made
    status: int | None = None  # answer with this error status instead
    error_message: str = "scripted upstream error"
    retry_after: str | None = None
    hang_before_headers: bool = False
    hang_after_tokens: int | None = None
    drop_after_tokens: int | None = None
    malformed_after_tokens: int | None = None
    error_event_after_tokens: int | None = None
    embedding_dimensions: int = 4
    raw_events: list[str] | None = None  # stream exactly these data payloads, then end


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    behaviour: Behaviour
    client_port: int = 0  # the client's port: equal ports mean a reused keep-alive connection
    tokens_sent: int = 0
    completed: bool = False
    disconnected: bool = False


class _Drop(Exception):
    """Raised inside the app to make uvicorn cut the connection mid-body."""


class Upstream:
    """An OpenAI-compatible server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        model: str = "upstream-model",
        log_level: str = "critical",  # "error" shows the app's own tracebacks
    ) -> None:
        self.log_level = log_level
        self.behaviour = behaviour or Behaviour()
        self.model = model
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- control ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._socket is not None, "the upstream is not started"
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order; then the default again."""
        with self._lock:
            self._queue.extend(behaviours)

    def start(self) -> Upstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            log_config=None,
            log_level=self.log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="test-upstream", daemon=True)
        self._thread.start()
        thread, server = self._thread, self._server
        wait_until(lambda: server.started or not thread.is_alive(), what="the test upstream")
        if not server.started:
            raise RuntimeError("the test upstream did not start")
        return self

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        self._server.run(sockets=[self._socket])

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()

    async def astart(self) -> Upstream:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll ``condition`` (e.g. ``lambda: upstream.requests[-1].disconnected``)."""
        await eventually(condition, timeout=timeout, what="the upstream's expected condition")

    # -- the ASGI app --------------------------------------------------------------------
    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.behaviour

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._stopping is None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        path = scope["path"]
        behaviour = self._next_behaviour() if scope["method"] == "POST" else self.behaviour
        client = scope.get("client") or ("", 0)
        received = Received(scope["method"], path, headers, body, behaviour, int(client[1]))
        self.requests.append(received)
        gone = asyncio.Event()

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect" and not received.completed:
                received.disconnected = True
            gone.set()

        watcher = asyncio.create_task(watch())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        handler = _Handler(self, received, send, gone)
        try:
            await handler.handle()
        finally:
            handler.leave()
            watcher.cancel()


class _Handler:
    def __init__(self, upstream: Upstream, received: Received, send: Send, gone: asyncio.Event):
        self.upstream = upstream
        self.received = received
        self.behaviour = received.behaviour
        self.send = send
        self.gone = gone
        self.left = False
        self.held = b""  # a stream's events, when they all go in one write (``together``)

    def leave(self) -> None:
        """No longer in flight: the answer is complete (before its last bytes go out, so a
        client reusing the connection never sees two in flight) or the request ended."""
        if not self.left:
            self.left = True
            self.upstream.in_flight -= 1

    def complete(self) -> None:
        self.received.completed = True
        self.leave()

    async def pause(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: for ever); False when the client left or the server stops."""
        stopping = self.upstream._stopping
        assert stopping is not None
        waits = [asyncio.ensure_future(self.gone.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            done, _ = await asyncio.wait(
                waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()
        return not done

    async def handle(self) -> None:
        b, path, method = self.behaviour, self.received.path, self.received.method
        if b.hang_before_headers:
            await self.pause(None)
            return
        if method == "GET" and path.endswith("/models"):
            await self.json(200, {"object": "list", "data": [{"id": self.upstream.model}]})
            return
        if b.status is not None:
            headers = [(b"retry-after", b.retry_after.encode())] if b.retry_after else []
            body = {"error": {"message": b.error_message, "type": "upstream", "code": b.status}}
            await self.json(b.status, body, headers)
            return
        if path.endswith("/embeddings"):
            await self.embeddings()
        elif path.endswith("/chat/completions") or path.endswith("/completions"):
            request = self.received.body if isinstance(self.received.body, dict) else {}
            if request.get("stream"):
                await self.stream(chat=path.endswith("/chat/completions"), request=request)
            else:
                await self.whole(chat=path.endswith("/chat/completions"))
        else:
            await self.json(404, {"error": {"message": f"no route {path}"}})

    async def json(self, status: int, body: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = [(b"content-type", b"application/json"), *headers]
        await self.send({"type": "http.response.start", "status": status, "headers": head})
        self.complete()
        await self.send({"type": "http.response.body", "body": payload})

    async def embeddings(self) -> None:
        request = self.received.body if isinstance(self.received.body, dict) else {}
        inputs = request.get("input") or []
        inputs = [inputs] if isinstance(inputs, str) else inputs
        dims = self.behaviour.embedding_dimensions
        data = [
            {"object": "embedding", "index": i, "embedding": [float(i + 1)] * dims}
            for i in range(len(inputs))
        ]
        body: dict[str, Any] = {"object": "list", "data": data, "model": self.upstream.model}
        if self.behaviour.usage:
            words = sum(len(str(text).split()) for text in inputs)
            body["usage"] = {"prompt_tokens": words, "total_tokens": words}
        await self.json(200, body)

    def pieces(self) -> list[tuple[str, Any]]:
        b = self.behaviour
        pieces: list[tuple[str, Any]] = [("reasoning", w) for w in _words(b.reasoning)]
        if b.tool_calls:
            for number, call in enumerate(b.tool_calls):
                arguments = json.dumps(call.arguments)
                half = len(arguments) // 2
                call_id = call.id or f"call_{number}"
                pieces.append(("call", (number, call_id, call.name, arguments[:half])))
                pieces.append(("call", (number, None, None, arguments[half:])))
        else:
            pieces += [("text", w) for w in _words(b.text)]
        return pieces

    def finish_reason(self) -> str:
        b = self.behaviour
        return b.finish_reason or ("tool_calls" if b.tool_calls else "stop")

    def usage(self, sent: int) -> dict[str, Any]:
        b = self.behaviour
        reasoning = len(_words(b.reasoning)) if b.reasoning_tokens is None else b.reasoning_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": b.prompt_tokens,
            "completion_tokens": sent,
            "total_tokens": b.prompt_tokens + sent,
            "prompt_tokens_details": {"cached_tokens": b.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
        if b.cost is not None:
            usage["cost"] = b.cost
        return usage

    async def whole(self, chat: bool) -> None:
        """One JSON body (``stream`` false). The faults apply as to a stream, whose pieces
        the upstream generates before it answers: ``first_token_delay`` and each piece's
        ``token_delay`` pass first; ``hang_after_tokens`` hangs without answering,
        ``drop_after_tokens`` cuts the connection in the middle of the body,
        ``malformed_after_tokens`` sends a body that is not JSON, and
        ``error_event_after_tokens`` an error body with status 200."""
        b = self.behaviour
        pieces = self.pieces()
        wait = (b.first_token_delay or 0) + b.token_delay * max(0, len(pieces) - 1)
        if not await self.pause(wait):
            return
        if b.hang_after_tokens is not None:
            await self.pause(None)
            return
        if b.error_event_after_tokens is not None:
            await self.json(200, {"error": {"message": b.error_message, "code": 500}})
            return
        text = "".join(p for kind, p in pieces if kind == "text")
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason()}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if b.reasoning:
                message["reasoning_content"] = b.reasoning
            if b.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": call.id or f"call_{number}",
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                    for number, call in enumerate(b.tool_calls)
                ]
            choice["message"] = message
        else:
            choice["text"] = text
        body = {
            "id": "cmpl-test",
            "object": "chat.completion" if chat else "text_completion",
            "model": self.upstream.model,
            "choices": [choice],
        }
        if b.usage:
            body["usage"] = self.usage(len(pieces))
        payload = json.dumps(body).encode()
        if b.malformed_after_tokens is not None:
            payload = payload[: len(payload) // 2]
        if b.drop_after_tokens is not None:
            head = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            await self.send({"type": "http.response.start", "status": 200, "headers": head})
            half = {"type": "http.response.body", "body": payload[:10], "more_body": True}
            await self.send(half)
            raise _Drop("scripted connection drop")
        self.received.tokens_sent = len(pieces)
        await self.json(200, payload)

    async def event(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        frame = f"data: {text}\n\n".encode()
        if self.behaviour.keepalive:
            frame = b": keep-alive\n\n" + frame
        if self.behaviour.together:
            self.held += frame
            return
        if self.behaviour.split_chunks:
            for start in range(0, len(frame), 3):
                await self.send(
                    {
                        "type": "http.response.body",
                        "body": frame[start : start + 3],
                        "more_body": True,
                    }
                )
        else:
            await self.send({"type": "http.response.body", "body": frame, "more_body": True})

    def chunk(self, chat: bool, kind: str, piece: Any, finish: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if not chat:
            choice["text"] = piece if kind == "text" else ""
        elif kind == "reasoning":
            choice["delta"] = {"role": "assistant", "reasoning_content": piece}
        elif kind == "text":
            choice["delta"] = {"role": "assistant", "content": piece}
        elif kind == "call":
            number, call_id, name, arguments = piece
            function: dict[str, Any] = {"arguments": arguments}
            if name is not None:
                function["name"] = name
            call: dict[str, Any] = {"index": number, "function": function}
            if call_id is not None:
                call.update(id=call_id, type="function")
            choice["delta"] = {"role": "assistant", "tool_calls": [call]}
        else:
            choice["delta"] = {}
        return {
            "id": "chatcmpl-test" if chat else "cmpl-test",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "model": self.upstream.model,
            "choices": [choice],
        }

    async def stream(self, chat: bool, request: dict[str, Any]) -> None:
        b = self.behaviour
        if not await self.pause(b.first_token_delay or 0):
            return
        head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await self.send({"type": "http.response.start", "status": 200, "headers": head})
        if b.raw_events is not None:
            for raw in b.raw_events:
                await self.event(raw)
            await self.end()
            return
        pieces = self.pieces()
        for index, (kind, piece) in enumerate(pieces):
            if b.hang_after_tokens is not None and index >= b.hang_after_tokens:
                await self.pause(None)
                return
            if b.drop_after_tokens is not None and index >= b.drop_after_tokens:
                raise _Drop("scripted connection drop")
            if b.malformed_after_tokens is not None and index >= b.malformed_after_tokens:
                await self.event('{"choices": [{"delta": {"content": "broken')
                await self.end()
                return
            if b.error_event_after_tokens is not None and index >= b.error_event_after_tokens:
                await self.event({"error": {"message": b.error_message, "code": 500}})
                await self.end()
                return
            if index and b.token_delay and not await self.pause(b.token_delay):
                return
            if self.gone.is_set():
                return
            await self.event(self.chunk(chat, kind, piece))
            self.received.tokens_sent += 1
        await self.event(self.chunk(chat, "none", "", self.finish_reason()))
        options = request.get("stream_options") or {}
        if b.usage and options.get("include_usage"):
            final = self.chunk(chat, "none", "")
            final["choices"] = []
            final["usage"] = self.usage(self.received.tokens_sent)
            await self.event(final)
        await self.event("[DONE]")
        await self.end()

    async def end(self) -> None:
        self.complete()
        await self.send({"type": "http.response.body", "body": self.held, "more_body": False})


def _words(text: str) -> list[str]:
    if not text:
        return []
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


KEY = "sk-test-4b1d0c9e7f2a8d6b"  # an upstream key: must never appear in a log line or error


class Engines:
    """Builds OpenAI-compatible engines against an upstream, and stops them after the test
    (the ``engines`` fixture of ``tests/engines/conftest.py``)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.started: list[OpenAIHttpEngine] = []

    async def __call__(self, **config: Any) -> OpenAIHttpEngine:
        config.setdefault("base_url", self.upstream.base_url)
        config.setdefault("upstream_model", "upstream-model")
        config.setdefault("api_key", KEY)
        config.setdefault("deployment", "dep-1")
        engine = OpenAIHttpEngine("relay", OpenAIHttpConfig(**config))
        self.started.append(engine)
        await engine.start()
        return engine

    async def stop(self) -> None:
        for engine in self.started:
            await engine.stop()


async def collect(stream: EngineStream) -> list[StreamEvent]:
    """Every event of an engine's stream, closed after."""
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))
