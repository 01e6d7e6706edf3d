"""The OpenAPI document: request-body schemas for routes that parse their own bodies, and
every status each route can answer with its protocol's error body.

Routes take the raw request and parse their bodies themselves (so errors have each
protocol's shape), which FastAPI cannot see; ``json_body`` declares a route's body model,
and ``install_openapi`` adds what FastAPI would otherwise leave out: the error statuses of
each operation (401 where a key is needed and 403 where an admin key is, from the access
policy; 400, 404, 409, 413, 429 and the 5xx a generation can end with), each with the error
body of the route's protocol (OpenAI's, Anthropic's or Zhipu's), and the other success
statuses and content types a route answers (a stream is ``text/event-stream``).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from openmaas.server.routes.access import POLICY, Access

_REF = "#/components/schemas/{model}"

_STRING = {"type": "string"}
_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "OpenAIError": {
        "type": "object",
        "description": "An error in OpenAI's shape (the OpenAI-compatible and admin APIs).",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": _STRING,
                    "type": _STRING,
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
            }
        },
    },
    "AnthropicError": {
        "type": "object",
        "description": "An error in Anthropic's shape (/v1/messages).",
        "required": ["type", "error"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": _STRING, "message": _STRING},
            },
        },
    },
    "ZhipuError": {
        "type": "object",
        "description": "An error in Zhipu's shape (/api/paas/v4).",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": _STRING, "message": _STRING},
            }
        },
    },
}

_DESCRIPTIONS = {
    400: "Invalid request: the error names the field",
    401: "No key, or an unknown, revoked or malformed one",
    402: "Not enough balance (Anthropic's billing_error)",
    403: "The route needs an admin key",
    404: "No such model or resource (another organization's resources included)",
    409: "The catalog is managed by a file",
    413: "The request body is larger than OPENMAAS_MAX_BODY_BYTES",
    429: "Over a rate limit, budget or balance, or the model's queue is full (see retry-after)",
    500: "The engine failed while generating",
    503: "The model is not ready, its upstream is unavailable, or limits cannot be checked",
    504: "The engine timed out",
    529: "The model is overloaded or still loading (Anthropic's overloaded_error)",
}

# What a generation (or a count of its tokens) may end with besides 4xx, per protocol.
_GENERATION_STATUSES = {
    "OpenAIError": (429, 500, 503, 504),
    "AnthropicError": (402, 429, 500, 504, 529),
    "ZhipuError": (429, 500),
}
_GENERATIONS = {
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/responses",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "POST /api/paas/v4/chat/completions",
    "POST /api/paas/v4/async/chat/completions",
    "POST /api/paas/v4/embeddings",
}
_STREAMS = {
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/responses",
    "POST /v1/messages",
    "POST /api/paas/v4/chat/completions",
}
# Other statuses a route answers than the one FastAPI documents.
_EXTRA: dict[str, tuple[int, ...]] = {
    "PUT /admin/v1/catalog": (409,),
    "POST /admin/v1/orgs/{org}/topups": (200,),  # the same idempotency key again
    "POST /admin/v1/orgs/{org}/promotions": (200,),
}
_BODY_METHODS = ("POST", "PUT", "PATCH")


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        }
    }


def _error_schema(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "AnthropicError"
    if path.startswith("/api/paas/v4"):
        return "ZhipuError"
    return "OpenAIError"


def error_statuses(method: str, path: str, access: Access) -> list[int]:
    """The error statuses ``method path`` (a document path) can answer."""
    if access is Access.PUBLIC:
        return []
    route = f"{method} {path}"
    statuses = {400, 401}
    if access is Access.ADMIN:
        statuses.add(403)
    if "{" in path or method in _BODY_METHODS or method == "DELETE":
        statuses.add(404)
    if method in _BODY_METHODS:
        statuses.add(413)
    if route in _GENERATIONS:
        statuses.update(_GENERATION_STATUSES[_error_schema(path)])
    statuses.update(s for s in _EXTRA.get(route, ()) if s >= 400)
    return sorted(statuses)


def _document_path(route_path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route_path)


def declare_responses(schema: dict[str, Any]) -> None:
    """Add every status each operation of ``schema`` can answer, from the access policy."""
    policy = {}
    for key, rule in POLICY.items():
        method, path = key.split(" ", 1)
        policy[(method, _document_path(path))] = rule
    schema.setdefault("components", {}).setdefault("schemas", {}).update(ERROR_SCHEMAS)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            route = f"{method.upper()} {path}"
            responses = operation.setdefault("responses", {})
            if method == "head":  # HEAD answers carry no body
                for answer in responses.values():
                    answer.pop("content", None)
            if route in _STREAMS:
                success = responses.setdefault("200", {"description": "Successful Response"})
                content = success.setdefault("content", {})
                content.setdefault("application/json", {"schema": {}})
                content["text/event-stream"] = {"schema": {"type": "string"}}
            for status in _EXTRA.get(route, ()):
                if status < 400:
                    responses.setdefault(
                        str(status), {"description": "Successful Response", "content": {}}
                    )
                    responses[str(status)]["content"] = {"application/json": {"schema": {}}}
            rule = policy[(method.upper(), path)]
            if rule is Access.PUBLIC:
                operation["security"] = []  # no key needed
            if route == "GET /readyz":
                responses.setdefault(
                    "503",
                    {
                        "description": "Not ready: an engine loads, the database or the "
                        "limiter cannot be reached, or the process drains",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                )
            body = {"$ref": _REF.format(model=_error_schema(path))}
            for status in error_statuses(method.upper(), path, rule):
                responses.setdefault(
                    str(status),
                    {
                        "description": _DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": body}},
                    },
                )
            if "422" in responses and "400" in responses:  # FastAPI's own validation: 422
                responses["422"]["description"] = "A query or path parameter of the wrong type"


def install_openapi(app: FastAPI, body_models: list[type[BaseModel]]) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in body_models:
                model_schema = model.model_json_schema(ref_template=_REF, by_alias=True)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            declare_responses(schema)
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
