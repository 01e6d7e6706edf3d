"""A grammar llama.cpp fails to parse (issue 12): a schema whose ``minItems`` of 6,000 makes
a grammar past llama.cpp's "sane" repetition count, allowed here by a raised bound, is a
400 naming the schema's field in each protocol's words, not ``messages``. (Zhipu takes no
JSON-schema response format; a tool grammar's failure names ``tools``:
tests/engines/test_llamacpp.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.engines.embedded import CHAT_MODEL
from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.orgs import member_keys

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "array", "items": {"type": "integer"}, "minItems": 6000}},
    "required": ["a"],
}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    home = tmp_path_factory.mktemp("grammar-errors") / "home"
    # The bounds refuse such a schema before any engine sees it: raised here, so that
    # llama.cpp gets it and refuses its grammar (what another schema might still make it do).
    settings = Settings(home=home, schema_max_repeat=10_000, threads=1, embedding_threads=1)
    [key] = asyncio.run(member_keys(settings, "org"))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, key


def _post(site: tuple[TestClient, str], path: str, body: dict[str, Any]) -> Any:
    client, key = site
    headers = {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    reply = client.post(path, json={"model": CHAT_MODEL, **body}, headers=headers)
    assert reply.status_code == 400, reply.text
    return reply.json()["error"]


def test_openai_names_response_format(site: tuple[TestClient, str]) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}
    error = _post(site, "/v1/chat/completions", {"messages": MESSAGES, "response_format": fmt})
    assert error["param"] == "response_format.json_schema.schema", error
    assert error["type"] == "invalid_request_error"
    assert "failed to parse grammar" in error["message"]


def test_anthropic_names_output_config_format(site: tuple[TestClient, str]) -> None:
    fmt = {"format": {"type": "json_schema", "schema": SCHEMA}}
    body = {"messages": MESSAGES, "max_tokens": 8, "output_config": fmt}
    error = _post(site, "/v1/messages", body)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("output_config.format.schema:"), error


def test_the_responses_api_names_text_format(site: tuple[TestClient, str]) -> None:
    fmt = {"format": {"type": "json_schema", "name": "r", "schema": SCHEMA}}
    error = _post(site, "/v1/responses", {"input": "hi", "store": False, "text": fmt})
    assert error["param"] == "text.format.schema", error
