"""Rate limits over HTTP, in each protocol: x-ratelimit-* on admitted responses, 429 with
retry-after when refused. The app in-process with a fake model and a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.billing.admin_bodies import TermsChange, TierLimits
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings

CHAT = {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def _member_key_of_a_limited_org(settings: Settings) -> str:
    async with open_platform(settings) as platform:
        accounts, billing = platform.accounts_admin("test"), platform.billing_admin("test")
        org = await accounts.create_org(NewOrganization(name="limited"))
        issued = await accounts.issue_key(org.id, "app")
        await billing.set_tier("two-a-minute", TierLimits.parse({"rpm": 2, "tpm": 1_000}))
        await billing.set_org(org.id, TermsChange.parse({"tier": "two-a-minute"}))
    return issued.token


@pytest.fixture
def client_and_key(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    settings = Settings(
        home=tmp_path / "home",
        embedded_models=False,
        fake_models={"fake-echo": {"text": "one two three"}},
        billing_refresh_seconds=0,
    )
    key = asyncio.run(_member_key_of_a_limited_org(settings))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, key


def test_each_protocol_reports_limits_and_refuses_the_third_request(
    client_and_key: tuple[TestClient, str],
) -> None:
    client, key = client_and_key
    auth = {"Authorization": f"Bearer {key}"}
    first = client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    second = client.post(
        "/v1/messages", json=CHAT, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
    )
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-requests"] == "0"

    refused = client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    zhipu = client.post("/api/paas/v4/chat/completions", json=CHAT, headers=auth)
    assert zhipu.status_code == 429 and zhipu.json()["error"]["code"] == "1302"
    assert zhipu.headers["x-should-retry"] == "true"
    anthropic = client.post(
        "/v1/messages", json=CHAT, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
    )
    assert anthropic.status_code == 429
    assert anthropic.json()["error"]["type"] == "rate_limit_error"


def test_count_tokens_counts_against_the_request_limit_and_is_never_charged(
    client_and_key: tuple[TestClient, str],
) -> None:
    """``count_tokens`` costs engine work, so it is admitted like a request: a tier of two
    requests a minute refuses the third count with Anthropic's 429. It writes no usage."""
    client, key = client_and_key
    anthropic = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": "count these words"}]}
    counted = [client.post("/v1/messages/count_tokens", json=body, headers=anthropic)
               for _ in range(2)]  # fmt: skip
    assert [c.status_code for c in counted] == [200, 200]
    assert counted[0].json()["input_tokens"] > 0
    assert counted[1].headers["x-ratelimit-remaining-requests"] == "0"

    refused = client.post("/v1/messages/count_tokens", json=body, headers=anthropic)
    assert refused.status_code == 429
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    # The limit it used up is the one generation uses too.
    chat = client.post("/v1/messages", json=CHAT, headers=anthropic)
    assert chat.status_code == 429
    usage = client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert usage.json()["data"] == []  # counts are neither recorded nor charged
