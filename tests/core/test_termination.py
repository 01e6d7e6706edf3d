"""Terminations (core/termination.py): every way a request ends has one billing name."""

from __future__ import annotations

import asyncio

import pytest

from openmaas.core.errors import (
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    EngineTimeout,
    InvalidRequest,
    PromptTooLong,
    UpstreamUnavailable,
)
from openmaas.core.termination import (
    Failure,
    Termination,
    failure_for,
    for_interruption,
    from_finish_reason,
)
from openmaas.core.types import FinishReason


def test_stop_is_finished_and_length_is_length() -> None:
    assert from_finish_reason(FinishReason.STOP) is Termination.FINISHED
    assert from_finish_reason(FinishReason.LENGTH) is Termination.LENGTH


def test_every_finish_reason_maps_to_a_termination() -> None:
    for reason in FinishReason:
        assert isinstance(from_finish_reason(reason), Termination)


def test_interruption_is_client_disconnect_unless_shutting_down() -> None:
    assert for_interruption(shutting_down=False) is Termination.CLIENT_DISCONNECTED
    assert for_interruption(shutting_down=True) is Termination.GATEWAY_SHUTDOWN


def test_stored_names_are_stable() -> None:
    # These strings are written to usage_records.termination; renaming one breaks billing history.
    assert {t.value for t in Termination} == {
        "finished",
        "length",
        "client_disconnected",
        "engine_error",
        "rejected",
        "gateway_shutdown",
        "timeout",
        "gateway_killed",
        "key_revoked",
        "content_filtered",
    }
    assert all(len(t.value) <= 40 for t in Termination)  # the column is String(40)


TIMEOUT_MESSAGE = "The engine timed out (first_token: no answer within 5 s)."


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            EngineTimeout("first_token", 5),
            Failure(Termination.TIMEOUT, TIMEOUT_MESSAGE, deployment_failed=True, failover=True),
        ),
        (
            EngineTimeout("idle", 5),
            Failure(Termination.TIMEOUT, TIMEOUT_MESSAGE.replace("first_token", "idle"),
                    deployment_failed=True),
        ),
        (
            EngineFailure("boom"),
            Failure(Termination.ENGINE_ERROR, "boom", deployment_failed=True, failover=True),
        ),
        (PromptTooLong("too long"), Failure(Termination.REJECTED, "too long")),
        (InvalidRequest("bad"), Failure(Termination.REJECTED, "bad")),
        (
            UpstreamUnavailable("down", deployment="d"),
            Failure(None, "down", deployment_failed=True, failover=True),
        ),
        (
            EngineOverloaded("m", 4),
            Failure(None, EngineOverloaded("m", 4).message, refused=True, failover=True),
        ),
        (
            EngineNotReady("m"),
            Failure(None, EngineNotReady("m").message, refused=True, failover=True),
        ),
        (RuntimeError("bug"), Failure(Termination.ENGINE_ERROR, "RuntimeError: bug")),
    ],
)  # fmt: skip
def test_one_table_maps_an_exception_to_how_the_request_ended(
    exc: BaseException, expected: Failure
) -> None:
    assert failure_for(exc) == expected


def test_a_cancellation_is_an_interruption() -> None:
    cancelled = asyncio.CancelledError()
    assert failure_for(cancelled).termination is Termination.CLIENT_DISCONNECTED
    assert failure_for(cancelled, shutting_down=True).termination is Termination.GATEWAY_SHUTDOWN
