"""One request through each protocol, to the same model with the same prompt: the same
tokens come out, and the usage records agree (nothing past the adapters knows the protocol)."""

from __future__ import annotations

import httpx

from tests.e2e.live import CHAT_MODEL, LiveServer

SYSTEM = "You are a terse assistant."
USER = "Name three colours of the rainbow."


def _openai(client: httpx.Client) -> tuple[str, str]:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": CHAT_MODEL,
            "temperature": 0,
            "max_tokens": 12,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        },
    )
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"], r.json()["choices"][0]["message"]["content"]


def _zhipu(client: httpx.Client) -> tuple[str, str]:
    r = client.post(
        "/api/paas/v4/chat/completions",
        json={
            "model": CHAT_MODEL,
            "temperature": 0,
            "max_tokens": 12,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        },
    )
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"], r.json()["choices"][0]["message"]["content"]


def _anthropic(client: httpx.Client) -> tuple[str, str]:
    r = client.post(
        "/v1/messages",
        json={
            "model": CHAT_MODEL,
            "temperature": 0,
            "max_tokens": 12,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": USER}],
        },
    )
    assert r.status_code == 200, r.text
    text = "".join(b["text"] for b in r.json()["content"] if b["type"] == "text")
    return r.headers["x-request-id"], text


def test_same_prompt_same_tokens_same_usage_through_every_protocol(
    live: LiveServer, admin_key: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=60) as client:
        results = {
            name: call(client)
            for name, call in (("openai", _openai), ("zhipu", _zhipu), ("anthropic", _anthropic))
        }
    texts = {name: text for name, (_, text) in results.items()}
    assert len(set(texts.values())) == 1, texts
    rows = {name: live.usage_row(rid) for name, (rid, _) in results.items()}
    keys = ("model", "prompt_tokens", "completion_tokens", "termination", "key_id", "org_id")
    summaries = {name: tuple(row[k] for k in keys) for name, row in rows.items()}
    assert len(set(summaries.values())) == 1, summaries
    assert rows["openai"]["completion_tokens"] > 0 and texts["openai"]
