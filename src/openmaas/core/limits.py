"""Rate-limit algorithms: RPM, TPM and concurrency, sans I/O, with time passed in.

Requests and tokens per minute use a **bucketed sliding window**: usage is summed in buckets of
``bucket_ms`` (1 s by default) and a request is admitted when the buckets of the last
``window_ms`` (60 s) *plus the current one* have room for it. Counting that one extra bucket
makes the window conservative, so the guarantee is exact: for any interval of ``window_ms``
milliseconds, the usage admitted in it never exceeds the limit (with settlements at or under
the reservation). A token bucket or GCRA would store less (one timestamp) but lets through up
to twice the limit in a minute (a full burst, then the refill); a log of every request is
exact too but grows with traffic. Buckets cost at most ``window/bucket + 1`` integers per
counter and map onto a Redis hash updated by one Lua script.

Tokens are **reserved** at admission (prompt + max output) and **corrected** at settlement:
the unused part is refunded to the bucket the reservation went to (if it is still in the
window), and tokens beyond the reservation are charged to the current bucket (they were used;
they are never refused after the fact, but they delay later admissions). Concurrency is a
count of admitted, unsettled requests.

:class:`LimitState` holds all counters; :meth:`LimitState.admit` checks every counter of every
scope and only then commits them all, in one synchronous step: a refusal by any counter (say
the organization's) leaves no reservation on any other (the key's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from openmaas.core.errors import RateLimited
from openmaas.core.tiers import Limits, Scope

WINDOW_MS = 60_000
BUCKET_MS = 1_000
CONCURRENCY_RETRY_MS = 1_000
"""The wait suggested when a concurrency cap refuses: a slot frees when any request ends."""


class Dimension(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENCY = "concurrency"


CounterKey = tuple[str, str, Dimension]
"""``(scope key, model or "*", dimension)``: the identity of one counter."""


class WindowCounter:
    """Usage per time bucket over a sliding window; integer milliseconds throughout."""

    __slots__ = ("bucket_ms", "span", "_buckets", "_total")

    def __init__(self, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS) -> None:
        if bucket_ms <= 0 or window_ms <= 0 or window_ms % bucket_ms:
            raise ValueError("window_ms must be a positive multiple of bucket_ms")
        self.bucket_ms = bucket_ms
        self.span = window_ms // bucket_ms  # buckets in a window; one more is counted
        self._buckets: dict[int, int] = {}  # bucket index -> usage, indices ascending
        self._total = 0

    def _expire(self, now_ms: int) -> None:
        oldest_counted = now_ms // self.bucket_ms - self.span
        while self._buckets:
            index = next(iter(self._buckets))
            if index >= oldest_counted:
                break
            self._total -= self._buckets.pop(index)

    def _expires_at(self, index: int) -> int:
        return (index + self.span + 1) * self.bucket_ms

    def used(self, now_ms: int) -> int:
        self._expire(now_ms)
        return self._total

    def add(self, amount: int, now_ms: int) -> int:
        """Charge ``amount`` now; returns the bucket index it went to."""
        self._expire(now_ms)
        index = now_ms // self.bucket_ms
        if amount > 0:
            self._buckets[index] = self._buckets.get(index, 0) + amount
            self._total += amount
        return index

    def refund(self, index: int, amount: int, now_ms: int) -> None:
        """Give back up to ``amount`` charged to bucket ``index`` (nothing if it expired)."""
        self._expire(now_ms)
        held = self._buckets.get(index, 0)
        give = min(held, max(amount, 0))
        if give:
            self._total -= give
            if held == give:
                del self._buckets[index]
            else:
                self._buckets[index] = held - give

    def reset_ms(self, now_ms: int) -> int:
        """Milliseconds until all usage now counted has left the window (0 when none)."""
        self._expire(now_ms)
        if not self._buckets:
            return 0
        return self._expires_at(next(reversed(self._buckets))) - now_ms

    def wait_ms(self, amount: int, limit: int, now_ms: int) -> int | None:
        """Milliseconds until ``amount`` more fits under ``limit``; ``None`` if it never will."""
        if amount > limit:
            return None
        used = self.used(now_ms)
        if used + amount <= limit:
            return 0
        for index, usage in self._buckets.items():
            used -= usage
            if used + amount <= limit:
                return self._expires_at(index) - now_ms
        return None  # unreachable: with every bucket gone, used + amount <= limit

    def is_idle(self, now_ms: int) -> bool:
        return self.used(now_ms) == 0 and not self._buckets


@dataclass(frozen=True, slots=True)
class Status:
    """One dimension as the headers report it: the most constrained counter of the request."""

    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the first counter (in scope order) with no room."""

    dimension: Dimension
    scope: str
    model: str
    limit: int
    used: int
    requested: int
    retry_after_ms: int
    never: bool = False  # the request alone exceeds the limit; waiting will not help


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request's reservations; settle or release it exactly once when it ends."""

    id: str
    model: str
    reserved_tokens: int
    admitted_ms: int
    token_counters: tuple[CounterKey, ...]
    concurrency_counters: tuple[CounterKey, ...]
    headers: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Decision:
    admission: Admission | None
    refusal: Refusal | None
    requests: Status | None
    tokens: Status | None

    @property
    def admitted(self) -> bool:
        return self.admission is not None

    @property
    def retry_after_ms(self) -> int | None:
        return None if self.refusal is None else self.refusal.retry_after_ms


def format_duration(ms: int) -> str:
    """OpenAI's reset format: ``"0s"``, ``"250ms"``, ``"1s"``, ``"1m30.5s"``, ``"2h0m0s"``."""
    ms = max(ms, 0)
    if ms == 0:
        return "0s"
    if ms < 1_000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def retry_after_seconds(ms: int) -> int:
    """``Retry-After`` is whole seconds: round up, and never tell a refused client 0."""
    return max(1, math.ceil(ms / 1000))


def rate_limit_headers(
    requests: Status | None, tokens: Status | None, retry_after_ms: int | None = None
) -> dict[str, str]:
    """The OpenAI-style headers; a dimension without a limit is left out."""
    headers: dict[str, str] = {}
    for name, status in (("requests", requests), ("tokens", tokens)):
        if status is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(status.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(status.remaining)
            headers[f"x-ratelimit-reset-{name}"] = format_duration(status.reset_ms)
    if retry_after_ms is not None:
        headers["retry-after"] = str(retry_after_seconds(retry_after_ms))
    return headers


_UNITS = {
    Dimension.REQUESTS: "requests per minute (RPM)",
    Dimension.TOKENS: "tokens per minute (TPM)",
    Dimension.CONCURRENCY: "concurrent requests",
}


def rate_limited(decision: Decision) -> RateLimited:
    """The error for a refused decision, carrying its headers."""
    refusal = decision.refusal
    if refusal is None:
        raise ValueError("the decision admitted the request")
    where = refusal.scope if refusal.model == "*" else f"{refusal.scope} for {refusal.model}"
    unit = _UNITS[refusal.dimension]
    if refusal.never:
        message = (
            f"Request too large for {unit} on {where}: limit {refusal.limit}, "
            f"requested {refusal.requested}. Reduce the prompt or max_tokens."
        )
    else:
        message = (
            f"Rate limit reached for {unit} on {where}: limit {refusal.limit}, "
            f"used {refusal.used}, requested {refusal.requested}. "
            f"Retry after {retry_after_seconds(refusal.retry_after_ms)}s."
        )
    headers = rate_limit_headers(decision.requests, decision.tokens, refusal.retry_after_ms)
    return RateLimited(
        message,
        limit=refusal.dimension.value,
        scope=refusal.scope,
        retry_after_seconds=float(retry_after_seconds(refusal.retry_after_ms)),
        headers=headers,
    )


class LimitState:
    """Every counter of one limiter and the admissions still open; mutated only by its methods.

    Time never goes backwards here: a ``now_ms`` older than one already seen is taken as the
    latest seen, so a stepped-back clock cannot free capacity early.
    """

    def __init__(self, *, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS) -> None:
        WindowCounter(window_ms, bucket_ms)  # validates the pair
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms
        self._windows: dict[CounterKey, WindowCounter] = {}
        self._in_flight: dict[CounterKey, int] = {}
        self._open: dict[str, Admission] = {}
        self._seq = 0
        self._latest_ms = 0

    def _now(self, now_ms: int) -> int:
        self._latest_ms = max(self._latest_ms, now_ms)
        return self._latest_ms

    def _window(self, key: CounterKey) -> WindowCounter:
        counter = self._windows.get(key)
        if counter is None:
            counter = self._windows[key] = WindowCounter(self.window_ms, self.bucket_ms)
        return counter

    def admit(
        self, scopes: Sequence[Scope], model: str, reserve_tokens: int, now_ms: int
    ) -> Decision:
        """Admit one request for ``model`` reserving ``reserve_tokens`` against every scope.

        Phase one checks every counter and changes nothing; phase two, reached only when all
        have room, charges them all. No other call can run between the two.
        """
        if reserve_tokens < 0:
            raise ValueError("reserve_tokens must be >= 0")
        now = self._now(now_ms)
        checks = counter_caps(scopes, model)

        refusal: Refusal | None = None
        retry_ms = 0
        for key, limit in checks:
            amount = reserve_tokens if key[2] is Dimension.TOKENS else 1
            used, wait = self._room(key, amount, limit, now)
            if wait != 0:
                retry_ms = max(retry_ms, self.window_ms if wait is None else wait)
                if refusal is None:
                    refusal = Refusal(key[2], key[0], key[1], limit, used, amount, 0, wait is None)
        if refusal is not None:
            requests, tokens = self._statuses(checks, now)
            return Decision(None, replace(refusal, retry_after_ms=retry_ms), requests, tokens)

        for key, _ in checks:
            if key[2] is Dimension.CONCURRENCY:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            else:
                self._window(key).add(reserve_tokens if key[2] is Dimension.TOKENS else 1, now)
        requests, tokens = self._statuses(checks, now)
        self._seq += 1
        admission = new_admission(
            str(self._seq), model, reserve_tokens, now, checks, requests, tokens
        )
        self._open[admission.id] = admission
        return Decision(admission, None, requests, tokens)

    def _room(self, key: CounterKey, amount: int, limit: int, now: int) -> tuple[int, int | None]:
        """Usage of one counter and the wait before ``amount`` fits (``None``: never)."""
        if key[2] is Dimension.CONCURRENCY:
            used = self._in_flight.get(key, 0)
            if amount > limit:
                return used, None
            return used, 0 if used + amount <= limit else CONCURRENCY_RETRY_MS
        counter = self._window(key)
        return counter.used(now), counter.wait_ms(amount, limit, now)

    def _statuses(
        self, checks: Sequence[tuple[CounterKey, int]], now: int
    ) -> tuple[Status | None, Status | None]:
        """The most constrained RPM and TPM counters among ``checks``, for the headers."""
        return strictest(
            (key[2], limit, self._window(key).used(now), self._window(key).reset_ms(now))
            for key, limit in checks
            if key[2] is not Dimension.CONCURRENCY
        )

    def settle(self, admission_id: str, actual_tokens: int, now_ms: int) -> bool:
        """Correct the reservation to ``actual_tokens`` and free the slots; once per admission.

        Returns ``False`` (and changes nothing) when the admission is unknown or already ended.
        """
        if actual_tokens < 0:
            raise ValueError("actual_tokens must be >= 0")
        admission = self._open.pop(admission_id, None)
        if admission is None:
            return False
        now = self._now(now_ms)
        index = admission.admitted_ms // self.bucket_ms
        delta = actual_tokens - admission.reserved_tokens
        for key in admission.token_counters:
            counter = self._window(key)
            if delta < 0:
                counter.refund(index, -delta, now)
            elif delta > 0:
                counter.add(delta, now)
        self._free_slots(admission)
        return True

    def release(self, admission_id: str) -> bool:
        """End an admission that used nothing (the engine never ran): refund, free the slots.

        The request still counts toward RPM: it was made.
        """
        admission = self._open.pop(admission_id, None)
        if admission is None:
            return False
        index = admission.admitted_ms // self.bucket_ms
        for key in admission.token_counters:
            self._window(key).refund(index, admission.reserved_tokens, self._latest_ms)
        self._free_slots(admission)
        return True

    def _free_slots(self, admission: Admission) -> None:
        for key in admission.concurrency_counters:
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def used(self, scope: str, model: str, dimension: Dimension, now_ms: int) -> int:
        """Current usage of one counter (0 if it does not exist)."""
        key = (scope, model, dimension)
        if dimension is Dimension.CONCURRENCY:
            return self._in_flight.get(key, 0)
        counter = self._windows.get(key)
        return 0 if counter is None else counter.used(self._now(now_ms))

    @property
    def open_admissions(self) -> int:
        return len(self._open)

    @property
    def counters(self) -> int:
        return len(self._windows) + len(self._in_flight)

    def sweep(self, now_ms: int) -> int:
        """Drop window counters with nothing left in the window; returns how many went."""
        now = self._now(now_ms)
        idle = [key for key, counter in self._windows.items() if counter.is_idle(now)]
        for key in idle:
            del self._windows[key]
        return len(idle)


def new_admission(
    admission_id: str,
    model: str,
    reserve_tokens: int,
    now_ms: int,
    checks: Sequence[tuple[CounterKey, int]],
    requests: Status | None,
    tokens: Status | None,
) -> Admission:
    """The admission of a request that every counter of ``checks`` let through, with its
    headers. Shared by every backend."""
    return Admission(
        id=admission_id,
        model=model,
        reserved_tokens=reserve_tokens,
        admitted_ms=now_ms,
        token_counters=tuple(k for k, _ in checks if k[2] is Dimension.TOKENS),
        concurrency_counters=tuple(k for k, _ in checks if k[2] is Dimension.CONCURRENCY),
        headers=rate_limit_headers(requests, tokens),
    )


def counter_caps(scopes: Sequence[Scope], model: str) -> list[tuple[CounterKey, int]]:
    """Every counter a request for ``model`` counts against and its cap, in scope order; a
    counter named twice is checked once, with the strictest cap. Shared by every backend."""
    caps: dict[CounterKey, int] = {}
    for scope in scopes:
        for group, limits in scope.tier.counter_limits(model):
            for key, limit in _caps(scope.key, group, limits):
                caps[key] = min(limit, caps.get(key, limit))
    return list(caps.items())


def strictest(
    windows: Iterable[tuple[Dimension, int, int, int]],
) -> tuple[Status | None, Status | None]:
    """The headers' RPM and TPM status from ``(dimension, limit, used, reset_ms)`` of each
    window counter of a request: the least remaining (then the latest reset) per dimension."""
    found: dict[Dimension, Status] = {}
    for dimension, limit, used, reset_ms in windows:
        status = Status(limit, max(limit - used, 0), reset_ms)
        best = found.get(dimension)
        if best is None or (status.remaining, -reset_ms) < (best.remaining, -best.reset_ms):
            found[dimension] = status
    return found.get(Dimension.REQUESTS), found.get(Dimension.TOKENS)


def _caps(scope: str, group: str, limits: Limits) -> list[tuple[CounterKey, int]]:
    caps: list[tuple[CounterKey, int]] = []
    if limits.rpm is not None:
        caps.append(((scope, group, Dimension.REQUESTS), limits.rpm))
    if limits.tpm is not None:
        caps.append(((scope, group, Dimension.TOKENS), limits.tpm))
    if limits.concurrency is not None:
        caps.append(((scope, group, Dimension.CONCURRENCY), limits.concurrency))
    return caps
