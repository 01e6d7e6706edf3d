"""The issue's two-tenant probes, scaled down, over HTTP in every protocol: a request over a
bound (an enum of 5,000 strings, ``"$ref": "#"``, a tool schema 200 levels deep, 5,000
messages) is a 400 naming the field, answered at once; no engine sees it and it records no
usage; another organization's request right after is served."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.engines.fake import FakeEngine
from openmaas.server.app import create_app
from openmaas.settings import Settings
from openmaas.store.schema import usage_records
from tests.support.app import count_rows, fake_engine
from tests.support.orgs import member_keys

MODEL = "fake-echo"
MESSAGES = [{"role": "user", "content": "hi"}]
ANTHROPIC = {"anthropic-version": "2023-06-01"}
OPENAI, ZHIPU, CLAUDE = (
    "/v1/chat/completions",
    "/api/paas/v4/chat/completions",
    "/v1/messages",
)

ENUM = {"type": "object", "properties": {"name": {"enum": [f"n{i}" for i in range(5000)]}}}
CYCLE = {"type": "object", "properties": {"next": {"$ref": "#"}}}
FAN_OUT = {  # 4^14 schemas once the references are followed, in 1.6 KB
    "$defs": {
        "d0": {"type": "integer"},
        **{f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i - 1}"}] * 4} for i in range(1, 15)},
    },
    "$ref": "#/$defs/d14",
}
OPTIONAL = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1600)}}
REPEAT = {"type": "object", "properties": {"a": {"type": "string", "minLength": 100_000}}}
PATTERN = {"type": "string", "pattern": "^(" + "|".join(f"w{i}x" for i in range(5000)) + ")$"}


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _tool(path: str, schema: dict[str, Any]) -> dict[str, Any]:
    if path == CLAUDE:
        return {"name": "lookup", "input_schema": schema}
    return {"type": "function", "function": {"name": "lookup", "parameters": schema}}


def _body(path: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, **fields}
    if path == CLAUDE:
        body.setdefault("max_tokens", 16)
    return body


def _schema_format(path: str, schema: dict[str, Any]) -> dict[str, Any]:
    if path == CLAUDE:
        return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    return {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}


SCHEMA, FORMAT = "response_format.json_schema.schema", "output_config.format.schema"
TOOL, INPUT_SCHEMA = "tools[0].function.parameters", "tools[0].input_schema"

# (probe, protocol path, body, the field the 400 names in that protocol)
PROBES: list[tuple[str, str, dict[str, Any], str]] = [
    ("enum", OPENAI, _body(OPENAI, **_schema_format(OPENAI, ENUM)), SCHEMA),
    ("enum", CLAUDE, _body(CLAUDE, **_schema_format(CLAUDE, ENUM)), FORMAT),
    ("enum-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, ENUM)]), TOOL),
    ("ref", OPENAI, _body(OPENAI, **_schema_format(OPENAI, CYCLE)), SCHEMA),
    ("ref", CLAUDE, _body(CLAUDE, **_schema_format(CLAUDE, CYCLE)), FORMAT),
    ("ref-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, CYCLE)]), TOOL),
    ("deep-tool", OPENAI, _body(OPENAI, tools=[_tool(OPENAI, _deep(200))]), TOOL),
    ("deep-tool", CLAUDE, _body(CLAUDE, tools=[_tool(CLAUDE, _deep(200))]), INPUT_SCHEMA),
    ("deep-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, _deep(200))]), TOOL),
    ("messages", OPENAI, _body(OPENAI, messages=MESSAGES * 5000), "messages"),
    ("messages", CLAUDE, _body(CLAUDE, messages=MESSAGES * 5000), "messages"),
    ("messages", ZHIPU, _body(ZHIPU, messages=MESSAGES * 5000), "messages"),
    ("tools", OPENAI, _body(OPENAI, tools=[_tool(OPENAI, {"type": "object"})] * 200), "tools"),
    ("fan-out", OPENAI, _body(OPENAI, **_schema_format(OPENAI, FAN_OUT)), SCHEMA),
    ("fan-out", CLAUDE, _body(CLAUDE, **_schema_format(CLAUDE, FAN_OUT)), FORMAT),
    ("fan-out-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, FAN_OUT)]), TOOL),
    ("optional", OPENAI, _body(OPENAI, tools=[_tool(OPENAI, OPTIONAL)]), TOOL),
    ("optional", CLAUDE, _body(CLAUDE, **_schema_format(CLAUDE, OPTIONAL)), FORMAT),
    ("optional-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, OPTIONAL)]), TOOL),
    ("repeat", OPENAI, _body(OPENAI, **_schema_format(OPENAI, REPEAT)), SCHEMA),
    ("repeat-tool", CLAUDE, _body(CLAUDE, tools=[_tool(CLAUDE, REPEAT)]), INPUT_SCHEMA),
    ("repeat-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, REPEAT)]), TOOL),
    ("pattern", OPENAI, _body(OPENAI, **_schema_format(OPENAI, PATTERN)), SCHEMA),
    ("pattern", CLAUDE, _body(CLAUDE, **_schema_format(CLAUDE, PATTERN)), FORMAT),
    ("pattern-tool", ZHIPU, _body(ZHIPU, tools=[_tool(ZHIPU, PATTERN)]), TOOL),
]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, str]]:
    home = tmp_path_factory.mktemp("request-bounds") / "home"
    settings = Settings(home=home, embedded_models=False, fake_models={MODEL: {"text": "a b"}})
    attacker, victim = asyncio.run(member_keys(settings, "attacker", "victim"))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, attacker, victim


def _fake(client: TestClient) -> FakeEngine:
    return fake_engine(client, MODEL)


def _usage_records(client: TestClient) -> int:
    return count_rows(client, usage_records)


def _post(client: TestClient, key: str, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {key}", **ANTHROPIC})


@pytest.mark.parametrize(("probe", "path", "body", "field"), PROBES, ids=lambda p: str(p)[:24])
def test_a_request_over_a_bound_is_a_400_naming_the_field_and_costs_nothing(
    site: tuple[TestClient, str, str], probe: str, path: str, body: dict[str, Any], field: str
) -> None:
    client, attacker, victim = site
    started, records = _fake(client).stats.streams_started, _usage_records(client)
    reply = _post(client, attacker, path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert field in error["message"], error
    if path == OPENAI:
        assert error["type"] == "invalid_request_error" and error["param"] == field
    if path == CLAUDE:
        assert error["type"] == "invalid_request_error"
    if path == ZHIPU:
        assert error["code"] == "1214"
    assert _fake(client).stats.streams_started == started  # no engine saw it
    assert _usage_records(client) == records  # nor was anything recorded
    served = _post(client, victim, path, _body(path))  # the other organization is served
    assert served.status_code == 200, served.text
    assert _usage_records(client) == records + 1


RESPONSES_FORMAT = {"text": {"format": {"type": "json_schema", "name": "n", "schema": ENUM}}}
RESPONSES_TOOL = {"tools": [{"type": "function", "name": "t", "parameters": CYCLE}]}


@pytest.mark.parametrize(
    ("fields", "field"),
    [(RESPONSES_FORMAT, "text.format.schema"), (RESPONSES_TOOL, "tools[0].parameters")],
    ids=["format", "tool"],
)
def test_the_responses_api_names_its_own_fields(
    site: tuple[TestClient, str, str], fields: dict[str, Any], field: str
) -> None:
    client, attacker, _victim = site
    body = {"model": MODEL, "input": "hi", "store": False, **fields}
    reply = _post(client, attacker, "/v1/responses", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_an_async_submit_over_a_bound_is_refused_at_submit(
    site: tuple[TestClient, str, str],
) -> None:
    client, attacker, _victim = site
    body = _body(ZHIPU, tools=[_tool(ZHIPU, ENUM)])
    reply = _post(client, attacker, "/api/paas/v4/async/chat/completions", body)
    assert reply.status_code == 400, reply.text
    assert "tools[0].function.parameters" in reply.json()["error"]["message"]


def test_anthropic_token_counting_is_bounded_too(site: tuple[TestClient, str, str]) -> None:
    client, attacker, _victim = site
    body = {"model": MODEL, "messages": MESSAGES * 5000}
    reply = _post(client, attacker, "/v1/messages/count_tokens", body)
    assert reply.status_code == 400, reply.text
    assert "messages" in reply.json()["error"]["message"]
