"""The deadlines of an upstream request (``engines/upstream/openai_http.py``): which one is
next for a stream, and one timer for all of a stream's reads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Body", "Deadlines", "ReadTimer", "Timeouts"]


class Body(Protocol):
    """A response body read as it arrives (``http1.Response``)."""

    async def readany(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; ``None`` waits for ever. ``connect``: the TCP (and TLS) connection;
    ``first_token``: from the request to the first token of any kind (text, reasoning, a tool
    call); ``idle``: between two tokens; ``total``: the whole request."""

    connect: float | None = 10.0
    first_token: float | None = 120.0
    idle: float | None = 60.0
    total: float | None = 900.0


class Deadlines:
    """Which deadline is next for a stream: the first token's (then idle's) or the total's."""

    __slots__ = ("_timeouts", "_total_at", "_first_at", "_last_token", "first_token_seen")

    def __init__(self, timeouts: Timeouts, started: float) -> None:
        self._timeouts = timeouts
        self._total_at = None if timeouts.total is None else started + timeouts.total
        self._first_at = None if timeouts.first_token is None else started + timeouts.first_token
        self._last_token = started
        self.first_token_seen = False

    def token(self, now: float) -> None:
        self._last_token = now
        self.first_token_seen = True

    def next(self) -> tuple[float | None, str]:
        if self.first_token_seen:
            idle = self._timeouts.idle
            phase_at, phase = (None if idle is None else self._last_token + idle), "idle"
        else:
            phase_at, phase = self._first_at, "first_token"
        if self._total_at is not None and (phase_at is None or self._total_at <= phase_at):
            return self._total_at, "total"
        return phase_at, phase

    def seconds(self, phase: str) -> float:
        value = getattr(self._timeouts, phase)
        return float(value) if value is not None else 0.0


class ReadTimer:
    """The deadline of a stream's reads, on one timer for the whole stream.

    ``asyncio.timeout_at`` around each read made and cancelled a timer per read, which cost
    more CPU than many a read. Here the timer is made once and moved only earlier; when it
    fires, a deadline that has since moved later (a token came) re-arms it, and only one
    passed while a read waits cancels that read, as ``asyncio.timeout`` would (the
    cancellation becomes ``TimeoutError`` unless someone else cancelled too). Between reads
    (the consumer has the event) nothing is cancelled; a read that starts past its deadline
    times out if it has to wait (what is already buffered is still read).
    """

    __slots__ = ("_loop", "_task", "_handle", "_at", "_reading", "_fired")

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ReadTimer needs a running task")
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None
        self._reading = False
        self._fired = False

    async def read(self, content: Body, at: float | None) -> bytes:
        """``content.readany()``, or TimeoutError once ``at`` (None: never) has passed."""
        self._at = at
        if at is not None and (self._handle is None or self._handle.when() > at):
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(at, self._fire)
        self._reading = True
        try:
            return await content.readany()
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if self._task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            self._reading = False

    def _fire(self) -> None:
        self._handle = None
        at = self._at
        if at is None or not self._reading:
            return  # the next read arms it again
        if self._loop.time() < at:
            self._handle = self._loop.call_at(at, self._fire)
            return
        self._fired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
