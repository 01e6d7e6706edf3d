"""What a priced request costs, as the caller sees it: /v1/usage adds up the charges."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient

from openmaas.core.ledger_events import TopUp
from openmaas.core.prices import ModelPrice
from openmaas.server.app import create_app
from openmaas.accounts.admin import open_admin
from openmaas.settings import Settings
from openmaas.store.billing import set_price
from openmaas.store.database import open_database
from openmaas.store.ledger import LedgerStore

CHAT = {"model": "fake-echo", "messages": [{"role": "user", "content": "three word prompt"}]}


async def _funded_key(settings: Settings) -> str:
    async with open_admin(settings) as admin:
        org = await admin.create_org("payer")
        issued = await admin.issue_key(org.id, "app")
    database = open_database(settings.resolved_database_url)
    async with database.begin() as conn:  # 0.50 CNY per 1M input, 1.25 CNY per 1M output
        await set_price(conn, ModelPrice("fake-echo", 500_000, 0, 1_250_000))
    await LedgerStore(database, lambda: 0).execute(TopUp("t1", org.id, 1_000_000))
    await database.dispose()
    return issued.token


def test_usage_reports_the_exact_cost_of_priced_requests(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        embedded_models=False,
        fake_models={"fake-echo": {"text": "one two three four"}},
    )
    key = asyncio.run(_funded_key(settings))
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
        [row] = client.get("/v1/usage", headers=auth).json()["data"]
    # The fake reads 3 prompt tokens and writes 4: each line rounds up on its own, per
    # request (1.5 -> 2 micros, 5 micros), then requests add up exactly.
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (3, 9, 12)
    assert (row["cost"], row["currency"]) == ("0.000021", "CNY")
