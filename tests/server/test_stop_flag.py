"""The supervisor's stop flag (server/processes.py ``StopFlag``): set from signal handlers,
even one nested in another, it wakes the waiting main thread and never blocks the handler."""

from __future__ import annotations

import signal
from types import FrameType

from openmaas.server.processes import StopFlag


def test_unset_it_times_out_and_set_it_returns_at_once() -> None:
    flag = StopFlag()
    assert flag.wait(0.01) is False and not flag.is_set()
    flag.set()
    assert flag.wait(3600) is True and flag.is_set()


def test_a_signal_nested_in_another_signals_handler_sets_it() -> None:
    """SIGTERM's handler is interrupted by a second signal before it returns, as when two
    signals arrive back to back; both handlers set the flag and both return."""
    flag = StopFlag()
    handled: list[str] = []

    def second(_sig: int, _frame: FrameType | None) -> None:
        flag.set()
        handled.append("second")

    def first(_sig: int, _frame: FrameType | None) -> None:
        flag.set()
        signal.raise_signal(signal.SIGUSR1)  # runs ``second`` before this handler returns
        flag.set()
        handled.append("first")

    old = {
        sig: signal.signal(sig, h) for sig, h in ((signal.SIGTERM, first), (signal.SIGUSR1, second))
    }
    try:
        signal.raise_signal(signal.SIGTERM)
        assert flag.wait(3600) is True
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert handled == ["second", "first"]
