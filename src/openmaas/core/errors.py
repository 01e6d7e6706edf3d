"""The one exception hierarchy of OpenMaaS.

Every error the platform raises on purpose is an ``OpenMaaSError``. Protocol adapters
map these classes to their own wire bodies and HTTP statuses (one table per protocol);
nothing else decides a status code.

    OpenMaaSError
    ├── RequestError                 the caller asked for something wrong
    │   ├── InvalidRequest           malformed JSON or an invalid field (names the field)
    │   │   ├── PromptTooLong        the prompt does not fit the model's context window
    │   │   └── ContentFiltered      moderation refuses the request's messages
    │   ├── PayloadTooLarge          request body over the configured limit
    │   ├── AuthenticationFailed     missing, malformed, unknown or revoked key
    │   ├── PermissionDenied         a valid key that may not do this
    │   ├── QuotaExceeded            the caller's money or budget cannot cover the request
    │   │   ├── InsufficientBalance  balance (less open holds, plus credit) below the hold
    │   │   └── BudgetExceeded       a key's or project's daily/monthly budget is spent
    │   └── NotFound
    │       └── ModelNotFound        no such model
    ├── CapacityError                the platform cannot take the request now
    │   ├── EngineOverloaded         the engine's queue is full (retry later)
    │   ├── EngineNotReady           the engine is still loading (or failed to load)
    │   └── RateLimited              a key's or organization's RPM, TPM or concurrency limit
    ├── EngineFailure                the engine failed while serving the request
    └── SetupError                   the platform cannot start as configured
        ├── ConfigurationError       a setting is invalid
        └── ModelFilesMissing        a model package is not installed
"""

from __future__ import annotations


class OpenMaaSError(Exception):
    """Base of every error OpenMaaS raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(OpenMaaSError):
    """The caller's request cannot be served as sent."""


class InvalidRequest(RequestError):
    """A malformed body or an invalid field; ``param`` names the field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLong(InvalidRequest):
    """The prompt (plus the room asked for the answer) exceeds the model's context window.
    ``prompt_tokens`` and ``context_length`` are the engine's counts, when it gave them
    (each protocol words the error with them)."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        prompt_tokens: int | None = None,
        context_length: int | None = None,
    ) -> None:
        super().__init__(message, param)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class ContentFiltered(InvalidRequest):
    """The request's messages hold content that moderation refuses (``docs/moderation.md``):
    refused before admission, at no charge (OpenAI 400 ``content_filter``, Zhipu 1301,
    Anthropic 400 ``invalid_request_error``)."""


class PayloadTooLarge(RequestError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"Request body exceeds the limit of {limit_bytes} bytes.")
        self.limit_bytes = limit_bytes


class AuthenticationFailed(RequestError):
    """No usable credential: missing, malformed, unknown or revoked."""


class PermissionDenied(RequestError):
    """The caller is known but may not perform this action."""


class QuotaExceeded(RequestError):
    """The request is valid but the caller's money or budget cannot cover its worst case.
    Not a capacity error: retrying does not help until someone tops up or a period ends."""


class InsufficientBalance(QuotaExceeded):
    """Available balance (balance less open holds, down to the credit limit) cannot cover
    the hold (Zhipu 1113, OpenAI ``insufficient_quota``). The message names the
    organization, both amounts in its currency and what to do."""

    def __init__(
        self,
        org_id: str,
        needed_micros: int,
        available_micros: int,
        currency: str = "CNY",
        org_name: str | None = None,
    ) -> None:
        available = max(0, available_micros)
        org = f"'{org_name}' ({org_id})" if org_name else f"'{org_id}'"
        super().__init__(
            f"Insufficient balance: organization {org} has {_amount(available, currency)} "
            f"available and this request may cost up to {_amount(needed_micros, currency)}. "
            "An administrator can add funds with "
            f"`openmaas billing topup {org_name or org_id} <amount>`; or lower max_tokens."
        )
        self.org_id = org_id
        self.org_name = org_name
        self.needed_micros = needed_micros
        self.available_micros = available_micros
        self.currency = currency


class BudgetExceeded(QuotaExceeded):
    """A budget set on a key or a project for the current day or month is used up."""

    def __init__(self, scope: str, period: str, limit_micros: int, currency: str = "CNY") -> None:
        super().__init__(
            f"The {period} budget of {scope} ({_amount(limit_micros, currency)}) would be "
            f"exceeded. An administrator can raise it with `openmaas billing budget set {scope} "
            f"<limit> --{period}`, or wait for the next {period}."
        )
        self.scope = scope
        self.period = period
        self.limit_micros = limit_micros
        self.currency = currency


def _amount(micros: int, currency: str) -> str:
    """``81, "CNY"`` -> ``"0.000081 CNY"`` (micros are a millionth of the major unit)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d} {currency}"


class NotFound(RequestError):
    pass


class ModelNotFound(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.")
        self.model = model


class CapacityError(OpenMaaSError):
    """The request is valid but cannot be served right now; retrying later may succeed."""

    retry_after_seconds: float = 1.0


class EngineOverloaded(CapacityError):
    def __init__(self, model: str, limit: int) -> None:
        super().__init__(
            f"The engine serving '{model}' is at capacity ({limit} requests in flight or queued). "
            "Retry after a short delay."
        )
        self.model = model


class EngineNotReady(CapacityError):
    retry_after_seconds = 5.0

    def __init__(self, model: str, detail: str = "still loading") -> None:
        super().__init__(f"The engine serving '{model}' is not ready: {detail}.")
        self.model = model


class RateLimited(CapacityError):
    """A rate limit refuses the request (HTTP 429; Zhipu code 1302).

    ``limit`` names the dimension (``"requests"``, ``"tokens"`` or ``"concurrency"``) and
    ``scope`` the party whose limit it is (``"key:…"`` or ``"org:…"``); ``headers`` are the
    ``x-ratelimit-*`` and ``retry-after`` values to send with the refusal.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        scope: str,
        retry_after_seconds: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.scope = scope
        self.retry_after_seconds = retry_after_seconds
        self.headers: dict[str, str] = dict(headers or {})


class UpstreamUnavailable(CapacityError):
    """A deployment could not take the request: connection refused, its own 429 or 503, or
    its circuit is open. The router tries another deployment; when none is left, the
    client gets a capacity error (retry later)."""

    def __init__(self, message: str, *, deployment: str, status: int | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment
        self.status = status


class EngineFailure(OpenMaaSError):
    """The engine failed while serving the request."""


class EngineTimeout(EngineFailure):
    """The engine took too long: to connect, to its first token, between two tokens, or in
    total (``phase``). Billed like an engine error (termination ``timeout``)."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"The engine timed out ({phase}: no answer within {seconds:g} s).")
        self.phase = phase
        self.seconds = seconds


class UrlRefused(InvalidRequest):
    """A URL in the request may not be fetched: fetching client URLs is off, or the URL
    points at a loopback, private, link-local or metadata address (SSRF)."""


class SetupError(OpenMaaSError):
    """OpenMaaS cannot start as configured."""


class ConfigurationError(SetupError):
    pass


class ModelFilesMissing(SetupError):
    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"Model package '{package}' is not installed. {hint}")
        self.package = package
