"""A prepaid balance is never overdrawn by concurrency: 200 requests at once against a
balance that covers exactly 10 worst-case holds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openmaas.core.ledger_events import cash
from openmaas.core.prices import LINE_SLACK, AppliedPrice, ModelPrice
from tests.e2e.live import LiveServer
from tests.e2e.test_crash_recovery import assert_balanced, read_books, seed

MODEL = "fake-quota"
PROMPT = "hello there"  # the fake engine counts 2 prompt tokens (words)
PROMPT_TOKENS = 2
MAX_TOKENS = 10
REQUESTS = 200
AFFORDABLE = 10
# One price for every kind of token, and a text longer than max_tokens: every request that
# runs is charged for exactly PROMPT_TOKENS + MAX_TOKENS tokens, its worst case but for the
# hold's rounding slack (LINE_SLACK micros), so a finished request hands back too little for
# an 11th hold: exactly AFFORDABLE requests succeed, whatever the interleaving.
PRICE = ModelPrice(MODEL, input_per_million=1_000_000_000, cached_input_per_million=1_000_000_000,
                   output_per_million=1_000_000_000)  # fmt: skip  # 1000 micros per token
CHARGE = (PROMPT_TOKENS + MAX_TOKENS) * 1000
HOLD = AppliedPrice(PRICE).worst_case(PROMPT_TOKENS, MAX_TOKENS).cash_for(10**9)
TOP_UP = AFFORDABLE * HOLD


def test_the_expectation_is_exact() -> None:
    assert HOLD == CHARGE + LINE_SLACK
    assert AFFORDABLE * LINE_SLACK < HOLD  # what settlements return never pays another hold


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path / "home",
        fake_models={MODEL: {"text": " ".join(["a"] * 50), "slots": 8, "queue": 256}},
        embedded_models="false",
        billing_refresh_seconds="0",
    ).start()
    try:
        yield server
    finally:
        server.stop()


async def test_200_requests_at_once_never_overdraw_a_balance_for_10(live: LiveServer) -> None:
    org = await seed(live, [PRICE], TOP_UP)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }
    async with httpx.AsyncClient(
        base_url=live.base_url,
        headers={"Authorization": f"Bearer {live.admin_key}"},
        limits=httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS),
        timeout=60,
    ) as http:
        responses = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body) for _ in range(REQUESTS))
        )

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == AFFORDABLE
    for response in refused:
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
    for response in ok:
        assert response.json()["usage"]["total_tokens"] == PROMPT_TOKENS + MAX_TOKENS

    books = await read_books(live, org)
    assert set(books.usage) == {r.headers["x-request-id"] for r in ok}
    assert all(r["cost_micros"] == CHARGE for r in books.usage.values())
    assert books.cash == AFFORDABLE * LINE_SLACK
    assert_balanced(books, TOP_UP)
    # Never below 0, in any committed state: replay the cash account's entries in order.
    balance, lowest = 0, 0
    account = cash(org)
    for entry in live.rows(
        "SELECT debit, credit, amount FROM ledger_entries"
        " WHERE debit = ? OR credit = ? ORDER BY event_seq, id",
        account, account,
    ):  # fmt: skip
        balance += entry["amount"] if entry["credit"] == account else -entry["amount"]
        lowest = min(lowest, balance)
    assert balance == books.cash and lowest == 0
