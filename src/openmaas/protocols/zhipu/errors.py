"""Our errors in Zhipu's shape: the one table of HTTP statuses, business codes and retry
hints for this protocol.

Body: ``{"error": {"code": "<string>", "message": "..."}}``. Zhipu's Python SDKs retry 429
and 5xx answers up to 3 times unless the response says ``x-should-retry: false``, so every
row states whether retrying can help.
"""

from __future__ import annotations

from typing import Any

from openmaas.core.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    CapacityError,
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
    RateLimited,
)
from openmaas.core.keys import CredentialMissing, InvalidToken, SignatureInvalid, TokenExpired
from openmaas.protocols.zhipu.adapter import MalformedBody, MissingField

# (class, HTTP status, Zhipu code, should the client retry); the first matching class wins.
TABLE: tuple[tuple[type[OpenMaaSError], int, str, bool], ...] = (
    (CredentialMissing, 401, "1001", False),
    (InvalidToken, 401, "1002", False),
    (TokenExpired, 401, "1003", False),
    (SignatureInvalid, 401, "1004", False),
    (AuthenticationFailed, 401, "1000", False),
    (PayloadTooLarge, 413, "1210", False),
    (MalformedBody, 400, "1210", False),
    (MissingField, 400, "1213", False),
    (PromptTooLong, 400, "1261", False),
    (ContentFiltered, 400, "1301", False),  # unsafe or sensitive content
    (InvalidRequest, 400, "1214", False),
    (PermissionDenied, 403, "1220", False),
    (ModelNotFound, 400, "1211", False),
    (NotFound, 404, "1222", False),
    (InsufficientBalance, 429, "1113", False),
    (BudgetExceeded, 429, "1308", False),
    (RateLimited, 429, "1302", True),
    (EngineOverloaded, 429, "1302", True),
    (EngineNotReady, 429, "1305", True),
    (CapacityError, 429, "1305", True),
    (EngineTimeout, 500, "1234", True),  # "network error"
    (EngineFailure, 500, "500", True),
)
INTERNAL: tuple[int, str, bool] = (500, "500", True)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def classify(exc: OpenMaaSError) -> tuple[int, str, bool]:
    """HTTP status, Zhipu code and retry hint of one of our errors."""
    for cls, status, code, retry in TABLE:
        if isinstance(exc, cls):
            if cls is InvalidRequest and getattr(exc, "param", None) is None:
                return status, "1210", retry  # no field to blame: "invalid parameters"
            return status, code, retry
    return INTERNAL


def to_zhipu_error(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and extra headers for one of our errors (the server's renderer)."""
    status, code, retry = classify(exc)
    headers = {"x-should-retry": "true" if retry else "false"}
    if isinstance(exc, CapacityError):
        headers["retry-after"] = str(max(1, round(exc.retry_after_seconds)))
    if isinstance(exc, RateLimited):
        headers.update(exc.headers)
    return status, error_body(code, exc.message), headers
