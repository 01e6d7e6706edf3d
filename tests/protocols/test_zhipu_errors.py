"""The Zhipu error table (protocols/zhipu/errors.py): every code, status and retry hint."""

from __future__ import annotations

import pytest

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
    ModelNotFound,
    NotFound,
    OpenMaaSError,
    PayloadTooLarge,
    PermissionDenied,
    PromptTooLong,
    QuotaExceeded,
    RateLimited,
)
from openmaas.core.keys import CredentialMissing, InvalidToken, SignatureInvalid, TokenExpired
from openmaas.protocols.zhipu.adapter import MalformedBody, MissingField
from openmaas.protocols.zhipu.errors import TABLE, to_zhipu_error

CASES: list[tuple[OpenMaaSError, int, str, str]] = [
    (CredentialMissing("no key"), 401, "1001", "false"),
    (InvalidToken("bad key"), 401, "1002", "false"),
    (TokenExpired("old"), 401, "1003", "false"),
    (SignatureInvalid("forged"), 401, "1004", "false"),
    (AuthenticationFailed("revoked"), 401, "1000", "false"),
    (PayloadTooLarge(1024), 413, "1210", "false"),
    (MalformedBody("not json"), 400, "1210", "false"),
    (MissingField("model missing", "model"), 400, "1213", "false"),
    (PromptTooLong("too long", "messages"), 400, "1261", "false"),
    (ContentFiltered("unsafe"), 400, "1301", "false"),
    (InvalidRequest("bad temperature", "temperature"), 400, "1214", "false"),
    (InvalidRequest("bad request"), 400, "1210", "false"),
    (PermissionDenied("nope"), 403, "1220", "false"),
    (ModelNotFound("glm-9"), 400, "1211", "false"),
    (NotFound("no such task"), 404, "1222", "false"),
    (
        RateLimited("too many", limit="requests", scope="org:o", retry_after_seconds=3),
        429,
        "1302",
        "true",
    ),
    (InsufficientBalance("org_1", 500, 20), 429, "1113", "false"),
    (BudgetExceeded("key:om1", "day", 1000), 429, "1308", "false"),
    (EngineOverloaded("m", 4), 429, "1302", "true"),
    (EngineNotReady("m"), 429, "1305", "true"),
    (CapacityError("busy"), 429, "1305", "true"),
    (EngineTimeout("first_token", 30), 500, "1234", "true"),
    (EngineFailure("crashed"), 500, "500", "true"),
    (ConfigurationError("odd"), 500, "500", "true"),  # not in the table: internal
]


@pytest.mark.parametrize(("exc", "status", "code", "retry"), CASES, ids=lambda c: str(c))
def test_each_error_has_its_status_code_and_retry_hint(
    exc: OpenMaaSError, status: int, code: str, retry: str
) -> None:
    got_status, body, headers = to_zhipu_error(exc)
    assert got_status == status
    assert body == {"error": {"code": code, "message": exc.message}}
    assert isinstance(body["error"]["code"], str)
    assert headers["x-should-retry"] == retry


def test_every_row_of_the_table_is_exercised() -> None:
    covered = {type(exc) for exc, *_ in CASES}
    assert {cls for cls, *_ in TABLE} <= covered


def test_non_transient_means_4xx_and_transient_means_429_or_5xx() -> None:
    for cls, status, _code, retry in TABLE:
        if issubclass(cls, QuotaExceeded):  # 429 as Zhipu answers it, but waiting won't help
            assert status == 429 and not retry
        else:
            assert retry == (status == 429 or status >= 500)


def test_capacity_errors_carry_retry_after() -> None:
    _, _, headers = to_zhipu_error(EngineNotReady("m"))
    assert headers["retry-after"] == "5"
    _, _, headers = to_zhipu_error(EngineOverloaded("m", 1))
    assert headers["retry-after"] == "1"
    _, _, headers = to_zhipu_error(InvalidRequest("x"))
    assert "retry-after" not in headers
