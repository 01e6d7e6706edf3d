"""Our errors in OpenAI's shape (protocols/openai/errors.py)."""

from __future__ import annotations

import pytest

from openmaas.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ContentFiltered,
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    EngineTimeout,
    InvalidRequest,
    ModelFilesMissing,
    ModelNotFound,
    NotFound,
    OpenMaaSError,
    PayloadTooLarge,
    PermissionDenied,
    PromptTooLong,
    UpstreamUnavailable,
)
from openmaas.protocols.openai.errors import to_openai_error


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (InvalidRequest("bad", param="temperature"), 400, "invalid_request_error", None),
        (
            PromptTooLong("long", "messages"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (ContentFiltered("unsafe"), 400, "invalid_request_error", "content_filter"),
        (PayloadTooLarge(1024), 413, "invalid_request_error", "request_too_large"),
        (AuthenticationFailed("no key"), 401, "invalid_request_error", "invalid_api_key"),
        (PermissionDenied("no"), 403, "permission_error", "permission_denied"),
        (ModelNotFound("x"), 404, "invalid_request_error", "model_not_found"),
        (NotFound("no such key"), 404, "invalid_request_error", "not_found"),
        (EngineOverloaded("m", 4), 429, "rate_limit_error", "engine_overloaded"),
        (EngineNotReady("m"), 503, "server_error", "model_not_ready"),
        (EngineFailure("died"), 500, "server_error", "engine_error"),
        (EngineTimeout("idle", 30), 504, "server_error", "timeout"),
        (
            UpstreamUnavailable("down", deployment="d1", status=503),
            503,
            "server_error",
            "upstream_unavailable",
        ),
        (ConfigurationError("bad setting"), 500, "server_error", "internal_error"),
        (ModelFilesMissing("pkg", "install it"), 500, "server_error", "internal_error"),
        (OpenMaaSError("generic"), 500, "server_error", "internal_error"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_status_type_and_code(
    exc: OpenMaaSError, status: int, type_: str, code: str | None
) -> None:
    got_status, body, _ = to_openai_error(exc)
    assert got_status == status
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert body["error"]["code"] == code
    assert body["error"]["message"] == exc.message


def test_invalid_request_keeps_its_param() -> None:
    _, body, _ = to_openai_error(InvalidRequest("bad", param="messages[0].role"))
    assert body["error"]["param"] == "messages[0].role"
    _, body, _ = to_openai_error(InvalidRequest("not JSON"))
    assert body["error"]["param"] is None


def test_model_not_found_names_param_model() -> None:
    _, body, _ = to_openai_error(ModelNotFound("gpt-9"))
    assert body["error"]["param"] == "model"
    assert "gpt-9" in body["error"]["message"]


@pytest.mark.parametrize(
    ("exc", "status", "retry_after"),
    [(EngineOverloaded("m", 4), 429, "1"), (EngineNotReady("m"), 503, "5")],
    ids=["overloaded", "not-ready"],
)
def test_capacity_errors_carry_retry_after(
    exc: OpenMaaSError, status: int, retry_after: str
) -> None:
    got_status, _, headers = to_openai_error(exc)
    assert got_status == status
    assert headers == {"retry-after": retry_after}


def test_retry_after_is_a_whole_number_of_seconds_at_least_one() -> None:
    exc = EngineOverloaded("m", 4)
    exc.retry_after_seconds = 0.2
    assert to_openai_error(exc)[2]["retry-after"] == "1"
    exc.retry_after_seconds = 2.6
    assert to_openai_error(exc)[2]["retry-after"] == "3"


@pytest.mark.parametrize(
    "exc",
    [InvalidRequest("x"), AuthenticationFailed("x"), EngineFailure("x"), ModelNotFound("m")],
    ids=lambda e: type(e).__name__,
)
def test_other_errors_carry_no_extra_headers(exc: OpenMaaSError) -> None:
    assert to_openai_error(exc)[2] == {}


def test_a_prompt_over_the_context_window_in_openais_words() -> None:
    """The code and the words clients recognise (``context_length_exceeded``, "maximum
    context length"), with the engine's counts; without counts, the engine's message."""
    exc = PromptTooLong("too long", "messages", prompt_tokens=3031, context_length=2048)
    status, body, _headers = to_openai_error(exc)
    assert status == 400
    assert body["error"] == {
        "message": "This model's maximum context length is 2048 tokens. However, your "
        "messages resulted in 3031 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert to_openai_error(PromptTooLong("too long"))[1]["error"]["message"] == "too long"
