"""``kill -9`` of the server at any moment leaves the books exact after the next start.

Every request that reached an engine has exactly one usage record; a request the killed
process left in flight is recorded as ``gateway_killed`` and billed by its last checkpoint
(free before the first completion token, never more than its hold); the ledger balances,
no hold stays open, and nothing is billed twice: the usage records' costs, the revenue
account and the organization's spent cash are the same number.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from openmaas.core.clock import SystemClock
from openmaas.core.ledger_events import TopUp, cash, held, system
from openmaas.core.money import Currency
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.store.billing import set_price
from openmaas.store.database import open_database
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.schema import (
    inflight,
    ledger_entries,
    ledger_events,
    organizations,
    usage_records,
)
from tests.e2e.live import LiveServer
from tests.support.waiting import eventually

PROMPT = "tell me a long story"  # the fake engine counts 5 prompt tokens (words)
PROMPT_TOKENS = 5
MAX_TOKENS = 300
TOP_UP = 10_000_000  # 10 CNY

SLOW = "fake-billed-slow"  # ~300 tokens at 50 tokens/s: a stream runs for ~6 s
STUCK = "fake-billed-stuck"  # one slot, a queue; its first token would come after 60 s
UNPRICED_STUCK = "fake-free-stuck"  # no price: metered, never charged
MODELS = {
    SLOW: {"text": " ".join(f"w{i}" for i in range(MAX_TOKENS)), "token_delay": 0.02,
           "slots": 8, "queue": 8},
    STUCK: {"text": "never", "first_token_delay": 60.0, "slots": 1, "queue": 4},
    UNPRICED_STUCK: {"text": "never", "first_token_delay": 60.0, "slots": 1},
}  # fmt: skip
SETTINGS: dict[str, Any] = {
    "fake_models": MODELS,
    "embedded_models": "false",
    "checkpoint_seconds": "0.2",  # the running count reaches the database every 0.2 s
    "billing_refresh_seconds": "0",  # prices seeded by the test apply at once
}
PRICES = [  # micros per 1M tokens: 100 micros per input token, 200 per output token
    ModelPrice(name, input_per_million=100_000_000, cached_input_per_million=50_000_000,
               output_per_million=200_000_000)
    for name in (SLOW, STUCK)
]  # fmt: skip


def cost_of(prompt: int, completion: int) -> int:
    return prompt * 100 + completion * 200


WORST_CASE = AppliedPrice(PRICES[0]).worst_case(PROMPT_TOKENS, MAX_TOKENS).cash_for(10**9)


def chat(model: str, *, stream: bool = True, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


# -- seeding and reading the books, through the store as another process would ---------


def sqlite_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'openmaas.db'}"


async def seed(
    live: LiveServer, prices: list[ModelPrice], top_up: int, topup_id: str = "t1"
) -> str:
    """Prices and a top-up of the default organization, written while the server runs."""
    return await seed_at(sqlite_url(live.home), prices, top_up, topup_id)


async def seed_at(url: str, prices: list[ModelPrice], top_up: int, topup_id: str = "t1") -> str:
    """``seed`` on the database at ``url`` (SQLite or PostgreSQL); returns the organization."""
    engine = open_database(url)
    try:
        async with engine.begin() as conn:
            named = select(organizations.c.id).where(organizations.c.name == "default")
            org = str((await conn.execute(named)).scalar_one())
            for price in prices:
                await set_price(conn, price)
        await LedgerStore(engine, SystemClock().now_ms).execute(TopUp(topup_id, org, top_up))
    finally:
        await engine.dispose()
    return org


@dataclass(frozen=True)
class Books:
    totals: dict[str, int]
    open_holds: list[str]
    cash: int
    held: int
    leased: int
    open_leases: list[str]
    revenue: int
    revenue_sql: int
    holds: dict[str, int]  # request id -> money held, or reserved from a lease
    usage: dict[str, dict[str, Any]]  # request id -> usage record
    inflight: list[dict[str, Any]]


async def read_books(live: LiveServer, org: str) -> Books:
    return await read_books_at(sqlite_url(live.home), org)


async def read_books_at(url: str, org: str) -> Books:
    """The ledger, the usage records and what is left in flight, as another process reads
    them from the database at ``url`` (SQLite or PostgreSQL)."""
    revenue = system(Currency.CNY.value, "revenue")
    e = ledger_entries.c
    engine = open_database(url)
    try:
        ledger = await LedgerStore(engine, SystemClock().now_ms).refresh()
        async with engine.connect() as conn:
            credits = select(func.coalesce(func.sum(e.amount), 0)).where(e.credit == revenue)
            debits = select(func.coalesce(func.sum(e.amount), 0)).where(e.debit == revenue)
            net = int((await conn.execute(credits)).scalar_one()) - int(
                (await conn.execute(debits)).scalar_one()
            )
            holds: dict[str, int] = {}
            placed = select(ledger_events.c.request_id, ledger_events.c.body).where(
                ledger_events.c.kind == "hold_placed"
            )
            for request_id, body in await conn.execute(placed):
                assert request_id not in holds, "two holds for one request"
                holds[request_id] = json.loads(body)["promo"] + json.loads(body)["cash"]
            spent = select(ledger_events.c.request_id, ledger_events.c.body).where(
                ledger_events.c.kind == "lease_spent"
            )
            for request_id, body in await conn.execute(spent):  # admitted against a lease
                assert request_id not in holds, "two settlements for one request"
                holds[request_id] = json.loads(body)["reserved"]
            usage = {
                r.request_id: dict(r._mapping) for r in await conn.execute(select(usage_records))
            }
            left = [
                dict(r._mapping)
                for r in await conn.execute(select(inflight).order_by(inflight.c.request_id))
            ]
    finally:
        await engine.dispose()
    return Books(
        totals=ledger.totals_by_unit(),
        open_holds=ledger.open_holds(),
        cash=ledger.balance(cash(org)),
        held=ledger.balance(held(org)),
        leased=sum(ledger.leased_parts(org)),
        open_leases=ledger.open_leases(),
        revenue=ledger.balance(revenue),
        revenue_sql=net,
        holds=holds,
        usage=usage,
        inflight=left,
    )


def assert_balanced(books: Books, top_up: int) -> None:
    """The books after a restart: nothing open, nothing billed twice, nothing lost."""
    assert all(total == 0 for total in books.totals.values()), books.totals
    assert books.open_holds == []
    assert books.inflight == []
    assert books.held == 0
    assert books.open_leases == [] and books.leased == 0
    billed = sum(r["cost_micros"] or 0 for r in books.usage.values())
    assert billed == books.revenue == books.revenue_sql == top_up - books.cash
    assert books.cash >= 0
    # Every held request has exactly one usage record (request_id is its primary key),
    # charged within its hold; a request without a hold (an unpriced model) has no cost.
    assert set(books.holds) <= set(books.usage)
    for request_id, record in books.usage.items():
        if request_id not in books.holds:
            assert record["cost_micros"] is None, record
            continue
        assert record["currency"] == "CNY", request_id
        assert 0 <= record["cost_micros"] <= books.holds[request_id], record


# -- the server ---------------------------------------------------------------------


@pytest.fixture()
async def server(tmp_path: Path) -> AsyncIterator[tuple[LiveServer, str]]:
    live = LiveServer(tmp_path / "home", **SETTINGS).start()
    org = await seed(live, PRICES, TOP_UP)
    try:
        yield live, org
    finally:
        live.kill()


def kill_and_restart(live: LiveServer) -> None:
    assert live.restart(signal.SIGKILL) == -signal.SIGKILL  # ready only once recovery has run


def client(live: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=live.base_url,
        headers={"Authorization": f"Bearer {live.admin_key}"},
        timeout=httpx.Timeout(30.0),
    )


async def stream_until_cut(
    http: httpx.AsyncClient, body: dict[str, Any], seen: dict[str, int], ids: list[str]
) -> bool:
    """Read a stream, counting content frames, until the server dies or the stream ends;
    True when it ended with ``[DONE]``."""
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            ids.append(request_id)
            seen[request_id] = 0
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    seen[request_id] += 1
                if line == "data: [DONE]":
                    return True
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
        pass  # the server was killed under us
    return False


# -- the faults ---------------------------------------------------------------------


async def test_kill_before_any_request_leaves_the_books_as_they_were(
    server: tuple[LiveServer, str],
) -> None:
    live, org = server
    kill_and_restart(live)
    books = await read_books(live, org)
    assert books.usage == {} and books.holds == {}
    assert books.cash == TOP_UP and books.revenue == 0
    assert_balanced(books, TOP_UP)


async def test_kill_before_the_first_token_is_free(server: tuple[LiveServer, str]) -> None:
    live, org = server
    async with client(live) as http:
        # The first request waits in the only slot for its first token, the second in the
        # engine's queue; neither has produced anything when the process dies.
        waiting = [
            asyncio.create_task(http.post("/v1/chat/completions", json=chat(STUCK)))
            for _ in range(2)
        ]
        left = await eventually(
            lambda: len(r := live.rows("SELECT * FROM inflight")) == 2 and r,
            what="two held requests in flight",
        )
        assert all(r["checkpoint_at_ms"] is None for r in left)
        kill_and_restart(live)
        for outcome in await asyncio.gather(*waiting, return_exceptions=True):
            assert isinstance(outcome, httpx.HTTPError), outcome  # the server died mid-request

    books = await read_books(live, org)
    assert set(books.usage) == {r["request_id"] for r in left}
    for record in books.usage.values():
        assert record["termination"] == "gateway_killed"
        assert record["completion_tokens"] == 0
        assert record["cost_micros"] == 0
    assert books.cash == TOP_UP
    assert_balanced(books, TOP_UP)


async def test_kill_mid_stream_bills_the_last_checkpoint_once(
    server: tuple[LiveServer, str],
) -> None:
    live, org = server
    seen: dict[str, int] = {}
    ids: list[str] = []
    async with client(live) as http:
        # One request that finished before the kill ...
        done = await http.post("/v1/chat/completions", json=chat(SLOW, stream=False, max_tokens=7))
        assert done.status_code == 200
        finished_id = done.headers["x-request-id"]
        # ... and four concurrent streams, each with checkpoints of its first tokens.
        streams = [
            asyncio.create_task(stream_until_cut(http, chat(SLOW), seen, ids)) for _ in range(4)
        ]
        await eventually(lambda: len(seen) == 4 and min(seen.values()) >= 10,
                         what="four streams with 10 tokens each")  # fmt: skip
        checkpoints = await eventually(
            lambda: len(r := live.rows("SELECT * FROM inflight WHERE completion_tokens >= 10"))
            == 4 and r,
            what="a checkpoint of every stream past its first tokens",
        )  # fmt: skip
        kill_and_restart(live)
        assert await asyncio.gather(*streams) == [False] * 4, "a stream ended before the kill"
    checkpointed = {r["request_id"]: r["completion_tokens"] for r in checkpoints}
    assert set(checkpointed) == set(ids)

    books = await read_books(live, org)
    assert set(books.usage) == {finished_id, *ids}
    finished = books.usage[finished_id]
    assert finished["termination"] == "length"
    assert finished["cost_micros"] == cost_of(PROMPT_TOKENS, 7)
    for request_id in ids:
        record = books.usage[request_id]
        assert record["termination"] == "gateway_killed"
        assert record["prompt_tokens"] == PROMPT_TOKENS
        # At least the checkpoint seen before the kill; at most what the engine had made.
        assert checkpointed[request_id] <= record["completion_tokens"] < MAX_TOKENS
        assert record["cost_micros"] == cost_of(PROMPT_TOKENS, record["completion_tokens"])
        assert 0 < record["cost_micros"] <= books.holds[request_id] == WORST_CASE
    assert_balanced(books, TOP_UP)

    # A second crash with nothing in flight recovers nothing again: the books stay put.
    kill_and_restart(live)
    again = await read_books(live, org)
    assert again == books


async def test_kill_right_after_a_stream_finished_bills_it_once(
    server: tuple[LiveServer, str],
) -> None:
    live, org = server
    seen: dict[str, int] = {}
    ids: list[str] = []
    async with client(live) as http:
        assert await stream_until_cut(http, chat(SLOW, max_tokens=20), seen, ids)
        kill_and_restart(live)  # at once: [DONE] was the last thing the server sent
    (request_id,) = ids

    books = await read_books(live, org)
    assert list(books.usage) == [request_id]
    record = books.usage[request_id]
    # The record was durable before the client saw the end: not recovered, not re-billed.
    assert record["termination"] == "length"
    assert record["completion_tokens"] == 20
    assert record["cost_micros"] == cost_of(PROMPT_TOKENS, 20)
    assert_balanced(books, TOP_UP)


async def test_a_second_process_starting_does_not_recover_live_requests(
    server: tuple[LiveServer, str], tmp_path: Path
) -> None:
    live, org = server
    async with client(live) as http:
        running = asyncio.create_task(
            http.post("/v1/chat/completions", json=chat(SLOW, stream=False, max_tokens=150))
        )
        await eventually(
            lambda: live.rows("SELECT * FROM inflight WHERE completion_tokens > 0"),
            what="a checkpoint of the running request",
        )
        # A second gateway on the same database (several processes, or a rolling restart):
        # it starts, and its recovery leaves the first one's live request alone.
        second = LiveServer(
            live.home, logs=tmp_path / "second", **SETTINGS, recovery_seconds="0.2"
        ).start()
        try:
            response = await running
        finally:
            second.stop()
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]

    async def leases_back() -> Books | None:  # the live server's lease, idle, comes back
        found = await read_books(live, org)
        return found if not found.open_leases else None

    books = await eventually(leases_back, timeout=30, what="the live server's idle lease back")
    record = books.usage[request_id]
    assert (record["termination"], record["completion_tokens"]) == ("length", 150)
    assert record["cost_micros"] == cost_of(PROMPT_TOKENS, 150)
    assert_balanced(books, TOP_UP)


async def test_kill_before_the_first_token_of_an_unpriced_request_still_records_it(
    server: tuple[LiveServer, str],
) -> None:
    live, org = server
    async with client(live) as http:
        waiting = asyncio.create_task(http.post("/v1/chat/completions", json=chat(UNPRICED_STUCK)))
        await eventually(
            lambda: live.in_flight(UNPRICED_STUCK),
            what="the request in the engine",
        )
        await eventually(  # written ROW_DELAY_SECONDS after admission (docs/billing.md)
            lambda: live.rows("SELECT * FROM inflight"), what="its in-flight row"
        )
        kill_and_restart(live)
        (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
        assert isinstance(outcome, httpx.HTTPError), outcome
    books = await read_books(live, org)
    assert [r["termination"] for r in books.usage.values()] == ["gateway_killed"]
