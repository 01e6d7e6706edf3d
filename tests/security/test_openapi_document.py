"""The served OpenAPI document lists every status each route can answer, with its
protocol's error body, and the bounds the server enforces on request fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.server.routes.access import Access, access
from tests.security.world import Keys, security_settings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(security_settings(Path("unused"))).openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def _error_ref(operation: dict[str, Any], status: int) -> str:
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def test_every_route_lists_the_refusals_of_its_access(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        rule = access(method, path.replace("{model_id}", "{model_id:path}"))
        statuses = set(operation["responses"])
        if rule is Access.PUBLIC:
            assert operation["security"] == [], path
            continue
        assert "401" in statuses and "400" in statuses, (method, path)
        assert ("403" in statuses) == (rule is Access.ADMIN), (method, path)
        if method in ("POST", "PUT", "PATCH"):
            assert "413" in statuses, (method, path)


def test_each_protocol_documents_its_own_error_body(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert _error_ref(paths["/v1/chat/completions"]["post"], 401) == "OpenAIError"
    assert _error_ref(paths["/admin/v1/orgs"]["get"], 403) == "OpenAIError"
    assert _error_ref(paths["/v1/messages"]["post"], 529) == "AnthropicError"
    assert _error_ref(paths["/api/paas/v4/chat/completions"]["post"], 429) == "ZhipuError"
    schemas = document["components"]["schemas"]
    assert schemas["AnthropicError"]["properties"]["type"]["enum"] == ["error"]


def test_generations_list_limits_overload_and_streams(document: dict[str, Any]) -> None:
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"404", "429", "503"} <= set(chat)
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    messages = document["paths"]["/v1/messages"]["post"]["responses"]
    assert {"429", "529"} <= set(messages)
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    assert "409" in document["paths"]["/admin/v1/catalog"]["put"]["responses"]


def test_request_bounds_are_in_the_document(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    [bounded] = [s for s in chat["max_tokens"]["anyOf"] if s.get("type") == "integer"]
    assert bounded["minimum"] == 1 and bounded["maximum"] == 2**31 - 1
    assert chat["messages"]["minItems"] == 1
    assert schemas["AnthropicMessagesRequest"]["properties"]["max_tokens"]["maximum"] == 2**31 - 1
    caps = schemas["Caps"]["properties"]["rpm"]["anyOf"][0]
    assert caps["maximum"] == 2**63 - 1
    audit = document["paths"]["/admin/v1/audit"]["get"]["parameters"]
    assert audit[0]["name"] == "limit" and audit[0]["schema"]["minimum"] == 0


def test_removing_a_budget_answers_the_204_the_document_lists(
    served: tuple[TestClient, Keys], document: dict[str, Any]
) -> None:
    client, keys = served
    admin = keys.headers("admin")
    path = f"/admin/v1/budgets/org:{keys.org_a}/month"
    assert client.put(path, json={"limit": "10"}, headers=admin).status_code == 200
    reply = client.delete(path, headers=admin)
    assert reply.status_code == 204
    listed = document["paths"]["/admin/v1/budgets/{scope}/{period}"]["delete"]["responses"]
    assert "204" in listed and "200" not in listed


def test_the_platforms_usage_documents_upstream_cost_beside_revenue(
    document: dict[str, Any],
) -> None:
    """What ``GET /admin/v1/usage`` answers is in the document (Schemathesis checks the
    answers against it): revenue, upstream cost and margin, per currency, at every level."""
    ok = document["paths"]["/admin/v1/usage"]["get"]["responses"]["200"]
    body = ok["content"]["application/json"]["schema"]
    for level in ("total", "days", "top_orgs", "top_models"):
        schema = body["properties"][level]
        sums = schema.get("items", schema)
        for name in ("requests", "tokens", "revenue", "upstream_cost", "margin"):
            assert name in sums["required"], (level, name)
        assert sums["properties"]["upstream_cost"]["additionalProperties"] == {"type": "string"}
