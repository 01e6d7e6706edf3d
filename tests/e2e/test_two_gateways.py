"""Two gateway processes on one database, SQLite and PostgreSQL: both serve; a balance for
exactly 10 requests admits exactly 10 of 200 sent to both at once; ``kill -9`` of one
mid-stream: the survivor settles the dead one's requests by their checkpoints (from the dead
one's lease) and closes its lease while its own streams run on, and the killed one,
restarted, recovers nothing twice. The books stay exact: one usage record per admitted
request, the ledger summing to zero, nothing held or leased, revenue equal to the sum of
costs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from openmaas.store.database import open_database
from openmaas.store.schema import inflight, usage_records
from tests.e2e import test_balance_concurrency as quota
from tests.e2e.live import LiveServer
from tests.e2e.test_crash_recovery import (
    MODELS,
    PRICES,
    PROMPT_TOKENS,
    SLOW,
    TOP_UP,
    WORST_CASE,
    Books,
    assert_balanced,
    chat,
    client,
    cost_of,
    read_books_at,
    seed_at,
    sqlite_url,
    stream_until_cut,
)
from tests.pg import TestCluster
from tests.support.waiting import eventually

SETTINGS: dict[str, Any] = {
    "fake_models": {
        **MODELS,
        quota.MODEL: {"text": " ".join(["a"] * 50), "slots": 8, "queue": 256},
    },
    "embedded_models": "false",
    "checkpoint_seconds": "0.2",  # the running count reaches the database every 0.2 s
    "billing_refresh_seconds": "0",  # prices seeded by the test apply at once
    "recovery_seconds": "0.5",  # survivors look for the dead twice a second
    "lease_seconds": "1",  # an idle lease goes back to the organization after a second
}
STREAMS = 3  # per gateway


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "home")
    cluster: TestCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture
def gateways(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers, each on its own port, one data directory (the master key) and one
    database; the first starts alone (the first start creates the admin key)."""
    home = tmp_path / "home"
    settings = {**SETTINGS, "database_url": database_url}
    first = LiveServer(home, logs=tmp_path / "a", **settings)
    second = LiveServer(home, logs=tmp_path / "b", **settings)
    first.start()
    second.start()
    try:
        yield first, second
    finally:
        for server in (first, second):
            if server.process is not None and server.process.poll() is None:
                server.kill()


async def query(url: str, statement: Any) -> list[dict[str, Any]]:
    engine = open_database(url)
    try:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(statement)]
    finally:
        await engine.dispose()


async def test_200_requests_to_two_gateways_never_overdraw_a_balance_for_10(
    gateways: tuple[LiveServer, LiveServer], database_url: str
) -> None:
    first, second = gateways
    org = await seed_at(database_url, [quota.PRICE], quota.TOP_UP)
    body = {
        "model": quota.MODEL,
        "messages": [{"role": "user", "content": quota.PROMPT}],
        "max_tokens": quota.MAX_TOKENS,
    }
    limits = httpx.Limits(max_connections=quota.REQUESTS, max_keepalive_connections=quota.REQUESTS)
    headers = {"Authorization": f"Bearer {first.admin_key}"}
    async with (
        httpx.AsyncClient(base_url=first.base_url, headers=headers, limits=limits, timeout=60) as a,
        httpx.AsyncClient(
            base_url=second.base_url, headers=headers, limits=limits, timeout=60
        ) as b,
    ):
        responses = await asyncio.gather(
            *(
                (a if i % 2 else b).post("/v1/chat/completions", json=body)
                for i in range(quota.REQUESTS)
            )
        )
    ok = [r for r in responses if r.status_code == 200]
    assert len(ok) == quota.AFFORDABLE
    for response in responses:
        if response.status_code != 200:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "insufficient_quota"
    books = await read_books_at(database_url, org)
    assert set(books.usage) == {r.headers["x-request-id"] for r in ok}
    assert all(r["cost_micros"] == quota.CHARGE for r in books.usage.values())
    assert_balanced(books, quota.TOP_UP)


async def test_kill_9_of_one_gateway_is_recovered_once_by_the_survivor(
    gateways: tuple[LiveServer, LiveServer], database_url: str
) -> None:
    doomed, survivor = gateways
    org = await seed_at(database_url, PRICES, TOP_UP)
    seen: dict[str, int] = {}
    doomed_ids: list[str] = []
    survivor_ids: list[str] = []
    async with client(doomed) as to_doomed, client(survivor) as to_survivor:
        streams = [
            asyncio.create_task(stream_until_cut(http, chat(SLOW), seen, ids))
            for http, ids in ((to_doomed, doomed_ids), (to_survivor, survivor_ids))
            for _ in range(STREAMS)
        ]

        async def checkpointed() -> list[dict[str, Any]] | None:
            if len(seen) < 2 * STREAMS or min(seen.values()) < 10:
                return None
            found = await query(
                database_url, select(inflight).where(inflight.c.completion_tokens >= 10)
            )
            return found if len(found) == 2 * STREAMS else None

        left = await eventually(
            checkpointed, timeout=30, what="a checkpoint of every stream past its first tokens"
        )
        owners = {r["request_id"]: r["instance_id"] for r in left}
        assert len({owners[i] for i in doomed_ids}) == 1  # one instance per process
        assert {owners[i] for i in doomed_ids}.isdisjoint(owners[i] for i in survivor_ids)
        checkpoints = {r["request_id"]: r["completion_tokens"] for r in left}

        assert doomed.kill() == -signal.SIGKILL

        async def recovered() -> bool:
            records = await query(
                database_url,
                select(usage_records).where(usage_records.c.request_id.in_(doomed_ids)),
            )
            rows = await query(
                database_url, select(inflight).where(inflight.c.request_id.in_(doomed_ids))
            )
            return len(records) == STREAMS and not rows

        await eventually(
            recovered, timeout=30, what="the survivor to recover the dead gateway's requests"
        )
        outcomes = await asyncio.gather(*streams)
    # The dead gateway's streams were cut; the survivor's ran on to the end.
    assert outcomes == [False] * STREAMS + [True] * STREAMS

    async def leases_back() -> Books | None:  # the survivor's lease, idle, comes back
        found = await read_books_at(database_url, org)
        return found if not found.open_leases else None

    books = await eventually(leases_back, timeout=30, what="the survivor's idle lease back")
    assert set(books.usage) == {*doomed_ids, *survivor_ids}
    for request_id in doomed_ids:
        record = books.usage[request_id]
        assert record["termination"] == "gateway_killed"
        assert checkpoints[request_id] <= record["completion_tokens"] < 300
        assert record["cost_micros"] == cost_of(PROMPT_TOKENS, record["completion_tokens"])
        assert 0 < record["cost_micros"] <= books.holds[request_id] == WORST_CASE
    for request_id in survivor_ids:
        record = books.usage[request_id]
        assert (record["termination"], record["completion_tokens"]) == ("finished", 300)
        assert record["cost_micros"] == cost_of(PROMPT_TOKENS, 300)
    assert_balanced(books, TOP_UP)

    # The killed gateway restarts (ready only once its own recovery has run): nothing is
    # left to recover, and nothing is recovered twice.
    doomed.start()
    again: Books = await read_books_at(database_url, org)
    assert again == books


def test_a_revoked_key_is_refused_by_both_gateways(
    gateways: tuple[LiveServer, LiveServer],
) -> None:
    first, second = gateways
    key = first.new_key(name="both")
    for server in (first, second):  # each gateway now has the key in memory
        response = httpx.get(
            f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200
    first.cli("keys", "revoke", key.split(".")[0])
    for server in (first, second):
        assert "revoked" in server.await_refused(key).json()["error"]["message"]
