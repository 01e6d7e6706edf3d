"""What a priced request costs, as the caller sees it: /v1/usage adds up the charges."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.billing.admin_bodies import NewFunds, NewPrice
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings

CHAT = {"model": "fake-echo", "messages": [{"role": "user", "content": "three word prompt"}]}


async def _funded_key(settings: Settings) -> str:
    async with open_platform(settings) as platform:
        accounts, billing = platform.accounts_admin("test"), platform.billing_admin("test")
        org = await accounts.create_org(NewOrganization(name="payer"))
        issued = await accounts.issue_key(org.id, "app")
        price = {"model": "fake-echo", "input": "0.5", "cached_input": "0", "output": "1.25"}
        await billing.set_price(NewPrice.parse(price))  # CNY per 1M tokens
        await billing.top_up(org.id, NewFunds.parse({"amount": "1"}))
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
