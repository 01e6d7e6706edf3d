"""The one fake clock of the tests: a ``openmaas.core.clock.Clock`` that moves only when a
test moves it, so that code reading time is tested without sleeping."""

from __future__ import annotations

NOW_MS = 1_790_000_000_000  # 2026-09-21T14:13:20Z


class ManualClock:
    """Wall-clock milliseconds and monotonic seconds that stand still until ``advance``.

    ``tick``: seconds the monotonic clock moves each time it is read (the wall clock does
    not), for code that measures durations and should never measure zero while the
    timestamps it writes stay exact.
    """

    def __init__(self, now_ms: int = NOW_MS, *, monotonic: float = 0.0, tick: float = 0.0):
        self._now_ms = now_ms
        self._monotonic = monotonic
        self.tick = tick

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        self._monotonic += self.tick
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move ``seconds`` on."""
        assert seconds >= 0, "a clock never goes back"
        self._now_ms += round(seconds * 1000)
        self._monotonic += seconds
