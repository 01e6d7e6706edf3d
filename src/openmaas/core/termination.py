"""How a request ended. Every way has a name here; billing rules key on these names."""

from __future__ import annotations

from enum import StrEnum

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


def from_finish_reason(reason: FinishReason) -> Termination:
    return Termination.LENGTH if reason is FinishReason.LENGTH else Termination.FINISHED


def for_interruption(*, shutting_down: bool) -> Termination:
    """A request cut off from outside: by the client, or by our own shutdown."""
    return Termination.GATEWAY_SHUTDOWN if shutting_down else Termination.CLIENT_DISCONNECTED
