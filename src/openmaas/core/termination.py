"""How a request ended. Every way has a name here; billing rules key on these names, and
:func:`failure_for` is the one table from an exception to how a request ended."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from openmaas.core.errors import (
    CapacityError,
    EngineFailure,
    EngineTimeout,
    InvalidRequest,
    UpstreamUnavailable,
)
from openmaas.core.types import FinishReason


class Termination(StrEnum):
    FINISHED = "finished"  # the model stopped by itself or on a stop sequence
    LENGTH = "length"  # max_tokens or the context window was reached
    CLIENT_DISCONNECTED = "client_disconnected"  # the client went away mid-request
    ENGINE_ERROR = "engine_error"  # the engine failed before or during generation
    REJECTED = "rejected"  # the engine refused the input (e.g. prompt over the context window)
    GATEWAY_SHUTDOWN = "gateway_shutdown"  # the grace period ran out while shutting down
    TIMEOUT = "timeout"  # a connect, first-token, idle or total timeout cut the request
    GATEWAY_KILLED = "gateway_killed"  # the process died (kill -9, power); found on restart
    KEY_REVOKED = "key_revoked"  # the caller's API key was revoked while the request ran
    CONTENT_FILTERED = "content_filtered"  # moderation (or the upstream's filter) cut the output


def from_finish_reason(reason: FinishReason) -> Termination:
    if reason is FinishReason.CONTENT_FILTER:
        return Termination.CONTENT_FILTERED
    return Termination.LENGTH if reason is FinishReason.LENGTH else Termination.FINISHED


def for_interruption(*, shutting_down: bool) -> Termination:
    """A request cut off from outside: by the client, or by our own shutdown."""
    return Termination.GATEWAY_SHUTDOWN if shutting_down else Termination.CLIENT_DISCONNECTED


@dataclass(frozen=True, slots=True)
class Failure:
    """What an exception raised while serving a request says about how it ended.

    ``termination`` is None for a refusal: nothing ran (a full queue, a loading engine, an
    upstream that could not take it), so there is no usage record and the hold is
    released. ``refused``: the engine never started on it, another deployment may be asked
    at once. ``deployment_failed``: the deployment's own fault (its circuit breaker counts
    it). ``failover``: before the first event, another deployment may take the request.
    """

    termination: Termination | None
    error: str | None  # recorded with the usage
    refused: bool = False
    deployment_failed: bool = False
    failover: bool = False


_BEFORE_OUTPUT = frozenset({"connect", "first_token"})  # timeout phases that precede output


def failure_for(exc: BaseException, *, shutting_down: bool = False) -> Failure:
    """The one table from an exception to how the request (or one attempt at it) ended,
    for the gateway's usage record and the router's failover (``docs/routing.md``):

    - ``EngineTimeout``: ``timeout``; the deployment's fault; failover only in the phases
      that precede output (``connect``, ``first_token``);
    - ``EngineFailure``: ``engine_error``; the deployment's fault; failover;
    - ``InvalidRequest``: ``rejected`` (the request is wrong: no failover, and never the
      deployment's fault; engines raise it for what the request caused even when the
      engine answered 500, e.g. an upstream's 500 naming the request's JSON schema);
    - ``UpstreamUnavailable``: refused (no record); the deployment's fault; failover;
    - any other ``CapacityError``: refused (no record), not reached; failover;
    - any other ``Exception``: ``engine_error`` (a bug: no failover);
    - cancellation: ``client_disconnected``, or ``gateway_shutdown`` while shutting down.
    """
    if isinstance(exc, EngineTimeout):
        return Failure(
            Termination.TIMEOUT,
            exc.message,
            deployment_failed=True,
            failover=exc.phase in _BEFORE_OUTPUT,
        )
    if isinstance(exc, EngineFailure):
        return Failure(Termination.ENGINE_ERROR, exc.message, deployment_failed=True, failover=True)
    if isinstance(exc, InvalidRequest):
        return Failure(Termination.REJECTED, exc.message)
    if isinstance(exc, UpstreamUnavailable):
        return Failure(None, exc.message, deployment_failed=True, failover=True)
    if isinstance(exc, CapacityError):
        return Failure(None, exc.message, refused=True, failover=True)
    if isinstance(exc, Exception):
        return Failure(Termination.ENGINE_ERROR, f"{type(exc).__name__}: {exc}")
    return Failure(for_interruption(shutting_down=shutting_down), None)
