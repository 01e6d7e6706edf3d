"""The upstream engines' HTTP/1.1 client (engines/upstream/http1.py) against a raw asyncio
server that answers exactly the bytes each test gives it: bodies framed every way HTTP
allows, connections kept alive or closed, the pool's cap and its queue, TLS, and servers
that misbehave (cut a body short, send something that is not HTTP)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from openmaas.engines.upstream.http1 import ConnectTimeout, HttpPool, Origin, TransportError
from tests.support.certs import self_signed

Answer = Callable[[bytes], bytes | None]  # a request's bytes -> the reply (None: hang up)


class Server:
    """Answers each request (head and ``Content-Length`` body) with ``answer(request)``;
    counts connections and keeps what it received."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after  # hang up after each reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, tls: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                await asyncio.sleep(self.delay)
                self.in_flight -= 1
                reply = self.answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0)  # the handlers see their connections end


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[tuple[Server, HttpPool]]]]:
    made: list[tuple[Server, HttpPool]] = []

    async def make(answer: Answer, *, limit: int = 4, close_after: bool = False) -> tuple:
        server = Server(answer, close_after)
        port = await server.start()
        pool = HttpPool(Origin("127.0.0.1", port), limit=limit, connect_timeout=2.0)
        made.append((server, pool))
        return server, pool

    yield make  # type: ignore[misc]
    for server, pool in made:
        await pool.close()
        await server.stop()


def ok(body: bytes, *headers: bytes) -> Answer:
    extra = b"".join(h + b"\r\n" for h in headers)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    return lambda _request: reply


async def test_a_request_carries_its_headers_and_body_and_the_answer_is_read_whole(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    server, pool = await serve(ok(b'{"ok": true}', b"Retry-After: 3"))
    response = await pool.request("POST", "/v1/chat", b'{"a": 1}', {"Accept": "x/y"})
    assert response.status == 200 and response.headers["retry-after"] == "3"
    assert await response.read() == b'{"ok": true}'
    response.release()
    sent = server.requests[0]
    assert sent.startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert b"\r\nAccept: x/y\r\n" in sent and b"\r\nContent-Length: 8\r\n" in sent
    assert b"\r\nHost: 127.0.0.1:" in sent and sent.endswith(b'\r\n\r\n{"a": 1}')


async def test_chunked_and_connection_delimited_bodies(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    server, pool = await serve(lambda _r: chunked)
    response = await pool.request("GET", "/")
    assert await response.read() == b"hello world"
    response.release()

    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    server, pool = await serve(lambda _r: until_close, close_after=True)
    response = await pool.request("GET", "/")
    assert await response.read() == b"all of it"
    response.release()


async def test_connections_are_kept_alive_unless_either_side_says_close(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    server, pool = await serve(ok(b"x"))
    for _ in range(3):
        response = await pool.request("GET", "/")
        await response.read()
        response.release()
    assert server.connections == 1

    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    server, pool = await serve(lambda _r: closing, close_after=True)
    for _ in range(3):
        response = await pool.request("GET", "/")
        assert await response.read() == b"x"
        response.release()
    assert server.connections == 3


async def test_an_unread_response_closes_its_connection(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    server, pool = await serve(ok(b"y" * 4_000_000))
    response = await pool.request("GET", "/")
    assert await response.readany()  # some of it, not all
    response.release()
    response = await pool.request("GET", "/")
    assert len(await response.read()) == 4_000_000
    response.release()
    assert server.connections == 2


async def test_the_pool_is_capped_and_waiters_are_served_in_turn(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    server, pool = await serve(ok(b"z"), limit=2)
    server.delay = 0.02

    async def one() -> bytes:
        response = await pool.request("GET", "/")
        try:
            return await response.read()
        finally:
            response.release()

    assert await asyncio.gather(*(one() for _ in range(10))) == [b"z"] * 10
    assert server.max_in_flight == 2 and server.connections == 2

    # A waiter cancelled while it waits gives its turn to the next one.
    server.delay = 0.2
    busy = [asyncio.ensure_future(one()) for _ in range(2)]
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(one())
    after = asyncio.ensure_future(one())
    await asyncio.sleep(0.05)
    gone.cancel()
    assert await asyncio.gather(*busy, after) == [b"z"] * 3
    assert gone.cancelled()


async def test_a_body_cut_short_or_a_reply_that_is_not_http_is_a_transport_error(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    _server, pool = await serve(lambda _r: cut, close_after=True)
    response = await pool.request("GET", "/")
    assert await response.readany() == b"only this"
    with pytest.raises(TransportError, match="ended mid-response"):
        await response.readany()
    response.release()

    _server, pool = await serve(lambda _r: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(TransportError, match="malformed"):
        await pool.request("GET", "/")

    _server, pool = await serve(lambda _r: None)  # hangs up before any answer
    with pytest.raises(TransportError):
        await pool.request("GET", "/")


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    serve: Callable[..., asyncio.Future[tuple[Server, HttpPool]]],
) -> None:
    server, pool = await serve(ok(b"k"), close_after=True)  # no Connection: close said
    for _ in range(3):
        response = await pool.request("GET", "/")
        assert await response.read() == b"k"
        response.release()
        await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
    assert server.connections == 3


async def test_a_large_body_read_slowly_arrives_whole() -> None:
    """The socket is paused while the reader lags far behind and resumed as it catches up."""
    body = bytes(range(256)) * 16_384  # 4 MiB
    server = Server(ok(body))
    port = await server.start()
    pool = HttpPool(Origin("127.0.0.1", port), limit=1, connect_timeout=2.0)
    try:
        response = await pool.request("GET", "/")
        await asyncio.sleep(0.2)  # the server writes ahead; the client must not buffer it all
        assert response._buffered < 2 * 1024 * 1024
        parts = []
        while part := await response.readany():
            parts.append(part)
        assert b"".join(parts) == body
        response.release()
        again = await pool.request("GET", "/")  # the connection went back to the pool
        assert await again.read() == body
        again.release()
        assert server.connections == 1
    finally:
        await pool.close()
        await server.stop()


async def test_connect_failures() -> None:
    refused = HttpPool(Origin("127.0.0.1", 1), limit=1, connect_timeout=2.0)
    with pytest.raises(TransportError, match="ConnectionRefused"):
        await refused.request("GET", "/")
    # 192.0.2.0/24 is TEST-NET-1: nothing answers, the SYN is lost or refused by the route
    blackhole = HttpPool(Origin("192.0.2.1", 9), limit=1, connect_timeout=0.1)
    with pytest.raises(TransportError) as caught:
        await blackhole.request("GET", "/")
    assert isinstance(caught.value, ConnectTimeout) or "Errno" in str(caught.value)


def test_a_header_that_would_end_its_line_is_refused() -> None:
    async def attempt() -> None:
        HttpPool(Origin("h", 80), limit=1, connect_timeout=1, headers={"X": "a\r\nEvil: 1"})

    with pytest.raises(ValueError, match="invalid HTTP header"):
        asyncio.run(attempt())


async def test_tls_is_verified(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = Server(ok(b"secret"))
    port = await server.start(server_tls)
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = HttpPool(Origin("127.0.0.1", port, tls=trusting), limit=1, connect_timeout=2.0)
        response = await pool.request("GET", "/")
        assert await response.read() == b"secret"
        response.release()
        await pool.close()

        default = ssl.create_default_context()  # does not know our certificate
        pool = HttpPool(Origin("127.0.0.1", port, tls=default), limit=1, connect_timeout=2.0)
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await pool.request("GET", "/")
        await pool.close()
    finally:
        await server.stop()
