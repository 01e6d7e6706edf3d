"""Our errors in Anthropic's shape: the one table of statuses and error types for this protocol.

Capacity errors (the engine's queue is full, or it is still loading) are ``529
overloaded_error``: that is what Anthropic returns when *its* side is overloaded, and the
``anthropic`` SDK and Claude Code retry it (every status >= 500 is retried, with backoff,
honouring ``retry-after``). ``429 rate_limit_error`` is kept for per-key limits, which
are the caller's own doing.
"""

from __future__ import annotations

import re
from typing import Any

from openmaas.core.errors import (
    AuthenticationFailed,
    CapacityError,
    EngineFailure,
    EngineTimeout,
    InsufficientBalance,
    InvalidRequest,
    NotFound,
    OpenMaaSError,
    PayloadTooLarge,
    PermissionDenied,
    PromptTooLong,
    QuotaExceeded,
    RateLimited,
)

# (class, HTTP status, Anthropic error type); the first matching class wins.
_TABLE: tuple[tuple[type[OpenMaaSError], int, str], ...] = (
    (PayloadTooLarge, 413, "request_too_large"),
    (InvalidRequest, 400, "invalid_request_error"),
    (InsufficientBalance, 402, "billing_error"),
    (QuotaExceeded, 400, "invalid_request_error"),  # Anthropic's "spend limit reached"
    (AuthenticationFailed, 401, "authentication_error"),
    (PermissionDenied, 403, "permission_error"),
    (NotFound, 404, "not_found_error"),
    (RateLimited, 429, "rate_limit_error"),
    (CapacityError, 529, "overloaded_error"),
    (EngineTimeout, 504, "timeout_error"),
    (EngineFailure, 500, "api_error"),
)
_DEFAULT = (500, "api_error")


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def to_anthropic_error(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and extra headers for one of our errors."""
    status, type_ = next(
        ((status, type_) for cls, status, type_ in _TABLE if isinstance(exc, cls)), _DEFAULT
    )
    headers: dict[str, str] = {}
    if isinstance(exc, CapacityError):
        headers["retry-after"] = str(max(1, round(exc.retry_after_seconds)))
    if isinstance(exc, RateLimited):
        headers.update(exc.headers)
    if isinstance(exc, QuotaExceeded):
        headers["x-should-retry"] = "false"
    return status, error_body(type_, _message(exc)), headers


def _message(exc: OpenMaaSError) -> str:
    """Anthropic's words for a prompt over the context window when the counts are known:
    Claude Code recognises the error by them ("prompt is too long")."""
    if isinstance(exc, PromptTooLong) and exc.prompt_tokens and exc.context_length:
        return f"prompt is too long: {exc.prompt_tokens} tokens > {exc.context_length} maximum"
    if isinstance(exc, InvalidRequest) and exc.param:
        wire = _wire_field(exc.param)
        if wire != exc.param:
            return exc.message.replace(exc.param, wire)
    return exc.message


_TOOL_SCHEMA = re.compile(r"tools\[(\d+)\]\.function\.parameters")


def _wire_field(param: str) -> str:
    """This protocol's name of a field the serving path names as OpenAI does
    (``serving/bounds.py``): a tool's ``input_schema``, ``output_config.format.schema``."""
    if param == "response_format.json_schema.schema":
        return "output_config.format.schema"
    return _TOOL_SCHEMA.sub(r"tools[\1].input_schema", param)
