"""A client that goes away mid-request stops generation, and what was generated is recorded."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.live import CHAT_MODEL, LiveServer

LONG = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def _in_flight(live: LiveServer, model: str) -> int:
    return int(httpx.get(f"{live.base_url}/readyz").json()["in_flight"][model])


def _wait_idle(live: LiveServer, model: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _in_flight(live, model) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(live, model) == 0


@pytest.mark.parametrize("model", [CHAT_MODEL, "fake-slow"])
def test_stream_cut_by_client_stops_engine_and_is_billed_for_what_was_made(
    live: LiveServer, admin_key: str, model: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.stream(
        "POST", f"{live.base_url}/v1/chat/completions",
        json={**LONG, "model": model, "stream": True}, headers=headers, timeout=30,
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
        httpx.post(f"{live.base_url}/v1/chat/completions", json={**LONG, "model": "fake-slow"},
                   headers=headers, timeout=1.0)
    _wait_idle(live, "fake-slow")
    deadline = time.monotonic() + 5
    while len(rows := _rows_for(live, "fake-slow", "client_disconnected")) == len(before):
        assert time.monotonic() < deadline, "no usage record for the abandoned request"
        time.sleep(0.05)
    (new,) = [r for r in rows if r not in before]
    assert 0 < new["completion_tokens"] < 400


def _rows_for(live: LiveServer, model: str, termination: str) -> list[dict]:
    import sqlite3

    with sqlite3.connect(live.home / "openmaas.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM usage_records WHERE model = ? AND termination = ? AND endpoint = ?",
            (model, termination, "chat.completions"),
        ).fetchall()
    return [dict(r) for r in rows]


def test_client_gone_before_the_first_token_stops_the_queued_request(
    live: LiveServer, admin_key: str
) -> None:
    # fake-busy takes 3 s to its first token; the client gives up after 0.5 s.
    headers = {"Authorization": f"Bearer {admin_key}"}
    before = _rows_for(live, "fake-busy", "client_disconnected")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.base_url}/v1/chat/completions", headers=headers, timeout=0.5,
                   json={"model": "fake-busy", "messages": [{"role": "user", "content": "hi"}]})
    _wait_idle(live, "fake-busy")
    deadline = time.monotonic() + 5
    while len(rows := _rows_for(live, "fake-busy", "client_disconnected")) == len(before):
        assert time.monotonic() < deadline, "no usage record for the abandoned request"
        time.sleep(0.05)
    (new,) = [r for r in rows if r not in before]
    # Stopped in the queue: had it run on to its first token, that token would be recorded.
    assert new["completion_tokens"] == 0 and new["ttft_ms"] is None
