"""Waiting for background work: poll a condition against a bounded deadline, never sleep
a fixed time and hope. ``await eventually(...)`` in async tests, ``wait_until(...)`` in
tests that run in threads or drive a server in another process.

On timeout both raise ``AssertionError`` naming what never happened. A condition may return
any value; the first truthy one is returned, so a poll can also fetch what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 10.0
"""How long a condition may take by default: generous, it only bounds a failing test."""


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = TIMEOUT_S,
    what: str = "the condition",
    interval: float = 0.01,
) -> T:
    """The first truthy value of ``condition()`` (sync or async), polled every ``interval``
    seconds for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)  # polling, not waiting for a fixed time


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = TIMEOUT_S,
    what: str = "the condition",
    interval: float = 0.05,
) -> T:
    """``eventually`` for code that blocks: the first truthy value of ``condition()``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # polling, not waiting for a fixed time
    return value


class CountedCalls:
    """A callable that counts its calls and sets ``reached`` at the ``n``-th, so a test can
    await a scheduled action having run ``n`` times; it raises ``fail`` on every call when
    given one (a failing action)."""

    def __init__(self, n: int, fail: BaseException | None = None) -> None:
        self.n = n
        self.calls = 0
        self.reached = asyncio.Event()
        self._fail = fail

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            self.reached.set()
        if self._fail is not None:
            raise self._fail
