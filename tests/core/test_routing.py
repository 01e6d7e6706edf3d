"""Routing algorithms (core/routing.py): pure, time and randomness passed in."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmaas.core.routing import (
    Backoff,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    HashRing,
    Load,
    affinity_key,
    bounded_choice,
    least_loaded,
    load_bound,
    stable_hash,
)
from openmaas.core.types import GenerationRequest, Message, Role, RoutingHints

# --- weighted least outstanding ------------------------------------------------------------


def test_least_loaded_picks_the_lowest_load_per_weight() -> None:
    picked = least_loaded([Load("a", 3, 1), Load("b", 5, 2), Load("c", 1, 1)])
    assert picked.id == "c"  # (1+1)/1 = 2 < (5+1)/2 = 3 < (3+1)/1 = 4


def test_least_loaded_ties_go_to_the_first_or_to_the_rng() -> None:
    tied = [Load("a", 1, 1), Load("b", 1, 1), Load("c", 1, 1)]
    assert least_loaded(tied).id == "a"
    seen = {least_loaded(tied, random.Random(seed)).id for seed in range(50)}
    assert seen == {"a", "b", "c"}


def test_least_loaded_refuses_nothing_and_bad_weights() -> None:
    with pytest.raises(ValueError):
        least_loaded([])
    with pytest.raises(ValueError):
        least_loaded([Load("a", 0, 0)])


@given(
    weights=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    requests=st.integers(0, 60),
    seed=st.integers(0, 2**32),
)
def test_idle_deployments_fill_in_proportion_to_their_weights(
    weights: list[int], requests: int, seed: int
) -> None:
    """With no request ending, each deployment gets at least floor(n × w / W) of n requests
    (the greedy rule is D'Hondt's), whichever way ties are broken."""
    counts = [0] * len(weights)
    rng = random.Random(seed)
    for _ in range(requests):
        loads = [Load(str(i), counts[i], w) for i, w in enumerate(weights)]
        chosen = least_loaded(loads, rng)
        best = min((c + 1) / w for c, w in zip(counts, weights, strict=True))
        assert (counts[int(chosen.id)] + 1) / chosen.weight == pytest.approx(best)
        counts[int(chosen.id)] += 1
    total = sum(weights)
    for count, weight in zip(counts, weights, strict=True):
        assert count >= requests * weight // total


# --- consistent hashing with bounded loads -------------------------------------------------

members = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4), st.integers(1, 4), min_size=1, max_size=6
)


def test_stable_hash_is_fixed_across_processes() -> None:
    assert stable_hash("session:abc") == stable_hash("session:abc")
    assert (
        stable_hash("session:abc") == 0xEA265F8ACAC03C70
    )  # pinned: blake2b, not the salted hash()
    assert 0 <= stable_hash("anything") < 2**64


def test_ring_walk_visits_every_member_once() -> None:
    ring = HashRing({"a": 1, "b": 2, "c": 1}, vnodes=10)
    for key in range(20):
        walk = list(ring.walk(stable_hash(str(key))))
        assert sorted(walk) == ["a", "b", "c"]


def test_ring_weights_share_keys_roughly_in_proportion() -> None:
    ring = HashRing({"a": 1, "b": 3})
    owners = [ring.owner(stable_hash(f"k{i}")) for i in range(4000)]
    share_b = owners.count("b") / len(owners)
    assert 0.65 < share_b < 0.85  # 0.75 expected; 400 points make the split this close


def test_load_bound_is_the_ceiling_of_the_weighted_share() -> None:
    assert load_bound(total=0, weight=1, total_weight=2, epsilon=0.25) == 1
    assert load_bound(total=7, weight=1, total_weight=2, epsilon=0.25) == 5  # 8×1.25/2
    assert load_bound(total=9, weight=1, total_weight=1, epsilon=0.1) == 11  # exact 11, no 12


@settings(max_examples=200)
@given(
    weights=members,
    events=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), min_size=1, max_size=80),
    epsilon=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
)
def test_bounded_load_is_never_exceeded(
    weights: dict[str, int], events: list[tuple[bool, int]], epsilon: float
) -> None:
    """Whatever arrives and ends, a placement never leaves its member above
    ceil(mean-after × (1 + ε)) weighted."""
    ring = HashRing(weights, vnodes=8)
    loads = dict.fromkeys(weights, 0)
    total_weight = sum(weights.values())
    for arrives, key in events:
        if not arrives:
            busy = [m for m, n in loads.items() if n]
            if busy:
                loads[busy[key % len(busy)]] -= 1
            continue
        total = sum(loads.values())
        member, _ = bounded_choice(ring, stable_hash(str(key)), loads, epsilon)
        loads[member] += 1
        share = (total + 1) * (1 + epsilon) * weights[member] / total_weight
        assert loads[member] <= math.ceil(share - 1e-9)


@given(weights=members, key=st.text(max_size=20))
def test_affinity_sticks_while_load_allows(weights: dict[str, int], key: str) -> None:
    ring = HashRing(weights, vnodes=8)
    h = stable_hash(key)
    home = ring.owner(h)
    assert home is not None
    idle = dict.fromkeys(weights, 0)
    assert bounded_choice(ring, h, idle) == (home, False)
    # Others busy, the home one under its bound: still home.
    busy = {m: 3 for m in weights}
    busy[home] = 0
    assert bounded_choice(ring, h, busy) == (home, False)


def test_a_loaded_home_spills_to_the_next_on_the_ring() -> None:
    ring = HashRing({"a": 1, "b": 1, "c": 1}, vnodes=16)
    h = stable_hash("conversation")
    walk = list(ring.walk(h))
    loads = {walk[0]: 4, walk[1]: 0, walk[2]: 0}  # bound with 4 out: ceil(5×1.25/3) = 3
    assert bounded_choice(ring, h, loads) == (walk[1], True)


@given(weights=members, keys=st.lists(st.text(max_size=12), min_size=1, max_size=50))
def test_removing_a_deployment_moves_only_its_keys(
    weights: dict[str, int], keys: list[str]
) -> None:
    if len(weights) < 2:
        return
    removed = sorted(weights)[0]
    before = HashRing(weights, vnodes=8)
    after = HashRing({m: w for m, w in weights.items() if m != removed}, vnodes=8)
    for key in keys:
        h = stable_hash(key)
        if before.owner(h) != removed:
            assert after.owner(h) == before.owner(h)
        # Leaving it out of the eligible set (dead, circuit open) moves the same keys alike.
        eligible = {m: 0 for m in weights if m != removed}
        assert before.owner(h, eligible) == after.owner(h)


def test_bounded_choice_needs_an_eligible_member() -> None:
    ring = HashRing({"a": 1})
    with pytest.raises(ValueError):
        bounded_choice(ring, 1, {"z": 0})


# --- the affinity key ----------------------------------------------------------------------


def _chat(*turns: tuple[Role, str], session: str | None = None) -> GenerationRequest:
    messages = tuple(Message(role, text) for role, text in turns)
    return GenerationRequest(
        "r", "m", messages=messages, routing=RoutingHints(affinity_key=session)
    )


def test_a_conversations_turns_share_their_affinity_key() -> None:
    system = (Role.SYSTEM, "You are helpful.")
    first = _chat(system, (Role.USER, "What is KV caching?"))
    second = _chat(
        system,
        (Role.USER, "What is KV caching?"),
        (Role.ASSISTANT, "It keeps attention keys and values."),
        (Role.USER, "And prefix caching?"),
    )
    other = _chat(system, (Role.USER, "Translate this poem."))
    assert affinity_key(first) == affinity_key(second)
    assert affinity_key(first) != affinity_key(other)  # same system prompt, other conversation


def test_a_session_id_wins_over_the_prompt() -> None:
    a = _chat((Role.USER, "one"), session="s1")
    b = _chat((Role.USER, "two"), session="s1")
    assert affinity_key(a) == affinity_key(b) == "session:s1"


def test_the_affinity_key_is_capped() -> None:
    long = _chat((Role.SYSTEM, "x" * 10_000), (Role.USER, "q"))
    assert len(affinity_key(long, prefix_chars=100)) == len("prefix:") + 100
    plain = GenerationRequest("r", "m", prompt="y" * 5000)
    assert affinity_key(plain, prefix_chars=64) == "prefix:" + "y" * 64


# --- the circuit breaker -------------------------------------------------------------------


def test_consecutive_failures_open_then_cool_down_to_one_probe() -> None:
    b = CircuitBreaker(BreakerConfig(failures=3, failure_rate=None, cooldown_s=10))
    for _ in range(2):
        b.record_failure(now=0)
    assert b.state(0) is BreakerState.CLOSED
    b.record_failure(now=1)
    assert b.state(1) is BreakerState.OPEN and not b.allows(10.9)
    assert b.allows(11) and b.state(11) is BreakerState.HALF_OPEN
    assert b.begin(11) is True  # the probe
    assert not b.allows(11)  # only one
    b.record_success(12)
    assert b.state(12) is BreakerState.CLOSED and b.allows(12)


def test_a_failed_probe_reopens_and_an_abandoned_one_frees_the_slot() -> None:
    b = CircuitBreaker(BreakerConfig(failures=1, failure_rate=None, cooldown_s=5))
    b.record_failure(0)
    assert b.begin(5)
    b.abandon()
    assert b.allows(5)
    b.begin(5)
    b.record_failure(6)
    assert b.state(6) is BreakerState.OPEN and not b.allows(10.9) and b.allows(11)


def test_a_success_resets_the_streak() -> None:
    b = CircuitBreaker(BreakerConfig(failures=2, failure_rate=None))
    for _ in range(5):
        b.record_failure(0)
        b.record_success(0)
    assert b.state(0) is BreakerState.CLOSED


def test_a_failure_rate_opens_the_circuit() -> None:
    b = CircuitBreaker(BreakerConfig(failures=100, failure_rate=0.5, window=10, min_calls=10))
    for i in range(9):
        (b.record_failure if i % 2 else b.record_success)(0)
    assert b.state(0) is BreakerState.CLOSED  # 9 calls: under min_calls
    b.record_failure(0)  # 5 of 10
    assert b.state(0) is BreakerState.OPEN


def test_outcomes_while_open_are_ignored() -> None:
    b = CircuitBreaker(BreakerConfig(failures=1, cooldown_s=10))
    b.record_failure(0)
    b.record_success(1)  # a request started before it opened
    assert b.state(1) is BreakerState.OPEN


class BreakerModel:
    """A reference model of the breaker, written from its documented rules."""

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures, self.cooldown = failures, cooldown
        self.state, self.streak, self.opened, self.probing = "closed", 0, 0.0, False

    def tick(self, now: float) -> None:
        if self.state == "open" and now >= self.opened + self.cooldown:
            self.state, self.probing = "half_open", False

    def allows(self, now: float) -> bool:
        self.tick(now)
        return self.state == "closed" or (self.state == "half_open" and not self.probing)

    def outcome(self, now: float, failed: bool) -> None:
        self.tick(now)
        if self.state == "half_open":
            if failed:
                self.state, self.opened, self.probing = "open", now, False
            else:
                self.state, self.streak, self.probing = "closed", 0, False
        elif self.state == "closed":
            self.streak = self.streak + 1 if failed else 0
            if self.streak >= self.failures:
                self.state, self.opened = "open", now


@settings(max_examples=300)
@given(
    failures=st.integers(1, 4),
    cooldown=st.sampled_from([0.0, 1.0, 5.0]),
    steps=st.lists(
        st.tuples(st.sampled_from(["ok", "fail", "go", "abandon"]), st.floats(0, 3)),
        max_size=60,
    ),
)
def test_breaker_transitions_follow_the_rules(
    failures: int, cooldown: float, steps: list[tuple[str, float]]
) -> None:
    breaker = CircuitBreaker(
        BreakerConfig(failures=failures, failure_rate=None, cooldown_s=cooldown)
    )
    model = BreakerModel(failures, cooldown)
    now = 0.0
    probes_out = 0
    for action, advance in steps:
        now += advance
        assert breaker.allows(now) == model.allows(now)  # allows() ticks the model
        assert breaker.state(now).value == model.state
        if action == "go" and breaker.allows(now):
            probe = breaker.begin(now)
            model.probing = model.probing or probe
            probes_out += probe
            assert not (probe and breaker.allows(now))  # one probe at a time
        elif action == "abandon" and model.probing:
            breaker.abandon()
            model.probing = False
        elif action in ("ok", "fail"):
            breaker.record_failure(now) if action == "fail" else breaker.record_success(now)
            model.outcome(now, action == "fail")
        model.tick(now)
        if breaker.state(now) is BreakerState.OPEN:
            assert not breaker.allows(now)
        assert breaker.state(now).value == model.state


# --- backoff -------------------------------------------------------------------------------


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(base_s=0.1, multiplier=2, cap_s=1.0)
    assert [b.ceiling(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.ceiling(10_000) == 1.0  # no overflow


@given(attempt=st.integers(1, 1000), seed=st.integers(0, 2**32))
def test_backoff_jitter_stays_between_half_and_the_ceiling(attempt: int, seed: int) -> None:
    b = Backoff(base_s=0.05, multiplier=3, cap_s=2.0)
    delay = b.delay(attempt, random.Random(seed))
    assert b.ceiling(attempt) / 2 <= delay <= b.ceiling(attempt) <= 2.0


def test_backoff_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)
