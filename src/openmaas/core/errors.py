"""The one exception hierarchy of OpenMaaS.

Every error the platform raises on purpose is an ``OpenMaaSError``. Protocol adapters
map these classes to their own wire bodies and HTTP statuses (one table per protocol);
nothing else decides a status code.

    OpenMaaSError
    ├── RequestError                 the caller asked for something wrong
    │   ├── InvalidRequest           malformed JSON or an invalid field (names the field)
    │   │   └── PromptTooLong        the prompt does not fit the model's context window
    │   ├── PayloadTooLarge          request body over the configured limit
    │   ├── AuthenticationFailed     missing, malformed, unknown or revoked key
    │   ├── PermissionDenied         a valid key that may not do this
    │   └── NotFound
    │       └── ModelNotFound        no such model
    ├── CapacityError                the platform cannot take the request now
    │   ├── EngineOverloaded         the engine's queue is full (retry later)
    │   └── EngineNotReady           the engine is still loading (or failed to load)
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
    """The prompt (plus the room asked for the answer) exceeds the model's context window."""


class PayloadTooLarge(RequestError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"Request body exceeds the limit of {limit_bytes} bytes.")
        self.limit_bytes = limit_bytes


class AuthenticationFailed(RequestError):
    """No usable credential: missing, malformed, unknown or revoked."""


class PermissionDenied(RequestError):
    """The caller is known but may not perform this action."""


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


class EngineFailure(OpenMaaSError):
    """The engine failed while serving the request."""


class SetupError(OpenMaaSError):
    """OpenMaaS cannot start as configured."""


class ConfigurationError(SetupError):
    pass


class ModelFilesMissing(SetupError):
    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"Model package '{package}' is not installed. {hint}")
        self.package = package
