"""Rate limiting behind one interface: in one process, or shared in Redis (limiter_redis.py).

Admission calls :meth:`Limiter.admit` with the request's scopes (its key and its
organization, from :func:`openmaas.core.tiers.scopes_for`), the model, the tokens to reserve
(prompt + max output) and the time from the injected clock. It gets an :class:`Admission`
back (whose ``headers`` go on the response) or :class:`~openmaas.core.errors.RateLimited`
(HTTP 429 with ``retry-after`` and ``x-ratelimit-*``). When the request ends, exactly one of
:meth:`Limiter.settle` (the engine ran: correct to the actual tokens) or
:meth:`Limiter.release` (it never ran) frees its concurrency slots; repeating either is a
no-op.

A backend must make each call atomic across every counter it touches: two concurrent admits
never both see the same room, and a refusal by one scope leaves nothing reserved on another.
:class:`InProcessLimiter` gets that from running the pure state transition of
:class:`~openmaas.core.limits.LimitState` under a lock with no ``await`` inside; the Redis
backend (:mod:`openmaas.billing.limiter_redis`) runs the same transition as Lua scripts over
counter keys shared by every process. The composition root picks one: Redis when
``OPENMAAS_REDIS_URL`` is set, else the in-process one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from openmaas.core.limits import BUCKET_MS, WINDOW_MS, Admission, LimitState, rate_limited
from openmaas.core.tiers import Scope

__all__ = ["Admission", "InProcessLimiter", "Limiter", "LimiterHealth"]


@dataclass(frozen=True, slots=True)
class LimiterHealth:
    """What ``/readyz`` says of the limiter."""

    backend: str  # "in-process" or "redis"
    reachable: bool  # the shared counters can be reached (always, in process)
    failure_mode: str | None = None  # when they cannot: "closed" refuses, "open" admits
    detail: str | None = None  # the last error, while unreachable

    @property
    def enforcing(self) -> bool:
        """Whether limits are being enforced (not while failing open)."""
        return self.reachable

    @property
    def ready(self) -> bool:
        """Whether requests with limits can be served (failing closed refuses them)."""
        return self.reachable or self.failure_mode == "open"

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "backend": self.backend,
            "status": "ok" if self.reachable else "unreachable",
            "enforcing": self.enforcing,
        }
        if self.failure_mode is not None:
            body["failure_mode"] = self.failure_mode
        if self.detail is not None:
            body["error"] = self.detail
        return body


@runtime_checkable
class Limiter(Protocol):
    # Whether a call is a round trip to another process (Redis): a settlement's then runs
    # beside the ledger's commit instead of after it (the accountant's ``finish``).
    remote: bool

    async def admit(
        self, scopes: Sequence[Scope], model: str, reserve_tokens: int, now_ms: int
    ) -> Admission:
        """Reserve one request, its tokens and a concurrency slot in every scope, or raise
        :class:`~openmaas.core.errors.RateLimited` having reserved nothing."""
        ...

    async def settle(self, admission: Admission, actual_tokens: int, now_ms: int) -> None:
        """The request ended after the engine ran: charge ``actual_tokens`` instead of the
        reservation (refund the rest, or charge the excess) and free its slots. Idempotent."""
        ...

    async def release(self, admission: Admission) -> None:
        """The request ended before the engine ran: refund its tokens, free its slots.
        It still counts as a request. Idempotent; a no-op after :meth:`settle`."""
        ...

    async def health(self) -> LimiterHealth:
        """Whether the counters can be reached now (``/readyz``)."""
        ...

    async def aclose(self) -> None:
        """Stop background work and close connections (the composition root's exit)."""
        ...


class InProcessLimiter:
    """Limits for one gateway process (the embedded default).

    Safe for any number of coroutines on one event loop, and for threads: every call runs one
    synchronous transition of the core state under a lock. With several gateway processes,
    each would count alone (a limit of 100 would let 100 through *each*): use the Redis
    backend there.
    """

    remote = False

    def __init__(
        self,
        *,
        window_ms: int = WINDOW_MS,
        bucket_ms: int = BUCKET_MS,
        sweep_every: int = 4096,
    ) -> None:
        self._state = LimitState(window_ms=window_ms, bucket_ms=bucket_ms)
        self._lock = threading.Lock()
        self._sweep_every = sweep_every
        self._since_sweep = 0

    async def admit(
        self, scopes: Sequence[Scope], model: str, reserve_tokens: int, now_ms: int
    ) -> Admission:
        with self._lock:
            self._since_sweep += 1
            if self._since_sweep >= self._sweep_every:
                self._since_sweep = 0
                self._state.sweep(now_ms)
            decision = self._state.admit(scopes, model, reserve_tokens, now_ms)
        if decision.admission is None:
            raise rate_limited(decision)
        return decision.admission

    async def settle(self, admission: Admission, actual_tokens: int, now_ms: int) -> None:
        with self._lock:
            self._state.settle(admission.id, actual_tokens, now_ms)

    async def release(self, admission: Admission) -> None:
        with self._lock:
            self._state.release(admission.id)

    async def health(self) -> LimiterHealth:
        return LimiterHealth(backend="in-process", reachable=True)

    async def aclose(self) -> None:
        return None

    @property
    def state(self) -> LimitState:
        """The counters, for inspection (tests, metrics); mutate only through this limiter."""
        return self._state
