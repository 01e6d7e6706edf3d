"""The JSON schema bounds against the real embedded llama.cpp model (issue 12): a schema at
each bound of ``serving/bounds.py`` (references expanding to 25,000 subschemas, 256
optional properties, a ``minLength`` of 1000, a pattern of 1000 characters) is served, and
while one organization's request at the bound is in flight another organization's request
completes; one step over a bound is a 400 at once."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from openmaas.engines.embedded import chat_model_path
from tests.e2e.live import LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL = "chat"


def _fan_out(levels: int) -> dict[str, Any]:
    defs: dict[str, Any] = {"d0": {"type": "integer"}}
    for i in range(1, levels + 1):
        defs[f"d{i}"] = {"anyOf": [{"$ref": f"#/$defs/d{i - 1}"}] * 4}
    return {
        "type": "object",
        "properties": {"n": {"$ref": f"#/$defs/d{levels}"}},
        "required": ["n"],
        "$defs": defs,
    }


def _pattern(length: int) -> str:
    words, size = [], 4
    while size + len(f"w{len(words)}x|") <= length:
        words.append(f"w{len(words)}x")
        size += len(words[-1]) + 1
    return "^(" + "|".join(words) + ")$"


def _one(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": schema}, "required": ["a"]}


AT_BOUNDS = {
    "fan-out": _fan_out(6),  # 4^6 alternatives: 25,474 subschemas counted, bound 50,000
    "optional": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(256)}},
    "repeat": _one({"type": "string", "minLength": 1000}),
    "pattern": _one({"type": "string", "pattern": _pattern(1000)}),
}
OVER_BOUNDS = {
    "fan-out": _fan_out(8),
    "optional": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(257)}},
    "repeat": _one({"type": "string", "minLength": 1001}),
    "pattern": _one({"type": "string", "pattern": _pattern(1100)}),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str, str]]:
    home = tmp_path_factory.mktemp("schema-bounds") / "home"
    models = {MODEL: {"path": str(chat_model_path()), "slots": 2, "context": 2048}}
    server = LiveServer(home, embedded_models="false", local_models=models).start()
    try:
        server.cli("orgs", "create", "rival")
        yield server, server.new_key("default"), server.new_key("rival")
    finally:
        assert server.stop() == 0


def _body(schema: dict[str, Any] | None, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "max_tokens": max_tokens,
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        }
    return body


def _post(server: LiveServer, key: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=300
    )


def _in_flight(server: LiveServer) -> int:
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10).json()
    return int(ready.get("in_flight", {}).get(MODEL, 0))


@pytest.mark.parametrize("shape", list(AT_BOUNDS))
def test_a_schema_at_a_bound_is_served_and_another_organization_is_served_meanwhile(
    site: tuple[LiveServer, str, str], shape: str
) -> None:
    server, tenant, rival = site
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, server, tenant, _body(AT_BOUNDS[shape], 200))
        wait_until(lambda: _in_flight(server) > 0 or first.done(), what="the first request")
        other = _post(server, rival, _body(None, 4))
        assert other.status_code == 200, other.text
        assert not first.done(), "the request at the bound ended before the other's"
        served = first.result()
    assert served.status_code == 200, served.text


@pytest.mark.parametrize("shape", list(OVER_BOUNDS))
def test_one_step_over_a_bound_is_refused(site: tuple[LiveServer, str, str], shape: str) -> None:
    server, tenant, _rival = site
    reply = _post(server, tenant, _body(OVER_BOUNDS[shape], 8))
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "response_format.json_schema.schema"
