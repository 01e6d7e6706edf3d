"""Routing algorithms, sans I/O, with time and randomness passed in (``docs/routing.md``).

- :func:`least_loaded`: weighted least outstanding requests.
- :class:`HashRing` and :func:`bounded_choice`: consistent hashing with bounded loads
  (CHWBL): a key keeps its deployment while that deployment's load stays within
  ``(1 + epsilon)`` times its weighted share, and spills along the ring otherwise.
- :func:`affinity_key`: what a request is hashed on (a session id, else the conversation's
  opening).
- :class:`CircuitBreaker`: closed → open → half-open → closed, per deployment.
- :class:`Backoff`: capped exponential delays with jitter between failover attempts.

Nothing here sleeps, reads a clock or draws from a global random generator: the caller
passes ``now`` (monotonic seconds) and a ``random.Random``.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from openmaas.core.types import GenerationRequest, Role

# --- weighted least outstanding ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """One candidate as the selection sees it: its id, requests outstanding, weight (≥ 1)."""

    id: str
    outstanding: int
    weight: int = 1


def least_loaded(candidates: Sequence[Load], rng: random.Random | None = None) -> Load:
    """The candidate with the lowest ``(outstanding + 1) / weight``: the load it would have
    after taking this request, relative to its weight, so idle deployments fill in
    proportion to their weights too (weights 2:1 → 2 of the first 3 requests to the first).

    Ties go to the first in ``candidates`` order, or to a uniformly random one among them
    when ``rng`` is given. Scores compare exactly (cross-multiplied integers).
    """
    if not candidates:
        raise ValueError("no candidates")
    best: list[Load] = []
    for c in candidates:
        if c.weight < 1:
            raise ValueError(f"weight of {c.id!r} must be at least 1")
        if not best:
            best = [c]
            continue
        lhs = (c.outstanding + 1) * best[0].weight
        rhs = (best[0].outstanding + 1) * c.weight
        if lhs < rhs:
            best = [c]
        elif lhs == rhs:
            best.append(c)
    if rng is None or len(best) == 1:
        return best[0]
    return best[rng.randrange(len(best))]


# --- consistent hashing with bounded loads ------------------------------------------------

DEFAULT_EPSILON = 0.25
DEFAULT_VNODES = 100  # ring points per unit of weight


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and on every run (unlike ``hash()``,
    which is salted per process): gateways sharing a fleet route a key alike."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring: ``vnodes × weight`` points per member."""

    __slots__ = ("weights", "_points", "_owners")

    def __init__(self, weights: Mapping[str, int], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        points: list[tuple[int, str]] = []
        for member, weight in weights.items():
            if weight < 1:
                raise ValueError(f"weight of {member!r} must be at least 1")
            points += [(stable_hash(f"{member}#{i}"), member) for i in range(vnodes * weight)]
        points.sort()
        self.weights = dict(weights)
        self._points = [p for p, _ in points]
        self._owners = [m for _, m in points]

    def walk(self, key_hash: int) -> Iterator[str]:
        """Every member once, in ring order from the first point at or after ``key_hash``."""
        n = len(self._points)
        start = bisect.bisect_left(self._points, key_hash)
        seen: set[str] = set()
        for i in range(n):
            member = self._owners[(start + i) % n]
            if member not in seen:
                seen.add(member)
                yield member
                if len(seen) == len(self.weights):
                    return

    def owner(self, key_hash: int, eligible: Mapping[str, object] | None = None) -> str | None:
        """The first member on the walk (that is in ``eligible``, when given)."""
        for member in self.walk(key_hash):
            if eligible is None or member in eligible:
                return member
        return None


def _exact(epsilon: float) -> Fraction:
    if epsilon < 0:
        raise ValueError("epsilon must not be negative")
    return Fraction(epsilon).limit_denominator(1_000_000)


def load_bound(total: int, weight: int, total_weight: int, epsilon: float) -> int:
    """The most requests a member may hold *after* taking one more, when ``total`` are
    outstanding across the eligible members: ``ceil((total + 1) × (1 + ε) × w / W)``."""
    share = Fraction(total + 1) * (1 + _exact(epsilon)) * weight / total_weight
    return math.ceil(share)


def bounded_choice(
    ring: HashRing,
    key_hash: int,
    loads: Mapping[str, int],
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[str, bool]:
    """CHWBL: walk the ring from ``key_hash`` to the first member of ``loads`` (the eligible
    ones, with their outstanding requests) that stays within :func:`load_bound` after
    taking the request. Returns ``(member, spilled)``; ``spilled`` is true when the key's
    first eligible member was passed over for load.

    Such a member always exists: the bounds sum to at least ``(total + 1) × (1 + ε)``, more
    than the ``total`` requests held, so some member holds fewer than its bound.
    """
    eligible = {m: n for m, n in loads.items() if m in ring.weights}
    if not eligible:
        raise ValueError("no eligible member is on the ring")
    total = sum(eligible.values())
    total_weight = sum(ring.weights[m] for m in eligible)
    first = True
    for member in ring.walk(key_hash):
        if member not in eligible:
            continue
        bound = load_bound(total, ring.weights[member], total_weight, epsilon)
        if eligible[member] + 1 <= bound:
            return member, not first
        first = False
    raise AssertionError("unreachable: some member is always under its bound")


# --- the affinity key ---------------------------------------------------------------------

DEFAULT_AFFINITY_CHARS = 2048  # about 512 tokens: 32 blocks of vLLM's default 16 tokens


def affinity_key(request: GenerationRequest, prefix_chars: int = DEFAULT_AFFINITY_CHARS) -> str:
    """What CHWBL hashes for ``request``.

    A session id (``request.routing.affinity_key``) when the client sent one. Otherwise the
    conversation's *opening*: the messages up to and including the first user message,
    rendered as role and content, cut to ``prefix_chars`` characters (a plain completion:
    its prompt's first ``prefix_chars``). Every later turn of a conversation starts with
    the same opening, so all its turns map to the replica that already holds their prefix
    in its KV cache; two conversations that share only a system prompt differ in their
    first question and spread. Hashing only the system prompt would send every
    conversation of an application to one replica (then spill at random); hashing the
    whole prompt, or all but the last turn, changes at every turn.
    """
    if request.routing.affinity_key:
        return "session:" + request.routing.affinity_key
    if request.messages is None:
        return "prefix:" + (request.prompt or "")[:prefix_chars]
    parts: list[str] = []
    size = 0
    for message in request.messages:
        piece = f"<|{message.role.value}|>{message.content}\n"
        parts.append(piece)
        size += len(piece)
        if message.role is Role.USER or size >= prefix_chars:
            break
    return "prefix:" + "".join(parts)[:prefix_chars]


# --- the circuit breaker ------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"  # requests flow; failures are counted
    OPEN = "open"  # no requests until the cool-down has passed
    HALF_OPEN = "half_open"  # one probe may go; its outcome closes or re-opens the circuit


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """``failures`` consecutive failures open the circuit; so does a failure rate of at least
    ``failure_rate`` over the last ``window`` outcomes once ``min_calls`` are in it (None:
    off). It stays open ``cooldown_s`` seconds."""

    failures: int = 5
    failure_rate: float | None = 0.5
    window: int = 20
    min_calls: int = 10
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window < 1 or self.min_calls < 1 or self.cooldown_s < 0:
            raise ValueError("invalid circuit breaker settings")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")


class CircuitBreaker:
    """One deployment's circuit, driven by outcomes and ``now`` (monotonic seconds).

    - CLOSED: every request may go. ``failures`` consecutive failures, or the failure-rate
      rule, open it.
    - OPEN: nothing may go until ``cooldown_s`` after it opened; then it is HALF_OPEN.
      Outcomes of requests started before it opened are ignored.
    - HALF_OPEN: one probe may go (:meth:`begin` takes the slot, :meth:`abandon` gives it
      back when the probe ends without an outcome). A success closes the circuit and
      clears its counts; a failure opens it for another cool-down.
    """

    __slots__ = ("config", "_state", "_opened_at", "_streak", "_outcomes", "_probing")

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._streak = 0  # consecutive failures
        self._outcomes: deque[bool] = deque(maxlen=self.config.window)  # True: failure
        self._probing = False

    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self.reopens_at:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    @property
    def reopens_at(self) -> float:
        """When an open circuit turns half-open."""
        return self._opened_at + self.config.cooldown_s

    def allows(self, now: float) -> bool:
        """Whether a request may go now (a half-open circuit: only if no probe is out)."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probing

    def begin(self, now: float) -> bool:
        """A request goes now (call only when :meth:`allows`); True if it is the probe."""
        if self.state(now) is BreakerState.HALF_OPEN:
            if self._probing:
                raise RuntimeError("the half-open circuit's probe is already out")
            self._probing = True
            return True
        return False

    def abandon(self) -> None:
        """The probe ended with no outcome (cancelled): another may go."""
        self._probing = False

    def record_success(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._close()
        elif state is BreakerState.CLOSED:
            self._streak = 0
            self._outcomes.append(False)

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._open(now)
        elif state is BreakerState.CLOSED:
            self._streak += 1
            self._outcomes.append(True)
            if self._streak >= self.config.failures or self._rate_exceeded():
                self._open(now)

    def _rate_exceeded(self) -> bool:
        rate = self.config.failure_rate
        calls = len(self._outcomes)
        if rate is None or calls < self.config.min_calls:
            return False
        return sum(self._outcomes) >= rate * calls

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probing = False

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._streak = 0
        self._outcomes.clear()
        self._probing = False


# --- retry backoff ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait before failover attempt ``n`` (n = 1 before the second try):
    ``d = min(cap_s, base_s × multiplier^(n-1))``, drawn uniformly from ``[d/2, d]``
    ("equal jitter": retries of many requests spread out, yet each waits at least half)."""

    base_s: float = 0.02
    multiplier: float = 2.0
    cap_s: float = 0.5

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or self.multiplier < 1:
            raise ValueError("invalid backoff settings")

    def ceiling(self, attempt: int) -> float:
        if attempt < 1:
            return 0.0
        # min() before the power would overflow: exponent grows only until the cap is hit.
        delay = self.base_s
        for _ in range(attempt - 1):
            if delay >= self.cap_s:
                break
            delay *= self.multiplier
        return min(self.cap_s, delay)

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + rng.random() * ceiling / 2
