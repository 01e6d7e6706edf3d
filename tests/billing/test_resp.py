"""The rate limiter's Redis client (billing/resp.py): its URLs, its reading of replies, and
against a throwaway redis-server (checked with redis-py, the official client): concurrent
calls over one connection, AUTH, SELECT, a Unix socket, scripts Redis forgot, a reply that
does not come in time, a caller cancelled while it waits, a Redis that went away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from openmaas.billing.resp import (
    RedisAddress,
    RedisClient,
    RedisReplyError,
    RedisUnreachable,
    Script,
    _Incomplete,
    command,
    parse,
)
from tests.support.certs import self_signed
from tests.support.redis import RedisServer, unavailable


def client_for(url: str, timeout: float = 2.0) -> RedisClient:
    return RedisClient(url, timeout=timeout, connect_timeout=timeout)


@pytest.fixture
async def probe(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://cache.internal",
            RedisAddress("cache.internal", 6379, None, False, None, None, 0),
        ),
        ("redis://127.0.0.1:6380/2", RedisAddress("127.0.0.1", 6380, None, False, None, None, 2)),
        ("redis://h?db=3", RedisAddress("h", 6379, None, False, None, None, 3)),
        ("rediss://:p%40ss@h:6390", RedisAddress("h", 6390, None, True, None, "p@ss", 0)),
        ("redis://alice:pw@h/0", RedisAddress("h", 6379, None, False, "alice", "pw", 0)),
        (
            "unix:///run/redis.sock?db=1",
            RedisAddress(None, 0, "/run/redis.sock", False, None, None, 1),
        ),
        (
            "unix://:pw@/run/redis.sock",
            RedisAddress(None, 0, "/run/redis.sock", False, None, "pw", 0),
        ),
    ],
)
def test_a_redis_url_names_where_redis_is_and_how_to_log_in(
    url: str, expected: RedisAddress
) -> None:
    assert RedisAddress.parse(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", "scheme"),
        ("h:6379", "scheme"),
        ("redis://", "no host"),
        ("redis://h:notaport", "Port"),
        ("redis://h/zero", "number"),
        ("redis://h/1?db=2", "twice"),
        ("redis://h?ssl_cert_reqs=none", "unknown URL parameter"),
        ("unix://", "socket's path"),
        ("redis://h?ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt", "is for rediss://"),
        ("rediss://h?ssl_ca_certs=/no/such/ca.pem", "names no file"),
    ],
)
def test_a_url_that_is_not_a_redis_url_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RedisAddress.parse(url)


def test_a_tls_url_may_name_the_cas_that_sign_the_server_s_certificate(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    address = RedisAddress.parse(f"rediss://h:6390/1?ssl_ca_certs={ca}")
    assert (address.tls, address.ca_file, address.db) == (True, str(ca), 1)


def test_an_address_shown_in_a_log_line_never_carries_the_password() -> None:
    assert str(RedisAddress.parse("redis://alice:s3cret@h:7000/1")) == "h:7000"
    assert str(RedisAddress.parse("unix://:s3cret@/run/r.sock")) == "/run/r.sock"


# -- the wire format -----------------------------------------------------------------------


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert command(["SET", "k", "vé", 12, 1.5, b"\r\n"]) == (
        b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\xc3\xa9\r\n$2\r\n12\r\n$3\r\n1.5\r\n$2\r\n\r\n\r\n"
    )
    assert command(["EVALSHA", "ab", 2, "k:1", -5]) == (  # text only: written as text
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\nk:1\r\n$2\r\n-5\r\n"
    )
    with pytest.raises(TypeError):
        command(["SET", None])


def test_replies_are_read_whole_whatever_their_type() -> None:
    wire = b"*4\r\n:-7\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n+OK\r\n*0\r\n-ERR no\r\n"
    reply, after = parse(wire, 0)
    assert reply == [-7, b"a\r\nb", None, ["OK", []]]
    error, end = parse(wire, after)
    assert isinstance(error, RedisReplyError) and str(error) == "ERR no"
    assert end == len(wire)


def test_a_reply_cut_short_anywhere_waits_for_the_rest() -> None:
    wire = b"*3\r\n:1\r\n$5\r\nhello\r\n*1\r\n:2\r\n"
    for cut in range(len(wire)):
        with pytest.raises(_Incomplete):
            parse(wire[:cut], 0)
    assert parse(wire, 0) == ([1, b"hello", [2]], len(wire))


def test_bytes_that_are_not_resp_are_refused() -> None:
    with pytest.raises(ValueError):
        parse(b"HTTP/1.1 200 OK\r\n", 0)


async def test_a_server_that_does_not_speak_resp_drops_the_connection() -> None:
    """Whatever comes back (another protocol, arrays nested past Python's recursion): every
    call waiting raises RedisUnreachable, nothing is left half read."""
    for answer in (b"HTTP/1.1 400 Bad Request\r\n\r\n", b"*1\r\n" * 5_000 + b":1\r\n"):

        async def serve(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes = answer
        ) -> None:
            await reader.read(100)
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = client_for(f"redis://127.0.0.1:{port}")
        try:
            with pytest.raises(RedisUnreachable, match="not a RESP reply"):
                await client.call("PING")
        finally:
            await client.aclose()
            server.close()


# -- against Redis -------------------------------------------------------------------------


async def test_concurrent_calls_share_one_connection_and_each_gets_its_own_reply(
    redis_server: RedisServer, redis_prefix: str, probe: aioredis.Redis
) -> None:
    client = client_for(redis_server.url)
    try:
        keys = [f"{redis_prefix}{i}" for i in range(300)]
        stored = await asyncio.gather(*(client.call("SET", k, f"v{i}") for i, k in enumerate(keys)))
        read = await asyncio.gather(*(client.call("GET", k) for k in keys))
        counted = await asyncio.gather(
            *(client.call("INCRBY", f"{redis_prefix}n", 2) for _ in keys)
        )
    finally:
        await client.aclose()
    assert stored == ["OK"] * 300
    assert read == [f"v{i}".encode() for i in range(300)]
    assert sorted(counted) == list(range(2, 601, 2))
    assert await probe.get(f"{redis_prefix}n") == b"600"
    assert client.connects == 1


async def test_an_error_reply_raises_and_the_next_call_is_answered(
    redis_server: RedisServer,
) -> None:
    client = client_for(redis_server.url)
    try:
        with pytest.raises(RedisReplyError, match="unknown command"):
            await client.call("NOSUCHCOMMAND")
        assert await client.call("ECHO", "still here") == b"still here"
    finally:
        await client.aclose()


async def test_the_url_s_database_is_selected(redis_server: RedisServer, redis_prefix: str) -> None:
    client = client_for(redis_server.url.rsplit("/", 1)[0] + "/3")
    db3 = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    db0 = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.call("SET", f"{redis_prefix}k", "in 3")
        assert await db3.get(f"{redis_prefix}k") == b"in 3"
        assert await db0.get(f"{redis_prefix}k") is None
    finally:
        await client.aclose()
        await db3.aclose()
        await db0.aclose()


@pytest.fixture
def redis_with_socket() -> Iterator[RedisServer]:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    server = RedisServer(unix_socket=True).start()
    try:
        yield server
    finally:
        server.close()


async def test_passwords_users_and_a_unix_socket(redis_with_socket: RedisServer) -> None:
    server = redis_with_socket
    admin = aioredis.Redis.from_url(server.url)
    await admin.acl_setuser(
        "alice", enabled=True, passwords=["+a%l:ce"], keys="*", commands=["+@all"]
    )
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    clients = [
        client_for(f"redis://:s3cret@127.0.0.1:{server.port}/0"),
        client_for(f"redis://alice:{'a%25l%3Ace'}@127.0.0.1:{server.port}"),
        client_for(f"unix://:s3cret@{server.socket_path}?db=1"),
    ]
    wrong = client_for(f"redis://:nope@127.0.0.1:{server.port}/0")
    anonymous = client_for(server.url)
    try:
        for client in clients:
            assert await client.call("PING") == "PONG"
        with pytest.raises(RedisUnreachable, match="refused"):
            await wrong.call("PING")
        with pytest.raises(RedisUnreachable, match="refused"):
            await anonymous.call("PING")
    finally:
        for client in [*clients, wrong, anonymous]:
            await client.aclose()


@pytest.fixture
def redis_with_tls(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    cert, key = self_signed(tmp_path)
    server = RedisServer(tls=(cert, key)).start()
    try:
        yield server, cert
    finally:
        server.close()


async def test_tls_is_verified_against_the_system_s_cas_or_the_url_s(
    redis_with_tls: tuple[RedisServer, Path],
) -> None:
    server, cert = redis_with_tls
    trusting = client_for(f"rediss://127.0.0.1:{server.tls_port}/2?ssl_ca_certs={cert}")
    default = client_for(f"rediss://127.0.0.1:{server.tls_port}/2")  # does not know it
    try:
        assert await trusting.call("ECHO", "over TLS") == b"over TLS"
        with pytest.raises(RedisUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await default.call("PING")
    finally:
        await trusting.aclose()
        await default.aclose()


async def test_a_script_redis_forgot_is_sent_again(
    redis_server: RedisServer, redis_prefix: str, probe: aioredis.Redis
) -> None:
    client = client_for(redis_server.url)
    body = f"-- {uuid.uuid4()}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    script = Script(client, body)
    try:
        assert await script(keys=[f"{redis_prefix}s"], args=[5]) == 5  # never loaded
        assert await probe.script_exists(script.sha) == [True]
        assert await script(keys=[f"{redis_prefix}s"], args=[5]) == 10  # by its digest
        await probe.script_flush()  # as after a restart
        assert await script(keys=[f"{redis_prefix}s"], args=[1]) == 11
        with pytest.raises(RedisReplyError, match="ERR"):
            await Script(client, "return redis.call('NOSUCHCOMMAND')")(keys=[], args=[])
    finally:
        await client.aclose()


async def test_a_reply_that_does_not_come_in_time_drops_the_connection_not_the_next_call(
    private_redis: RedisServer,
) -> None:
    client = client_for(private_redis.url, timeout=0.3)
    pauser = aioredis.Redis.from_url(private_redis.url)
    try:
        assert await client.call("PING") == "PONG"
        await pauser.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        waiting = [asyncio.ensure_future(client.call("ECHO", str(i))) for i in range(3)]
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, RedisUnreachable) for r in results), results
        assert "did not reply within 0.3 s" in str(results[0])
        await pauser.execute_command("CLIENT", "UNPAUSE")
        assert await client.call("ECHO", "after") == b"after"
        assert client.connects == 2
    finally:
        await client.aclose()
        await pauser.aclose()


async def test_a_caller_cancelled_while_it_waits_leaves_the_next_reply_to_the_next_caller(
    private_redis: RedisServer,
) -> None:
    client = client_for(private_redis.url)
    pauser = aioredis.Redis.from_url(private_redis.url)
    try:
        assert await client.call("PING") == "PONG"
        await pauser.execute_command("CLIENT", "PAUSE", "300", "ALL")
        first = asyncio.ensure_future(client.call("ECHO", "first"))
        await asyncio.sleep(0.05)
        first.cancel()
        second = await client.call("ECHO", "second")  # answered once the pause ends
        assert second == b"second"
        assert first.cancelled()
        assert client.connects == 1
    finally:
        await client.aclose()
        await pauser.aclose()


async def test_a_redis_that_went_away_is_unreachable_then_reconnected_when_back(
    private_redis: RedisServer,
) -> None:
    client = client_for(private_redis.url, timeout=1.0)
    try:
        assert await client.call("PING") == "PONG"
        private_redis.stop()
        with pytest.raises(RedisUnreachable):
            await client.call("PING")
        with pytest.raises(RedisUnreachable, match="cannot connect"):
            await client.call("PING")
        private_redis.start()  # the same port
        assert await client.call("PING") == "PONG"
        assert client.connects == 2
    finally:
        await client.aclose()


async def test_many_callers_while_no_connection_is_open_open_one(
    private_redis: RedisServer, redis_prefix: str
) -> None:
    client = client_for(private_redis.url)
    try:
        replies = await asyncio.gather(*(client.call("ECHO", str(i)) for i in range(50)))
    finally:
        await client.aclose()
    assert replies == [str(i).encode() for i in range(50)]
    assert client.connects == 1
