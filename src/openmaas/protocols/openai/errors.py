"""Our errors in OpenAI's shape: the one table of statuses and codes for this protocol."""

from __future__ import annotations

import re
from typing import Any

from openmaas.core.errors import (
    AuthenticationFailed,
    CapacityError,
    ContentFiltered,
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    EngineTimeout,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    OpenMaaSError,
    PayloadTooLarge,
    PermissionDenied,
    PromptTooLong,
    QuotaExceeded,
    RateLimited,
    UpstreamUnavailable,
)

# (class, HTTP status, error type, error code); the first matching class wins.
_TABLE: tuple[tuple[type[OpenMaaSError], int, str, str | None], ...] = (
    (PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
    (PromptTooLong, 400, "invalid_request_error", "context_length_exceeded"),
    (ContentFiltered, 400, "invalid_request_error", "content_filter"),
    (InvalidRequest, 400, "invalid_request_error", None),
    (AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (QuotaExceeded, 429, "insufficient_quota", "insufficient_quota"),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (EngineOverloaded, 429, "rate_limit_error", "engine_overloaded"),
    (EngineNotReady, 503, "server_error", "model_not_ready"),
    (UpstreamUnavailable, 503, "server_error", "upstream_unavailable"),
    (EngineTimeout, 504, "server_error", "timeout"),
    (EngineFailure, 500, "server_error", "engine_error"),
)


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def to_openai_error(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and extra headers for one of our errors."""
    status, type_, code = next(
        ((status, type_, code) for cls, status, type_, code in _TABLE if isinstance(exc, cls)),
        (500, "server_error", "internal_error"),
    )
    param = getattr(exc, "param", None)
    if isinstance(exc, ModelNotFound):
        param = "model"
    headers: dict[str, str] = {}
    if isinstance(exc, CapacityError):
        headers["retry-after"] = str(max(1, round(exc.retry_after_seconds)))
    if isinstance(exc, RateLimited):
        headers.update(exc.headers)  # x-ratelimit-* as OpenAI sends them
    if isinstance(exc, QuotaExceeded):
        headers["x-should-retry"] = "false"  # the SDK would retry a 429; waiting won't help
    return status, error_body(_message(exc), type_, code, param), headers


def _message(exc: OpenMaaSError) -> str:
    """OpenAI's words for a prompt over the context window when the counts are known
    (clients recognise the error by them as well as by its code)."""
    if isinstance(exc, PromptTooLong) and exc.prompt_tokens and exc.context_length:
        return (
            f"This model's maximum context length is {exc.context_length} tokens. However, "
            f"your messages resulted in {exc.prompt_tokens} tokens. Please reduce the length "
            "of the messages."
        )
    return exc.message


_TOOL_PARAMETERS = re.compile(r"^tools\[(\d+)\]\.function\.parameters$")


def to_responses_error(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """As ``to_openai_error``, with the fields the serving path names as Chat Completions
    does (``serving/bounds.py``) named as the Responses API has them: ``text.format.schema``,
    ``tools[i].parameters``."""
    param = getattr(exc, "param", None)
    if isinstance(exc, InvalidRequest) and param:
        if param == "response_format.json_schema.schema":
            wire = "text.format.schema"
        else:
            wire = _TOOL_PARAMETERS.sub(r"tools[\1].parameters", param)
        if wire != param:
            exc = InvalidRequest(exc.message.replace(param, wire), param=wire)
    return to_openai_error(exc)
