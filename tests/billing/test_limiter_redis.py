"""The Redis limiter (billing/limiter_redis.py) on a throwaway redis-server: exact across
limiters sharing one Redis (as gateway processes do), equal to LimitState's decisions, slots
of a dead process reclaimed, keys expiring, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import copy
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from openmaas.billing.limiter_redis import RedisLimiter
from openmaas.billing.resp import Script
from openmaas.core.errors import RateLimited, UpstreamUnavailable
from openmaas.core.limits import Admission, Dimension, LimitState, rate_limited
from openmaas.core.tiers import Limits, Scope, Tier, scopes_for
from tests.billing.test_limiter_backends import Clock, burst
from tests.support.redis import RedisServer

T = TypeVar("T")
SIXTY_RPM = scopes_for(org_id="o", org_tier=Tier("sixty", Limits(rpm=60)), key_id="k")


@pytest.fixture
async def limiters(
    redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Callable[..., RedisLimiter]]:
    """``limiters(**options)``: a new RedisLimiter on the test's counters (like another
    gateway process on the same Redis)."""
    made: list[RedisLimiter] = []

    def make(**options: Any) -> RedisLimiter:
        made.append(RedisLimiter(redis_server.url, prefix=redis_prefix, **options))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.aclose()


def _burst_in_a_thread(
    url: str, prefix: str, n: int, scope_list: list[Scope], now_ms: int, start: threading.Barrier
) -> list[Admission]:
    """One "process": its own limiter, event loop and connections, bursting at once."""

    async def run() -> list[Admission]:
        limiter = RedisLimiter(url, prefix=prefix)
        try:
            await limiter.health()  # connected before the start line
            start.wait()
            admitted, _ = await burst(limiter, n, scope_list, 1, now_ms)
            return admitted
        finally:
            await limiter.aclose()

    return asyncio.run(run())


def _two_processes(
    url: str, prefix: str, scope_list: list[Scope], per_process: int, now_ms: int
) -> list[Admission]:
    start = threading.Barrier(2)
    results: list[list[Admission] | BaseException] = [[], []]

    def one(i: int) -> None:
        try:
            results[i] = _burst_in_a_thread(url, prefix, per_process, scope_list, now_ms, start)
        except BaseException as exc:  # raised below: a failed process must not count as 0
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted: list[Admission] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        admitted += result
    return admitted


def test_two_limiters_on_one_redis_let_exactly_60_of_200_through_a_60_rpm_tier(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    admitted = _two_processes(redis_server.url, redis_prefix, SIXTY_RPM, 100, Clock().now_ms())
    assert len(admitted) == 60
    assert len({a.id for a in admitted}) == 60


def test_two_limiters_on_one_redis_hold_a_concurrency_cap_exactly(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    org = Tier("org", Limits(concurrency=10))
    scope_list = scopes_for(org_id="o", org_tier=org, key_id="k")
    admitted = _two_processes(redis_server.url, redis_prefix, scope_list, 100, Clock().now_ms())
    assert len(admitted) == 10


async def test_a_slot_freed_by_one_process_is_taken_by_another(
    limiters: Callable[..., RedisLimiter],
) -> None:
    one, two, clock = limiters(), limiters(), Clock()
    scope_list = scopes_for(org_id="o", org_tier=Tier("t", Limits(concurrency=1)), key_id="k")
    held = await one.admit(scope_list, "m", 0, clock.now_ms())
    with pytest.raises(RateLimited) as info:
        await two.admit(scope_list, "m", 0, clock.now_ms())
    assert info.value.limit == "concurrency"
    await two.settle(held, 0, clock.now_ms())  # any process may end it, once
    await one.settle(held, 0, clock.now_ms())
    await two.admit(scope_list, "m", 0, clock.now_ms())
    with pytest.raises(RateLimited):
        await one.admit(scope_list, "m", 0, clock.now_ms())


async def test_the_slots_of_a_dead_process_come_back_when_their_lease_ends(
    limiters: Callable[..., RedisLimiter],
) -> None:
    clock = Clock()
    dead, alive = limiters(clock=clock, lease_ms=30_000), limiters(clock=clock, lease_ms=30_000)
    scope_list = scopes_for(org_id="o", org_tier=Tier("t", Limits(concurrency=2)), key_id="k")
    await dead.admit(scope_list, "m", 0, clock.now_ms())  # never settled: the process dies
    running = await alive.admit(scope_list, "m", 0, clock.now_ms())
    clock.ms += 20_000
    assert await alive.renew() == 2  # its request runs on: its lease is renewed
    clock.ms += 10_000  # the dead process's lease ends now
    other = await alive.admit(scope_list, "m", 0, clock.now_ms())
    assert await alive.used("key:k", "*", Dimension.CONCURRENCY, clock.now_ms()) == 2
    with pytest.raises(RateLimited):  # the renewed slot is still held
        await alive.admit(scope_list, "m", 0, clock.now_ms())
    await alive.settle(running, 0, clock.now_ms())
    await alive.settle(other, 0, clock.now_ms())
    assert await alive.used("key:k", "*", Dimension.CONCURRENCY, clock.now_ms()) == 0


async def test_every_key_expires_so_memory_stays_bounded(
    limiters: Callable[..., RedisLimiter], redis_server: RedisServer, redis_prefix: str
) -> None:
    limiter, clock = limiters(), Clock()
    tier = Tier("t", Limits(rpm=10, tpm=1_000, concurrency=3), models={"m": Limits(rpm=5)})
    scope_list = scopes_for(org_id="o", org_tier=tier, key_id="k")
    done = await limiter.admit(scope_list, "m", 100, clock.now_ms())
    await limiter.settle(done, 40, clock.now_ms())
    await limiter.admit(scope_list, "m", 100, clock.now_ms())  # still open
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=f"{redis_prefix}*")]
        assert len(keys) >= 8  # 2 scopes x (rpm, tpm, slots) + per-model rpm x 2 + ...
        ttls = {k: await client.pttl(k) for k in keys}
    finally:
        await client.aclose()
    assert [k for k, ttl in ttls.items() if ttl < 0] == [f"{redis_prefix}clock"]
    windows = [
        ttl
        for k, ttl in ttls.items()
        if k.startswith((f"{redis_prefix}v2:r:", f"{redis_prefix}v2:t:"))
    ]
    assert len(windows) == 6  # RPM and TPM of both scopes, per-model RPM of both
    assert all(0 < ttl <= 62_000 for ttl in windows)


class LostReplies(RedisLimiter):
    """A limiter whose every script call loses its first reply and runs again, as a call
    whose connection broke after Redis ran it is retried on a fresh one."""

    async def _call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        await script(keys=keys, args=args)
        return await script(keys=keys, args=args)


async def test_a_retried_script_changes_nothing_twice(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Admissions, settlements under and over the reservation and releases, each script run
    twice: the same headers and counts as running each once."""
    clock = Clock()
    tier = Tier("t", Limits(rpm=50, tpm=5_000, concurrency=3))
    scope_list = scopes_for(org_id="o", org_tier=tier, key_id="k", key_tier=tier)
    once = RedisLimiter(redis_server.url, prefix=f"{redis_prefix}once:")
    twice = LostReplies(redis_server.url, prefix=f"{redis_prefix}twice:")
    try:
        for step in range(12):
            now = clock.now_ms() + step * 700
            a = await once.admit(scope_list, "m", 300, now)
            b = await twice.admit(scope_list, "m", 300, now)
            assert a.headers == b.headers
            if step % 3 == 0:
                await once.release(a)
                await twice.release(b)
            else:
                actual = 100 if step % 3 == 1 else 450
                await once.settle(a, actual, now + 300)
                await twice.settle(b, actual, now + 300)
            for scope in ("key:k", "org:o"):
                for dimension in Dimension:
                    assert await once.used(scope, "*", dimension, now + 300) == (
                        await twice.used(scope, "*", dimension, now + 300)
                    ), (step, scope, dimension)
        assert await twice.used("org:o", "*", Dimension.REQUESTS, clock.now_ms() + 9_000) == 12
    finally:
        await once.aclose()
        await twice.aclose()


async def test_counters_of_an_older_version_in_redis_are_not_read(
    limiters: Callable[..., RedisLimiter], redis_server: RedisServer, redis_prefix: str
) -> None:
    """After an upgrade, what an older version left in Redis (a window as a bare hash of
    buckets, under keys without a version) neither counts nor breaks a script."""
    clock = Clock()
    bucket = clock.now_ms() // 1_000
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.hset(f"{redis_prefix}r:5:key:k:*", str(bucket), "60")
        await client.hset(f"{redis_prefix}t:5:key:k:*", str(bucket), "1000")
    finally:
        await client.aclose()
    limiter = limiters()
    scope_list = scopes_for(org_id="o", org_tier=Tier("t", Limits(rpm=60, tpm=1_000)), key_id="k")
    admitted = await limiter.admit(scope_list, "m", 1_000, clock.now_ms())
    assert admitted.headers["x-ratelimit-remaining-requests"] == "59"


async def test_a_burst_shares_one_connection_instead_of_opening_one_each(
    private_redis: RedisServer, redis_prefix: str
) -> None:
    """300 admissions at once go over one connection, pipelined (a connect storm on a busy
    machine timed out and failed a burst closed in CI), and every one is decided."""
    limiter = RedisLimiter(private_redis.url, prefix=redis_prefix)
    wide = scopes_for(org_id="o", org_tier=Tier("wide", Limits(rpm=250)), key_id="k")
    probe = aioredis.Redis.from_url(private_redis.url)
    try:
        admitted, refused = await burst(limiter, 300, wide, 1, Clock().now_ms())
        clients = (await probe.info("clients"))["connected_clients"]
    finally:
        await probe.aclose()
        await limiter.aclose()
    assert (len(admitted), len(refused)) == (250, 50)
    assert clients == 2  # the limiter's one, and this probe


async def test_redis_stopped_fails_closed_then_recovers_by_itself(
    private_redis: RedisServer, redis_prefix: str
) -> None:
    clock = Clock()
    limiter = RedisLimiter(private_redis.url, prefix=redis_prefix, clock=clock)
    try:
        admitted = await limiter.admit(SIXTY_RPM, "m", 0, clock.now_ms())
        private_redis.stop()
        with pytest.raises(UpstreamUnavailable) as info:
            await limiter.admit(SIXTY_RPM, "m", 0, clock.now_ms())
        assert "OPENMAAS_REDIS_FAILURE_MODE=closed" in info.value.message
        await limiter.settle(admitted, 0, clock.now_ms())  # never raises
        health = await limiter.health()
        assert (health.reachable, health.ready, health.enforcing) == (False, False, False)
        assert health.as_json()["status"] == "unreachable"
        # Requests without limits need no Redis.
        free = scopes_for(org_id="o", org_tier=Tier("free"), key_id="k")
        await limiter.admit(free, "m", 0, clock.now_ms())

        private_redis.start()  # same port, empty
        with pytest.raises(UpstreamUnavailable):  # within the second after the failure
            await limiter.admit(SIXTY_RPM, "m", 0, clock.now_ms())
        clock.ms += 1_000  # a second on: it tries Redis again, no restart, no health check
        again = await limiter.admit(SIXTY_RPM, "m", 0, clock.now_ms())
        assert again.headers["x-ratelimit-remaining-requests"] == "59"
        assert (await limiter.health()).ready
    finally:
        await limiter.aclose()


async def test_a_quick_redis_restart_costs_no_request(
    private_redis: RedisServer, redis_prefix: str
) -> None:
    """Connections a restarted Redis closed while idle are replaced, not failed on."""
    clock = Clock()
    limiter = RedisLimiter(private_redis.url, prefix=redis_prefix, clock=clock)
    try:
        admitted, _ = await burst(limiter, 20, SIXTY_RPM, 0, clock.now_ms())  # 20 connections
        assert len(admitted) == 20
        private_redis.stop()
        private_redis.start()  # unseen by the limiter: no call failed meanwhile
        again, refused = await burst(limiter, 20, SIXTY_RPM, 0, clock.now_ms())
        assert (len(again), refused) == (20, [])
        assert again[-1].headers["x-ratelimit-remaining-requests"] in {
            str(n) for n in range(40, 60)
        }
        assert (await limiter.health()).enforcing
    finally:
        await limiter.aclose()


async def test_redis_stopped_fails_open_when_so_set(
    private_redis: RedisServer, redis_prefix: str
) -> None:
    clock = Clock()
    limiter = RedisLimiter(private_redis.url, prefix=redis_prefix, clock=clock, failure_mode="open")
    one = scopes_for(org_id="o", org_tier=Tier("one", Limits(rpm=1)), key_id="k")
    try:
        await limiter.admit(one, "m", 0, clock.now_ms())
        private_redis.stop()
        for _ in range(3):  # over the limit, but nothing can count: admitted, unlimited
            unlimited = await limiter.admit(one, "m", 0, clock.now_ms())
            assert unlimited.headers == {}
            await limiter.settle(unlimited, 5, clock.now_ms())
        health = await limiter.health()
        assert (health.reachable, health.ready, health.enforcing) == (False, True, False)
        private_redis.start()
        assert (await limiter.health()).enforcing  # a successful check ends the outage
        await limiter.admit(one, "m", 0, clock.now_ms())  # counts again (Redis came back empty)
        with pytest.raises(RateLimited):
            await limiter.admit(one, "m", 0, clock.now_ms())
    finally:
        await limiter.aclose()


# -- the Redis limiter decides as LimitState does -------------------------------------

ORG = Tier("org", Limits(rpm=6, tpm=400, concurrency=3), models={"glm-4": Limits(rpm=3)})
KEY_TIERS = {
    "a": Tier("a", Limits(tpm=150, concurrency=2)),
    "b": None,
}
SCOPES = {
    key: scopes_for(org_id="o", org_tier=ORG, key_id=key, key_tier=tier)
    for key, tier in KEY_TIERS.items()
}
COUNTERS = [
    (scope, model, dimension)
    for scope in ("key:a", "key:b", "org:o")
    for model, dimensions in (("*", tuple(Dimension)), ("glm-4", (Dimension.REQUESTS,)))
    for dimension in dimensions
]


def test_the_redis_limiter_decides_as_limit_state_does(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Random admissions, settlements, releases (again, too) and time steps (back, too;
    bucket by bucket, and idle gaps longer than the window), by two processes on one Redis,
    one of which loses every reply and runs each script again: the same decisions, errors,
    headers and counters as the in-process state."""

    class SameDecisions(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.now = 1_700_000_000_000
            self.model = LimitState()
            prefix = f"{redis_prefix}{uuid.uuid4().hex}:"
            self.processes = [
                RedisLimiter(redis_server.url, prefix=prefix, lease_ms=10**12),
                LostReplies(redis_server.url, prefix=prefix, lease_ms=10**12),
            ]
            self.redis = self.processes[0]
            self.admissions: list[tuple[Admission, str]] = []  # (Redis's, LimitState's id)

        def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(coroutine)

        @rule(
            key=st.sampled_from(sorted(SCOPES)),
            model=st.sampled_from(["glm-4", "other"]),
            tokens=st.integers(0, 200),
            process=st.integers(0, 1),
        )
        def admit(self, key: str, model: str, tokens: int, process: int) -> None:
            decision = self.model.admit(SCOPES[key], model, tokens, self.now)
            limiter = self.processes[process]
            try:
                got = self.run(limiter.admit(SCOPES[key], model, tokens, self.now))
            except RateLimited as refused:
                assert decision.admission is None
                expected = rate_limited(decision)
                assert (refused.message, refused.limit, refused.scope) == (
                    expected.message,
                    expected.limit,
                    expected.scope,
                )
                assert refused.headers == expected.headers
                assert refused.retry_after_seconds == expected.retry_after_seconds
                return
            assert decision.admission is not None, "Redis admitted what LimitState refused"
            assert got.headers == decision.admission.headers
            assert got.admitted_ms == decision.admission.admitted_ms
            assert got.token_counters == decision.admission.token_counters
            assert got.concurrency_counters == decision.admission.concurrency_counters
            self.admissions.append((got, decision.admission.id))

        @rule(data=st.data(), actual=st.integers(0, 300), process=st.integers(0, 1))
        def settle(self, data: st.DataObject, actual: int, process: int) -> None:
            if not self.admissions:
                return
            got, model_id = data.draw(st.sampled_from(self.admissions))
            self.model.settle(model_id, actual, self.now)
            self.run(self.processes[process].settle(got, actual, self.now))

        @rule(data=st.data(), process=st.integers(0, 1))
        def release(self, data: st.DataObject, process: int) -> None:
            if not self.admissions:
                return
            got, model_id = data.draw(st.sampled_from(self.admissions))
            self.model.release(model_id)
            self.run(self.processes[process].release(got))

        @rule(
            ms=st.one_of(
                st.integers(-2_000, 5_000),
                st.sampled_from([1_000, 1_000, 999, 1]),
                st.integers(0, 70_000),
                st.integers(60_000, 400_000),
            )
        )
        def time_passes(self, ms: int) -> None:
            self.now += ms

        @invariant()
        def same_counters(self) -> None:
            # LimitState.used takes its time as the latest seen (when the counter exists):
            # read a copy, so that looking changes neither side.
            model = copy.deepcopy(self.model)
            for scope, model_name, dimension in COUNTERS:
                expected = model.used(scope, model_name, dimension, self.now)
                got = self.run(self.redis.used(scope, model_name, dimension, self.now))
                assert got == expected, (scope, model_name, dimension)

        def teardown(self) -> None:
            for limiter in self.processes:
                self.run(limiter.aclose())
            self.loop.close()

    run_state_machine_as_test(
        SameDecisions,
        settings=settings(max_examples=30, stateful_step_count=30, deadline=None),
    )
