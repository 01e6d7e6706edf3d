"""Memory stays bounded under hostile inputs (issue 12): a live server with the embedded
models, measured after a benign warm-up, takes a fixed number of rounds of hostile
requests, over and at the bounds, and its resident memory comes back to within
``MARGIN_MB`` of that baseline (``docs/security.md``). Without the heap trimming of
``server/heap.py`` it stayed 80-270 MB above; with it, 10-70 MB: what was left was llama.cpp's
own per-slot state after reading a prompt of 1.9 million tokens, bounded by the slots. That
prompt is now refused before llama.cpp tokenizes it (``engines/prompt_bound.py``): 14 MB.

Each round: 5,000 embedding inputs and 50,000 one-word messages (over the bounds), inputs
and messages at the bounds, a prompt of 3.8 MB (near the body limit; over the context), a
body over the limit, an enum of 5,000 strings, a schema just under the byte bound (served),
and a client that leaves a stream after a few events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

MARGIN_MB = 100
ROUNDS = 3
EMBEDDING_MAX_INPUTS = 256  # the bound, lowered so that a request at it takes a second
CONTEXT = 2048


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("soak") / "home"
    live = LiveServer(home, embedding_max_inputs=EMBEDDING_MAX_INPUTS, memory_trim_seconds=1)
    live.start()
    yield live
    assert live.stop() == 0


def _chat(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return client.post("/v1/chat/completions", json={**body, **fields})


def _embed(client: httpx.Client, count: int) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": ["w"] * count})


def _leave_a_stream(client: httpx.Client) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 200,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        for seen, _line in enumerate(stream.iter_lines()):
            if seen >= 4:
                break  # and the client goes away


def _benign(client: httpx.Client) -> None:
    assert _chat(client).status_code == 200
    assert _embed(client, 16).status_code == 200
    _leave_a_stream(client)


def _schema(size: int) -> dict[str, Any]:
    """An object of required string properties, about ``size`` bytes of compact JSON."""
    count = size // 440
    properties = {f"p{i}": {"type": "string", "description": "d" * 400} for i in range(count)}
    return {"type": "object", "properties": properties, "required": list(properties)}


def _hostile(client: httpx.Client) -> list[int]:
    one_word = [{"role": "user", "content": "w"}]
    enum = {"type": "string", "enum": [f"name-{i}" for i in range(5000)]}

    def fmt(schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}

    statuses = [
        _embed(client, 5000).status_code,  # over the bound
        _embed(client, EMBEDDING_MAX_INPUTS).status_code,  # at it: served
        _chat(client, messages=one_word * 50_000).status_code,  # over
        _chat(client, messages=one_word * 2048).status_code,  # at: over the context
        _chat(client, messages=[{"role": "user", "content": "x " * 1_900_000}]).status_code,
        client.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
            headers={"content-type": "application/json"},
        ).status_code,
        _chat(client, response_format=fmt(enum)).status_code,
        _chat(client, response_format=fmt(_schema(120_000))).status_code,  # served
    ]
    _leave_a_stream(client)
    return statuses


def test_resident_memory_returns_to_its_baseline_after_hostile_requests(
    server: LiveServer,
) -> None:
    assert server.process is not None
    pid = server.process.pid
    key = server.new_key()
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as client:
        for _ in range(3):
            _benign(client)
        wait_until(lambda: _idle(client), what="the warm-up's requests to end")
        baseline = rss_mb(pid)
        peak = baseline
        for _ in range(ROUNDS):
            statuses = _hostile(client)
            assert statuses == [400, 200, 400, 400, 400, 413, 400, 200], statuses
            peak = max(peak, rss_mb(pid))
        wait_until(lambda: _idle(client), what="the hostile requests to end")
        _benign(client)  # the server still serves
        wait_until(
            lambda: rss_mb(pid) <= baseline + MARGIN_MB,
            timeout=30,
            what=f"RSS back within {MARGIN_MB} MB of its baseline of {baseline} MB "
            f"(peak {peak} MB, now {rss_mb(pid)} MB)",
        )


def _idle(client: httpx.Client) -> bool:
    ready = client.get("/readyz").json()
    return not any(ready.get("in_flight", {}).values())
