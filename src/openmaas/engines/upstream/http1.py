"""The upstream engines' HTTP client: keep-alive HTTP/1.1 to one origin (TCP, TLS or a Unix
socket), a pool of at most ``limit`` connections, a response read whole or piece by piece as
it arrives.

It does only what an upstream request needs: a request with a body, a response's status,
headers and body (``Content-Length``, chunked, or up to the connection's end; parsed by
httptools, the parser uvicorn serves us with), flow control while the reader lags, and a
connection handed back to the pool once its response was read to the end. No redirects,
cookies, proxies, credentials from the environment or decompression (we ask for none).
It replaced aiohttp on the request path, whose general client cost ~50 µs of CPU a request
here against ~8 (``docs/benchmarks.md``, "The upstream client").

Failures of the connection are :class:`TransportError` (:class:`ConnectTimeout` for a
connection not made in time); the engines turn them into the platform's errors.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import httptools

__all__ = ["ConnectTimeout", "HttpPool", "Origin", "Response", "TransportError"]

_HIGH_WATER = 256 * 1024  # bytes read ahead of the reader before the socket is paused
_LOW_WATER = 64 * 1024


class TransportError(ConnectionError):
    """No answer, or an answer cut off: the connection failed, was refused, reset or closed
    before the response ended, or what came back was not HTTP."""


class ConnectTimeout(TransportError):
    """The connection (TCP, then TLS) was not made within the connect timeout."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the requests go: ``host:port`` over TCP (``tls`` set: TLS, verified with it),
    or the Unix socket ``uds`` (``host`` then only names the server in ``Host``)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    uds: str | None = None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls is not None else 80
        return host if self.port == default or self.uds else f"{host}:{self.port}"


class Response:
    """One response: ``status`` and ``headers`` (names in lower case) once it has begun, its
    body through :meth:`readany` or :meth:`read`. :meth:`release` it, always: read to its end
    its connection goes back to the pool; otherwise the connection is closed (the upstream
    sees the disconnect)."""

    __slots__ = (
        "status",
        "headers",
        "_connection",
        "_chunks",
        "_buffered",
        "_complete",
        "_error",
        "_waiter",
        "_released",
    )

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    async def readany(self) -> bytes:
        """What has arrived of the body since the last read, waiting for something when
        nothing has; ``b""`` at its end. Raises ``TransportError`` when the connection
        ended before the body did."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._waiter = self._connection.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else self._take_all()
        self._buffered -= len(data)
        if self._buffered < _LOW_WATER:
            self._connection.resume()
        return data

    def _take_all(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def read(self) -> bytes:
        """The whole body (what is left of it)."""
        parts = []
        while part := await self.readany():
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with this response: a complete one gives its connection back to the pool
        (unless either side said ``Connection: close``), any other closes it. Idempotent."""
        if self._released:
            return
        self._released = True
        self._connection.done(self, reusable=self._complete and self._error is None)

    # -- fed by the connection ------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: TransportError) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request on it at a time."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future[None] | None = None  # the current response's status line
        self.closed = False
        self.keep_alive = True
        self.paused = False
        self.framed = False  # the response says where its body ends (length or chunked)

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing was asked: not a server we can talk to
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failed(TransportError(f"malformed HTTP response ({exc})"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost says the rest

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        response = self.response
        if response is not None and not response._complete:
            if exc is None and self.head is not None and self.head.done() and not self.framed:
                response._end()  # a body that ends with the connection has ended
            else:
                why = f"{type(exc).__name__}: {exc}" if exc else "the server closed it"
                self._failed(TransportError(f"the connection ended mid-response ({why})"))
        self.pool._lost(self)

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None and not response.status:  # trailers are not headers
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            response.headers[key] = text
            if key == "content-length" or (key == "transfer-encoding" and "chunked" in text):
                self.framed = True

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.status = self.parser.get_status_code()
            self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
            self.response._end()

    # -- the pool's side -----------------------------------------------------------------
    async def send(self, data: bytes) -> Response:
        """Write a request; the response once its status line and headers have come."""
        if self.closed or self.transport is None:
            raise TransportError("the connection was closed")
        response = self.response = Response(self)
        head = self.head = self.loop.create_future()
        self.framed = False
        self.transport.write(data)
        await head
        return response

    def _failed(self, error: TransportError) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        if self.response is not None:
            self.response._fail(error)

    def done(self, response: Response, *, reusable: bool) -> None:
        if response is not self.response:
            return
        self.response = None
        self.head = None
        if reusable and self.keep_alive and not self.closed:
            self.resume()
            self.pool._put_back(self)
        else:
            self.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows, and frees its place


class HttpPool:
    """At most ``limit`` keep-alive connections to ``origin``; a request beyond them waits
    for one (first come, first served). ``headers`` go with every request."""

    def __init__(
        self,
        origin: Origin,
        *,
        limit: int,
        connect_timeout: float | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._count = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False
        fixed = {"Host": origin.authority, "User-Agent": "OpenMaaS", **(headers or {})}
        self._fixed = _header_lines(fixed)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send ``method target`` (a path, query included) with ``body``; the response once
        its headers have come. Raises ``TransportError`` (``ConnectTimeout``)."""
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
        if headers:
            lines.append(_header_lines(headers))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
            lines.append(body)
        else:
            lines.append(b"\r\n")
        data = b"".join(lines)
        connection = await self._acquire()
        try:
            return await connection.send(data)
        except BaseException:
            connection.abort()
            raise

    async def close(self) -> None:
        """Close the idle connections; those in use close when their responses are released;
        waiting requests fail."""
        self._closed = True
        for connection in self._idle:
            connection.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(TransportError("the client was closed"))

    # -- the pool ------------------------------------------------------------------------
    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise TransportError("the client was closed")
            while self._idle:
                connection = self._idle.pop()  # the most recently used: its socket is warm
                if not connection.closed:
                    return connection
            if self._count < self._limit:
                self._count += 1  # a place of its own, taken now
                return await self._open_in_place()
            handed = await self._wait_turn()
            if handed is None:  # a place freed up, and is this request's now
                return await self._open_in_place()
            if not handed.closed:
                return handed

    async def _wait_turn(self) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # given a turn it will not take: the next one's
                if handed is None:
                    self._count -= 1
                    self._pass_on(None)
                else:
                    self._put_back(handed)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    async def _open_in_place(self) -> _Connection:
        try:
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._pass_on(None)
            raise

    async def _connect(self) -> _Connection:
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                if origin.uds:
                    _, protocol = await self.loop.create_unix_connection(
                        lambda: _Connection(self), origin.uds
                    )
                else:
                    _, protocol = await self.loop.create_connection(
                        lambda: _Connection(self),
                        origin.host,
                        origin.port,
                        ssl=origin.tls,
                        server_hostname=origin.host if origin.tls is not None else None,
                    )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self._connect_timeout} s") from None
        except OSError as exc:  # refused, unreachable, a name that does not resolve, TLS
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return protocol

    def _put_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.abort()
        elif not self._pass_on(connection):
            self._idle.append(connection)

    def _pass_on(self, connection: _Connection | None) -> bool:
        """Give the first waiting request ``connection`` (None: a place to open one in);
        False when nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if connection is None:
                    self._count += 1  # the place is the waiter's now
                waiter.set_result(connection)
                return True
        return False

    def _lost(self, connection: _Connection) -> None:
        self._count -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        if not self._closed:
            self._pass_on(None)


def _header_lines(headers: Mapping[str, str]) -> bytes:
    """``Name: value`` lines; a name or value that would end the line is refused."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"invalid HTTP header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
