"""An OpenAI-compatible upstream (vLLM) that answers 500 to a schema it cannot compile
(vllm-project/vllm#57725): the request's own fault, a 4xx in every protocol that no circuit
breaker counts, so one organization's bad schemas never make the model unavailable to
another; a 500 that does not name the schema still counts against the deployment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.engines.upstream import Behaviour, Upstream
from tests.support.orgs import member_keys

MODEL = "vllm-glm"
SCHEMA = {"type": "object", "properties": {"a": {"type": "not-a-type"}}}
VLLM_SCHEMA_ERROR = "Grammar error: Invalid type: not-a-type"
OPENAI, ZHIPU, CLAUDE = (
    "/v1/chat/completions",
    "/api/paas/v4/chat/completions",
    "/v1/messages",
)
MESSAGES = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}
BODIES: dict[str, dict[str, Any]] = {
    OPENAI: {
        "model": MODEL,
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}},
    },
    CLAUDE: {
        "model": MODEL,
        "max_tokens": 16,
        "messages": MESSAGES,
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    },
    ZHIPU: {"model": MODEL, "messages": MESSAGES, "tools": [TOOL]},
}
PLAIN: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
Site = tuple[TestClient, Upstream, str, str]


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("upstream-schema") / "home"
    with Upstream(Behaviour(text="fine")) as upstream:
        catalog = home.parent / "catalog.yaml"
        catalog.write_text(
            f"""\
models:
  - name: {MODEL}
    capabilities: [tools]
    deployments:
      - id: vllm-1
        engine: openai
        base_url: {upstream.base_url}
        upstream_model: glm
        data_class: local
"""
        )
        settings = Settings(home=home, embedded_models=False, catalog_file=catalog)
        attacker, victim = asyncio.run(member_keys(settings, "attacker", "victim"))
        with TestClient(create_app(settings)) as client:
            client.get("/readyz")
            yield client, upstream, attacker, victim


def _post(client: TestClient, key: str, path: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    return client.post(path, json=body, headers=headers)


def test_a_500_naming_the_schema_is_a_4xx_and_leaves_the_breaker_closed(site: Site) -> None:
    client, upstream, attacker, victim = site
    upstream.behaviour = Behaviour(status=500, error_message=VLLM_SCHEMA_ERROR)
    for _ in range(4):  # 12 requests: more than the 5 failures that open a breaker
        for path, body in BODIES.items():
            reply = _post(client, attacker, path, body)
            assert reply.status_code == 400, (path, reply.text)
            error = reply.json()["error"]
            assert VLLM_SCHEMA_ERROR in error["message"], error
            if path == OPENAI:
                assert error["param"] == "response_format.json_schema.schema"
            if path == ZHIPU:
                assert error["code"] == "1214"
    upstream.behaviour = Behaviour(text="fine")
    for path in BODIES:  # the other organization is served, in every protocol
        body = {**PLAIN, "max_tokens": 16} if path == CLAUDE else PLAIN
        served = _post(client, victim, path, body)
        assert served.status_code == 200, (path, served.text)


def test_a_500_not_naming_the_schema_still_counts_against_the_deployment(site: Site) -> None:
    client, upstream, attacker, victim = site
    upstream.behaviour = Behaviour(status=500, error_message="CUDA error: an illegal memory access")
    for _ in range(5):  # the breaker's consecutive failures
        reply = _post(client, attacker, OPENAI, BODIES[OPENAI])
        assert reply.status_code >= 500, reply.text
    upstream.behaviour = Behaviour(text="fine")
    refused = _post(client, victim, OPENAI, PLAIN)  # the deployment's circuit is open
    assert refused.status_code == 503, refused.text


def test_a_500_naming_a_schema_the_request_does_not_carry_counts_too(site: Site) -> None:
    client, upstream, attacker, victim = site
    upstream.behaviour = Behaviour(status=500, error_message="xgrammar: internal compiler state")
    for _ in range(5):
        reply = _post(client, attacker, OPENAI, PLAIN)  # no schema, no tools: not its fault
        assert reply.status_code >= 500, reply.text
    upstream.behaviour = Behaviour(text="fine")
    assert _post(client, victim, OPENAI, PLAIN).status_code == 503
