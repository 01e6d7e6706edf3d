"""The rate limiter's Redis client: RESP2 over one pipelined asyncio connection to one Redis
(TCP, TLS or a Unix socket).

It does only what the limiter needs: commands sent as they come, without waiting for the
replies before (Redis answers in order; each reply goes to the oldest call waiting), a Lua
script run by its digest (``EVALSHA``, then ``EVAL`` when Redis does not have it), ``AUTH``
and ``SELECT`` from the URL. One connection carries every call of the process: Redis runs
one command at a time, so more connections would not answer sooner. It replaced redis-py
on the request path, whose general client (a pool of connections, one call at a time on
each) cost 236–260 µs of the gateway's CPU a tiered request here (an admission and a
settlement: two scripts) against 69–75 (``docs/benchmarks.md``, "Rate limits in Redis").

A call whose reply does not come within ``timeout``, or whose connection breaks, raises
:class:`RedisUnreachable`; the connection is then dropped with every call waiting on it
(their replies could no longer be told apart), and the next call opens a new one. Such a
call may or may not have run: the limiter's scripts are safe to run twice. An error reply
raises :class:`RedisReplyError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisAddress", "RedisClient", "RedisReplyError", "RedisUnreachable", "Script"]

DEFAULT_PORT = 6379


class RedisUnreachable(ConnectionError):
    """No reply: Redis could not be reached, or the connection broke or timed out first."""


class RedisReplyError(Exception):
    """Redis answered with an error (``-ERR ...``, ``-NOSCRIPT ...``, a script's error)."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in: ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` (TLS, the server's certificate verified against the system's CAs, or
    against the file ``?ssl_ca_certs=PATH`` names) or
    ``unix://[[user]:password@]/path/to/socket[?db=N]``."""

    host: str | None
    port: int
    path: str | None  # a Unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int
    ca_file: str | None = None  # TLS: the CAs that may sign the server's certificate

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """The address in ``url``; ``ValueError`` saying what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"the scheme must be redis://, rediss:// or unix://, not {url!r}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"db", "ssl_ca_certs"}
        if unknown:
            raise ValueError(f"unknown URL parameter(s): {', '.join(sorted(unknown))}")
        ca_file = query.get("ssl_ca_certs", [None])[0]
        if ca_file is not None and parts.scheme != "rediss":
            raise ValueError("ssl_ca_certs is for rediss:// (TLS) only")
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ValueError(f"ssl_ca_certs names no file: {ca_file!r}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        db_text = query.get("db", [""])[0]
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL names the socket's path")
            return cls(None, 0, parts.path, False, username, password, _db(db_text or "0"))
        if not parts.hostname:
            raise ValueError(f"no host in {parts.scheme}://")
        db_path = parts.path.strip("/")
        if db_path and db_text:
            raise ValueError("the database is named twice (path and ?db=)")
        port = parts.port or DEFAULT_PORT  # parts.port: ValueError when not a port
        tls = parts.scheme == "rediss"
        db = _db(db_path or db_text)
        return cls(parts.hostname, port, None, tls, username, password, db, ca_file)

    def __str__(self) -> str:  # never the password
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def command(args: Sequence[Any]) -> bytes:
    """``args`` as a RESP array of bulk strings (str as UTF-8, int and float in decimal)."""
    text = [f"*{len(args)}\r\n"]
    for arg in args:  # the limiter's arguments: ASCII keys and numbers, written as text
        kind = type(arg)
        if kind is int or (kind is str and arg.isascii()):
            value = str(arg)
            text.append(f"${len(value)}\r\n{value}\r\n")
        else:
            return _command_bytes(args)
    return "".join(text).encode()


def _command_bytes(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a Redis argument is bytes, str, int or float, not {type(arg)}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buffer: bytearray | bytes, pos: int) -> tuple[Any, int]:
    """The reply that starts at ``pos`` and where the next one starts: an int, bytes (a bulk
    string), str (a status), a list, None (a null), or a :class:`RedisReplyError` (an error
    reply, returned, not raised). ``_Incomplete`` when the buffer ends inside it,
    ``ValueError`` when it is not RESP."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buffer[pos]
    line = buffer[pos + 1 : end]
    after = end + 2
    if kind == 58:  # ":" an integer
        return int(line), after
    if kind == 36:  # "$" a bulk string
        size = int(line)
        if size < 0:
            return None, after
        stop = after + size
        if len(buffer) < stop + 2:
            raise _Incomplete
        return bytes(buffer[after:stop]), stop + 2
    if kind == 42:  # "*" an array
        count = int(line)
        if count < 0:
            return None, after
        items: list[Any] = []
        for _ in range(count):
            if after < len(buffer) and buffer[after] == 58:  # an integer, read here
                end = buffer.find(b"\r\n", after)
                if end < 0:
                    raise _Incomplete
                items.append(int(buffer[after + 1 : end]))
                after = end + 2
            else:
                item, after = parse(buffer, after)
                items.append(item)
        return items, after
    if kind == 43:  # "+" a status
        return line.decode(), after
    if kind == 45:  # "-" an error
        return RedisReplyError(line.decode(errors="replace")), after
    raise ValueError(f"not a RESP reply (type byte {kind!r})")


_NOT_SERVING = ("NOAUTH ", "WRONGPASS ", "LOADING ")
"""Error replies that say Redis will not serve this connection now (no or a wrong password,
a dataset still loading): as good as unreachable, not a command's error."""


def _as_raised(error: RedisReplyError) -> Exception:
    if str(error).startswith(_NOT_SERVING):
        return RedisUnreachable(f"Redis refused the call: {error}")
    return error


class _Connection(asyncio.Protocol):
    """One connection: calls written in order, replies handed to the oldest call waiting."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                reply, pos = parse(buffer, pos)
                if not self.waiting:
                    raise ValueError("a reply nobody asked for")
                future = self.waiting.popleft()
                if future.done():  # its caller was cancelled: the reply is dropped
                    continue
                if isinstance(reply, RedisReplyError):
                    future.set_exception(_as_raised(reply))
                else:
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested too deep
            self.fail(RedisUnreachable(f"Redis sent what is not a RESP reply ({exc!r})"))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"{type(exc).__name__}: {exc}" if exc else "Redis closed it"
        self.fail(RedisUnreachable(f"the connection to Redis ended ({why})"))

    async def call(self, payload: bytes, timeout: float) -> Any:
        if self.closed or self.transport is None:
            raise RedisUnreachable("the connection to Redis was closed")
        future = self.loop.create_future()
        self.waiting.append(future)
        self.transport.write(payload)
        timer = self.loop.call_later(timeout, self._timed_out, future, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def _timed_out(self, future: asyncio.Future[Any], timeout: float) -> None:
        if not future.done():
            self.fail(RedisUnreachable(f"Redis did not reply within {timeout:g} s"))

    def fail(self, error: RedisUnreachable) -> None:
        """Drop the connection: every call waiting on it raises ``error``."""
        self.closed = True
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class RedisClient:
    """Calls to the Redis at ``url`` (:class:`RedisAddress`; ``ValueError`` when it is not
    one) over one connection, opened at the first call and again after it was dropped."""

    def __init__(self, url: str, *, timeout: float, connect_timeout: float) -> None:
        self.address = RedisAddress.parse(url)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self.connects = 0  # connections opened

    async def call(self, *args: Any) -> Any:
        """Run one command; its reply (see :func:`parse`)."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connected()
        return await connection.call(command(args), self._timeout)

    async def _connected(self) -> _Connection:
        """The connection, opened once for every caller waiting for it."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connect_ended)
        # A caller cancelled while it waits does not cancel the others' connect.
        return await asyncio.shield(connecting)

    def _connect_ended(self, connecting: asyncio.Future[_Connection]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled() and connecting.exception() is None:
            self._connection = connecting.result()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self.address
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if address.path is not None or address.host is None:
                    _, connection = await loop.create_unix_connection(_Connection, address.path)
                else:
                    context = (
                        ssl.create_default_context(cafile=address.ca_file) if address.tls else None
                    )
                    _, connection = await loop.create_connection(
                        _Connection, address.host, address.port, ssl=context
                    )
                for hello in _hello(address):
                    await connection.call(command(hello), self._timeout)
        except BaseException as exc:
            if connection is not None:  # half set up: closed, whatever went wrong
                connection.fail(RedisUnreachable("the connection was not set up"))
            raise _connect_error(exc, address, self._connect_timeout) from None
        self.connects += 1
        return connection

    async def aclose(self) -> None:
        """Close the connection (calls waiting on it raise :class:`RedisUnreachable`)."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.fail(RedisUnreachable("the client was closed"))
            self._connection = None


def _connect_error(exc: BaseException, address: RedisAddress, timeout: float) -> BaseException:
    """What a failed connect raises: :class:`RedisUnreachable` saying why, or ``exc`` itself
    when it is not the connect's failure (a cancellation)."""
    if isinstance(exc, RedisUnreachable):  # e.g. AUTH refused (WRONGPASS)
        return exc
    if isinstance(exc, TimeoutError):
        return RedisUnreachable(f"no connection to Redis at {address} within {timeout:g} s")
    if isinstance(exc, OSError):
        return RedisUnreachable(f"cannot connect to Redis at {address}: {exc}")
    if isinstance(exc, RedisReplyError):  # SELECT refused
        return RedisUnreachable(f"Redis at {address} refused the connection: {exc}")
    return exc


def _hello(address: RedisAddress) -> list[tuple[Any, ...]]:
    """What a new connection sends first: ``AUTH`` and ``SELECT``, as the URL asks."""
    hello: list[tuple[Any, ...]] = []
    if address.password is not None:
        if address.username:
            hello.append(("AUTH", address.username, address.password))
        else:
            hello.append(("AUTH", address.password))
    if address.db:
        hello.append(("SELECT", address.db))
    return hello


class Script:
    """A Lua script run by its SHA-1 digest, sent whole only when Redis does not have it
    (after a restart, or on first use)."""

    def __init__(self, client: RedisClient, body: str) -> None:
        self.client = client
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.call("EVAL", self.body, len(keys), *keys, *args)
