"""A client that goes away mid-request stops generation, and what was generated is recorded."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.live import CHAT_MODEL, LiveServer
from tests.support.waiting import wait_until

LONG = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def _wait_idle(live: LiveServer, model: str) -> None:
    wait_until(lambda: live.in_flight(model) == 0, what=f"{model} idle")


@pytest.mark.parametrize("model", [CHAT_MODEL, "fake-slow"])
def test_stream_cut_by_client_stops_engine_and_is_billed_for_what_was_made(
    live: LiveServer, admin_key: str, model: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.stream(
        "POST",
        f"{live.base_url}/v1/chat/completions",
        json={**LONG, "model": model, "stream": True},
        headers=headers,
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen == 6:
                break
    # Generation stops at once: the engine is idle again long before 1500 tokens could be made.
    _wait_idle(live, model)
    row = live.usage_row(request_id)
    assert row["termination"] == "client_disconnected"
    assert 5 <= row["completion_tokens"] < 100
    assert row["prompt_tokens"] > 0
    assert row["ttft_ms"] is not None


def test_non_streamed_request_cut_by_client_stops_engine(live: LiveServer, admin_key: str) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    before = _rows_for(live, "fake-slow", "client_disconnected")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{live.base_url}/v1/chat/completions",
            json={**LONG, "model": "fake-slow"},
            headers=headers,
            timeout=1.0,
        )
    _wait_idle(live, "fake-slow")
    (new,) = wait_until(
        lambda: [r for r in _rows_for(live, "fake-slow", "client_disconnected") if r not in before],
        what="the usage record of the abandoned request",
    )
    assert 0 < new["completion_tokens"] < 400


def _rows_for(live: LiveServer, model: str, termination: str) -> list[dict]:
    return live.rows(
        "SELECT * FROM usage_records WHERE model = ? AND termination = ? AND endpoint = ?",
        model, termination, "chat.completions",
    )  # fmt: skip


def test_client_gone_before_the_first_token_stops_the_queued_request(
    live: LiveServer, admin_key: str
) -> None:
    # fake-busy takes 3 s to its first token; the client gives up after 0.5 s.
    headers = {"Authorization": f"Bearer {admin_key}"}
    before = _rows_for(live, "fake-busy", "client_disconnected")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{live.base_url}/v1/chat/completions",
            headers=headers,
            timeout=0.5,
            json={"model": "fake-busy", "messages": [{"role": "user", "content": "hi"}]},
        )
    _wait_idle(live, "fake-busy")
    (new,) = wait_until(
        lambda: [r for r in _rows_for(live, "fake-busy", "client_disconnected") if r not in before],
        what="the usage record of the abandoned request",
    )
    # Stopped in the queue: had it run on to its first token, that token would be recorded.
    assert new["completion_tokens"] == 0 and new["ttft_ms"] is None
