"""The two ends of the gateway benchmark that are not gateways (``benchmarks/gateway.py``):
a zero-latency upstream (a raw asyncio HTTP/1.1 server with canned answers) and a raw
asyncio HTTP/1.1 keep-alive client, both as cheap as Python can make them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

UPSTREAM_MODEL = "bench-upstream"
UPSTREAM_KEY = "sk-upstream-bench"
WORDS = ["Hello", " there", ",", " how", " are", " you", "?"]

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello and ask how I am, in a few words."},
]


# -- the upstream: a raw asyncio HTTP/1.1 server ---------------------------------------------
def _canned() -> tuple[bytes, bytes, bytes, bytes]:
    created = 1_700_000_000
    text = "".join(WORDS)
    usage = {"prompt_tokens": 24, "completion_tokens": len(WORDS), "total_tokens": 24 + len(WORDS)}
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": created,
            "model": UPSTREAM_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        },
        separators=(",", ":"),
    ).encode()
    json_response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in WORDS]
    events.append(chunk({}, "stop"))
    usage_event = {**chunk({}), "choices": [], "usage": usage}

    def frames(payloads: list[dict[str, Any]]) -> bytes:
        out = b""
        for data in [json.dumps(p, separators=(",", ":")) for p in payloads] + ["[DONE]"]:
            frame = f"data: {data}\n\n".encode()
            out += b"%x\r\n%s\r\n" % (len(frame), frame)  # one chunk per event, as vLLM does
        return out + b"0\r\n\r\n"

    stream_head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    models = json.dumps({"object": "list", "data": [{"id": UPSTREAM_MODEL, "object": "model"}]})
    models_response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(models), models.encode())
    )
    return (
        json_response,
        stream_head + frames(events + [usage_event]),
        stream_head + frames(events),
        models_response,
    )


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


class _UpstreamProtocol(asyncio.Protocol):
    CANNED = _canned()

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        json_answer, stream_usage, stream_plain, models = self.CANNED
        assert self.transport is not None
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            match = _CONTENT_LENGTH.search(head)
            if match is None and b"transfer-encoding" in head.lower():
                self.transport.write(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()
                return
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(buffer) < total:
                break
            body, buffer = buffer[end + 4 : total], buffer[total:]
            if head.startswith(b"GET"):
                self.transport.write(models)
            elif _STREAM_TRUE.search(body):
                self.transport.write(stream_usage if b"include_usage" in body else stream_plain)
            else:
                self.transport.write(json_answer)
        self.buffer = buffer


def run_upstream(port: int) -> None:
    use_uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_UpstreamProtocol, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Measured(Protocol):
    """The process under test, as a phase reads it: the CPU time it has used so far."""

    def cpu_seconds(self) -> float: ...


# -- the client: raw asyncio HTTP/1.1 keep-alive ---------------------------------------------
class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.buffer = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        done = _complete(self.buffer)
        if done is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(done)


def _complete(buffer: bytes) -> tuple[int, bytes] | None:
    """(status, body) once ``buffer`` holds a whole response, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end]
    status = int(head[9:12])
    match = _CONTENT_LENGTH.search(head)
    if match is not None:
        total = end + 4 + int(match.group(1))
        return (status, buffer[end + 4 : total]) if len(buffer) >= total else None
    if b"chunked" in head.lower():
        if not buffer.endswith(b"0\r\n\r\n"):
            return None
        body, pos = bytearray(), end + 4
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(buffer[pos:line_end].split(b";")[0], 16)
            if size == 0:
                return status, bytes(body)
            body += buffer[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
    return status, buffer[end + 4 :]  # no length: the tests never see this


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    model: str
    key: str


def _request_bytes(target: Target, stream: bool) -> bytes:
    payload: dict[str, Any] = {"model": target.model, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{target.port}\r\n"
        f"authorization: Bearer {target.key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class PhaseResult:
    latencies: list[float] = field(default_factory=list)  # seconds, measured window only
    chunks: int = 0  # SSE events (``data:`` lines) of the streams completed in the window
    answered: int = 0  # every successful answer, warm-up included
    errors: int = 0
    error_sample: str = ""
    elapsed: float = 0.0
    gateway_cpu: float | None = None  # seconds in the window, all the gateway's processes
    services_cpu: float | None = None  # seconds in the window: its database, its Redis
    client_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def run_phase(
    target: Target,
    stream: bool,
    concurrency: int,
    warmup: float,
    duration: float,
    gateway: Measured | None,
    services: Measured | None = None,
) -> PhaseResult:
    loop = asyncio.get_running_loop()
    data = _request_bytes(target, stream)
    result = PhaseResult()
    conns = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(_ClientProtocol, "127.0.0.1", target.port)
        conns.append(proto)
    t0 = time.perf_counter()
    measure_from = t0 + warmup
    measure_to = measure_from + duration
    marks: dict[str, float] = {}

    def cpu_now() -> tuple[float, float, float]:
        return (
            gateway.cpu_seconds() if gateway else 0.0,
            services.cpu_seconds() if services else 0.0,
            time.process_time(),
        )

    async def window() -> None:
        """CPU times at the measured window's start and end, whatever is in flight."""
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        marks["cpu0"], marks["services0"], marks["client0"] = cpu_now()
        await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
        marks["cpu1"], marks["services1"], marks["client1"] = cpu_now()

    async def worker(proto: _ClientProtocol) -> None:
        while True:
            sent = time.perf_counter()
            if sent >= measure_to:
                return
            try:
                status, body = await asyncio.wait_for(proto.request(data), 30)
            except (ConnectionError, TimeoutError) as exc:
                result.errors += 1
                result.error_sample = result.error_sample or repr(exc)
                return
            ended = time.perf_counter()
            ok = status == 200 and (b"[DONE]" in body if stream else b'"choices"' in body)
            if not ok:
                result.errors += 1
                result.error_sample = result.error_sample or f"{status}: {body[:300]!r}"
            else:
                result.answered += 1
                if measure_from <= ended <= measure_to:  # completed in the window
                    result.latencies.append(ended - sent)
                    if stream:
                        result.chunks += body.count(b"data:")

    await asyncio.gather(window(), *(worker(p) for p in conns))
    result.elapsed = duration
    if gateway is not None:
        result.gateway_cpu = marks["cpu1"] - marks["cpu0"]
    if services is not None:
        result.services_cpu = marks["services1"] - marks["services0"]
    result.client_cpu = marks["client1"] - marks["client0"]
    for proto in conns:
        if proto.transport is not None:
            proto.transport.close()
    return result


async def check_answer(target: Target, stream: bool) -> str:
    """One request, its text reassembled: the relay's answer must be the upstream's."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_ClientProtocol, "127.0.0.1", target.port)
    try:
        status, body = await asyncio.wait_for(proto.request(_request_bytes(target, stream)), 30)
    finally:
        assert proto.transport is not None
        proto.transport.close()
    if status != 200:
        raise RuntimeError(f"{target.name}: HTTP {status}: {body[:500]!r}")
    if not stream:
        answer = json.loads(body)
        return str(answer["choices"][0]["message"]["content"]) + f" usage={answer['usage']}"
    text, usage = "", None
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
        usage = chunk.get("usage") or usage
    return f"{text} usage={usage}"
