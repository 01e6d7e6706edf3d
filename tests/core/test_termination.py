"""Terminations (core/termination.py): every way a request ends has one billing name."""

from __future__ import annotations

from openmaas.core.termination import Termination, for_interruption, from_finish_reason
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
    }
    assert all(len(t.value) <= 40 for t in Termination)  # the column is String(40)
