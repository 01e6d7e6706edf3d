"""Our errors in Anthropic's shape (protocols/anthropic/errors.py)."""

from __future__ import annotations

import pytest

from openmaas.core.errors import (
    AuthenticationFailed,
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
)
from openmaas.protocols.anthropic.errors import to_anthropic_error


@pytest.mark.parametrize(
    ("exc", "status", "type_"),
    [
        (InvalidRequest("bad", param="x"), 400, "invalid_request_error"),
        (PromptTooLong("too long", "messages"), 400, "invalid_request_error"),
        (ContentFiltered("unsafe"), 400, "invalid_request_error"),
        (PayloadTooLarge(1024), 413, "request_too_large"),
        (AuthenticationFailed("who"), 401, "authentication_error"),
        (PermissionDenied("no"), 403, "permission_error"),
        (ModelNotFound("m"), 404, "not_found_error"),
        (NotFound("gone"), 404, "not_found_error"),
        (EngineOverloaded("m", 4), 529, "overloaded_error"),
        (EngineNotReady("m"), 529, "overloaded_error"),
        (EngineFailure("boom"), 500, "api_error"),
        (EngineTimeout("total", 600), 504, "timeout_error"),
        (OpenMaaSError("unexpected"), 500, "api_error"),
    ],
)
def test_table(exc: OpenMaaSError, status: int, type_: str) -> None:
    got_status, body, headers = to_anthropic_error(exc)
    assert got_status == status
    assert body == {"type": "error", "error": {"type": type_, "message": exc.message}}
    assert ("retry-after" in headers) == (status == 529)


def test_retry_after_follows_the_error() -> None:
    assert to_anthropic_error(EngineNotReady("m"))[2] == {"retry-after": "5"}
    assert to_anthropic_error(EngineOverloaded("m", 1))[2] == {"retry-after": "1"}


def test_a_prompt_over_the_context_window_in_anthropics_words() -> None:
    """Claude Code recognises the error by Anthropic's wording ("prompt is too long")."""
    exc = PromptTooLong(
        "request (3031 tokens) exceeds the available context size (2048 tokens)",
        "messages",
        prompt_tokens=3031,
        context_length=2048,
    )
    status, body, _headers = to_anthropic_error(exc)
    assert status == 400
    assert body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 3031 tokens > 2048 maximum",
        },
    }
