"""Rate limits across two live gateway processes sharing one Redis (OPENMAAS_REDIS_URL):
a 60-RPM tier lets exactly 60 of 200 requests through across both; Redis stopped, both fail
closed and say so in /readyz; Redis back, both recover without a restart.

The two servers run on copies of one data directory (the same organizations, keys and
secret), each its own SQLite file, so that only Redis is shared: what one admits, the other
counts."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.live import LiveServer
from tests.support.redis import RedisServer

MODEL = "fake-limited"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def two_gateways(
    tmp_path: Path, private_redis: RedisServer
) -> Iterator[tuple[LiveServer, LiveServer, str]]:
    settings = {
        "embedded_models": False,
        # Room for the 60 admitted at once: an organization may hold half the engine's
        # queue, and a burst admitted together must not meet that bound instead of the tier's.
        "fake_models": {MODEL: {"text": "one two three", "slots": 8, "queue": 200}},
        "redis_url": private_redis.url,
        "billing_refresh_seconds": 0,
    }
    first = LiveServer(tmp_path / "a" / "home", **settings)
    first.home.mkdir(parents=True)
    first.cli("tiers", "set", "Sixty", "--rpm", "60")
    first.cli("orgs", "create", "acme")
    first.cli("orgs", "set", "acme", "--tier", "Sixty")
    key = first.cli("keys", "create", "--org", "acme", "--name", "app").stdout.strip()
    shutil.copytree(first.home, tmp_path / "b" / "home")
    second = LiveServer(tmp_path / "b" / "home", **settings)
    for server in (first, second):
        server.start(wait=False)
    try:
        for server in (first, second):
            server.wait_ready()
        yield first, second, key
    finally:
        for server in (first, second):
            if server.process is not None:
                server.stop()


async def _send(servers: tuple[LiveServer, ...], key: str, each: int) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=400)) as client:
        start = asyncio.Event()

        async def one(server: LiveServer) -> int:
            await start.wait()
            response = await client.post(
                f"{server.base_url}/v1/chat/completions", json=CHAT, headers=headers
            )
            return response.status_code

        tasks = [asyncio.create_task(one(s)) for s in servers for _ in range(each)]
        await asyncio.sleep(0)
        start.set()
        return list(await asyncio.gather(*tasks))


def _readyz(server: LiveServer) -> httpx.Response:
    return httpx.get(f"{server.base_url}/readyz", timeout=10)


def _ready_again(server: LiveServer, timeout: float = 30.0) -> httpx.Response:
    """Poll /readyz until it is 200 (bounded: it fails the test past ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (ready := _readyz(server)).status_code != 200:
        assert time.monotonic() < deadline, f"never ready again: {ready.json()}"
        time.sleep(0.05)
    return ready


def test_two_gateways_on_one_redis_let_exactly_60_of_200_through_then_survive_an_outage(
    two_gateways: tuple[LiveServer, LiveServer, str], private_redis: RedisServer
) -> None:
    first, second, key = two_gateways
    for server in (first, second):
        limiter = _readyz(server).json()["limiter"]
        assert limiter == {"backend": "redis", "status": "ok", "enforcing": True,
                           "failure_mode": "closed"}  # fmt: skip

    statuses = asyncio.run(_send((first, second), key, 100))
    assert statuses.count(200) == 60 and statuses.count(429) == 140

    private_redis.stop()
    for server in (first, second):
        ready = _readyz(server)
        assert ready.status_code == 503
        assert ready.json()["limiter"]["status"] == "unreachable"
        refused = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "upstream_unavailable"
        assert "OPENMAAS_REDIS_FAILURE_MODE=closed" in refused.json()["error"]["message"]

    private_redis.start()  # the same address, empty: the minute's counts are forgotten
    for server in (first, second):
        assert _ready_again(server).json()["limiter"]["status"] == "ok"
    statuses = asyncio.run(_send((first, second), key, 40))
    assert statuses.count(200) == 60 and statuses.count(429) == 20
