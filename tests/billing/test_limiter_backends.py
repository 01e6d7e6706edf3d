"""The scenarios of the in-process limiter, run against both backends: the in-process one and
the Redis one (billing/limiter_redis.py) on a throwaway redis-server. Same decisions, same
errors, same headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from openmaas.billing.limiter import InProcessLimiter, Limiter
from openmaas.billing.limiter_redis import RedisLimiter
from openmaas.core.errors import RateLimited
from openmaas.core.limits import Admission, Dimension
from openmaas.core.tiers import Limits, Scope, Tier, scopes_for

START_MS = 1_700_000_000_000


class Clock:
    """Wall time that moves only when the test moves it."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000


MakeLimiter = Callable[[], Limiter]


@pytest.fixture(params=["in-process", "redis"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    """``make_limiter()``: a new limiter of the backend under test. Redis limiters made by
    one test share its counters (as processes sharing one Redis do); each test has its own."""
    made: list[Limiter] = []
    if request.param == "in-process":

        def make() -> Limiter:
            made.append(InProcessLimiter())
            return made[-1]

    else:
        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")

        def make() -> Limiter:
            made.append(RedisLimiter(server.url, prefix=prefix))
            return made[-1]

    yield make
    for limiter in made:
        await limiter.aclose()


async def used(limiter: Limiter, scope: str, dimension: Dimension, now_ms: int) -> int:
    if isinstance(limiter, InProcessLimiter):
        return limiter.state.used(scope, "*", dimension, now_ms)
    assert isinstance(limiter, RedisLimiter)
    return await limiter.used(scope, "*", dimension, now_ms)


def scopes(limits: Limits, org: Limits | None = None) -> list[Scope]:
    return scopes_for(
        org_id="o",
        org_tier=Tier("org", org or Limits()),
        key_id="k",
        key_tier=Tier("key", limits),
    )


async def burst(
    limiter: Limiter, n: int, scope_list: list[Scope], tokens: int, now_ms: int
) -> tuple[list[Admission], list[RateLimited]]:
    start = asyncio.Event()

    async def one() -> Admission | RateLimited:
        await start.wait()  # everyone is already waiting: they really arrive together
        try:
            return await limiter.admit(scope_list, "glm-4", tokens, now_ms)
        except RateLimited as exc:
            return exc

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0)  # one turn of the loop: every task waits on start
    start.set()
    results = await asyncio.gather(*tasks)
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    return admitted, refused


async def test_both_backends_implement_the_protocol(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    assert isinstance(limiter, Limiter)
    health = await limiter.health()
    assert health.reachable and health.ready and health.enforcing


async def test_100_simultaneous_admits_of_10_tokens_against_100_tpm_admit_exactly_10(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    admitted, refused = await burst(limiter, 100, scopes(Limits(tpm=100)), 10, clock.now_ms())
    assert len(admitted) == 10 and len(refused) == 90
    assert {e.limit for e in refused} == {"tokens"}
    assert all(e.headers["x-ratelimit-remaining-tokens"] == "0" for e in refused)
    assert all(int(e.headers["retry-after"]) >= 1 for e in refused)
    assert await used(limiter, "key:k", Dimension.TOKENS, clock.now_ms()) == 100


async def test_100_simultaneous_admits_against_a_concurrency_cap_of_10(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(concurrency=10))
    admitted, refused = await burst(limiter, 100, scope_list, 0, clock.now_ms())
    assert len(admitted) == 10 and len(refused) == 90
    assert {e.limit for e in refused} == {"concurrency"}
    # Freeing three slots admits exactly three more of the next burst.
    for admission in admitted[:3]:
        await limiter.settle(admission, 0, clock.now_ms())
    again, _ = await burst(limiter, 50, scope_list, 0, clock.now_ms())
    assert len(again) == 3


async def test_100_simultaneous_admits_against_60_rpm_admit_exactly_60(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    admitted, _ = await burst(limiter, 100, scopes(Limits(rpm=60)), 1, clock.now_ms())
    assert len(admitted) == 60


async def test_burst_shared_by_two_keys_is_capped_by_the_org_and_leaves_no_stray_reservations(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    org = Tier("org", Limits(tpm=100, concurrency=7))
    a = scopes_for(org_id="o", org_tier=org, key_id="a")
    b = scopes_for(org_id="o", org_tier=org, key_id="b")
    (got_a, _), (got_b, _) = await asyncio.gather(
        burst(limiter, 50, a, 10, clock.now_ms()), burst(limiter, 50, b, 10, clock.now_ms())
    )
    assert len(got_a) + len(got_b) == 7  # concurrency is the tighter cap
    now = clock.now_ms()
    assert await used(limiter, "key:a", Dimension.TOKENS, now) == 10 * len(got_a)
    assert await used(limiter, "key:b", Dimension.TOKENS, now) == 10 * len(got_b)
    assert await used(limiter, "org:o", Dimension.CONCURRENCY, now) == 7


async def test_settle_refunds_and_a_later_request_fits(make_limiter: MakeLimiter) -> None:
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(tpm=1_000))
    admission = await limiter.admit(scope_list, "glm-4", 1_000, clock.now_ms())
    assert admission.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited):
        await limiter.admit(scope_list, "glm-4", 1, clock.now_ms())
    clock.ms += 2_000
    await limiter.settle(admission, 250, clock.now_ms())
    await limiter.settle(admission, 0, clock.now_ms())  # idempotent: the first settlement holds
    nxt = await limiter.admit(scope_list, "glm-4", 750, clock.now_ms())
    assert nxt.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_settling_above_the_reservation_charges_the_excess(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(tpm=1_000))
    admission = await limiter.admit(scope_list, "glm-4", 100, clock.now_ms())
    await limiter.settle(admission, 400, clock.now_ms())
    assert await used(limiter, "key:k", Dimension.TOKENS, clock.now_ms()) == 400
    await limiter.release(admission)  # a no-op after the settlement
    assert await used(limiter, "key:k", Dimension.TOKENS, clock.now_ms()) == 400


async def test_release_frees_the_slot_and_the_tokens(make_limiter: MakeLimiter) -> None:
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(tpm=100, concurrency=1))
    admission = await limiter.admit(scope_list, "glm-4", 100, clock.now_ms())
    await limiter.release(admission)
    await limiter.release(admission)  # idempotent
    await limiter.admit(scope_list, "glm-4", 100, clock.now_ms())


async def test_window_rollover_with_a_fake_clock(make_limiter: MakeLimiter) -> None:
    limiter, clock = make_limiter(), Clock(0)
    scope_list = scopes(Limits(rpm=2))
    await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    first = await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == "1m1s"
    clock.ms = 30_000
    with pytest.raises(RateLimited) as info:
        await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    assert info.value.retry_after_seconds == 31.0
    assert info.value.headers["retry-after"] == "31"
    clock.ms = 61_000
    await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())


async def test_a_window_slides_bucket_by_bucket(make_limiter: MakeLimiter) -> None:
    """One request a second against 10 RPM: the first 10 seconds fill it, the next 51 are
    refused, then each second frees exactly the bucket of 61 seconds before, until the
    window holds only new requests."""
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(rpm=10))
    for second in range(10):
        await limiter.admit(scope_list, "glm-4", 0, clock.now_ms() + second * 1_000)
    for second in range(10, 61):
        with pytest.raises(RateLimited) as info:
            await limiter.admit(scope_list, "glm-4", 0, clock.now_ms() + second * 1_000)
        assert info.value.headers["retry-after"] == str(61 - second)
    for second in range(61, 71):
        now = clock.now_ms() + second * 1_000
        admitted = await limiter.admit(scope_list, "glm-4", 0, now)
        assert admitted.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(RateLimited):
            await limiter.admit(scope_list, "glm-4", 0, now + 999)
        assert await used(limiter, "key:k", Dimension.REQUESTS, now + 999) == 10
    with pytest.raises(RateLimited) as info:  # the window is full of seconds 61 to 70 now
        await limiter.admit(scope_list, "glm-4", 0, clock.now_ms() + 71_000)
    assert info.value.headers["retry-after"] == "51"


async def test_tokens_over_many_windows_count_exactly_what_the_last_61_buckets_hold(
    make_limiter: MakeLimiter,
) -> None:
    """Three minutes of traffic in uneven steps, settled under and over the reservation:
    the usage is at every step the sum of the buckets still in the window."""
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(tpm=10**9))
    charged: dict[int, int] = {}  # bucket (second) -> tokens
    second = 0
    while second < 180:
        now = clock.now_ms() + second * 1_000
        admission = await limiter.admit(scope_list, "glm-4", 100, now)
        actual = [40, 100, 130][second % 3]  # refunds, exact, excess
        await limiter.settle(admission, actual, now)
        charged[second] = charged.get(second, 0) + actual
        expected = sum(v for s, v in charged.items() if s >= second - 60)
        assert await used(limiter, "key:k", Dimension.TOKENS, now) == expected, second
        second += [1, 1, 2, 0, 3][second % 5]


async def test_a_counter_idle_for_longer_than_a_window_starts_from_zero(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(tpm=100))
    for second in range(0, 60, 7):  # buckets all over the window
        await limiter.admit(scope_list, "glm-4", 10, clock.now_ms() + second * 1_000)
    with pytest.raises(RateLimited):
        await limiter.admit(scope_list, "glm-4", 20, clock.now_ms() + 60_000)
    later = clock.now_ms() + 3_600_000  # an hour of silence
    assert await used(limiter, "key:k", Dimension.TOKENS, later) == 0
    full = await limiter.admit(scope_list, "glm-4", 100, later)
    assert full.headers["x-ratelimit-remaining-tokens"] == "0"
    assert full.headers["x-ratelimit-reset-tokens"] == "1m1s"
    await limiter.release(full)
    assert await used(limiter, "key:k", Dimension.TOKENS, later) == 0
    again = await limiter.admit(scope_list, "glm-4", 100, later + 500)
    assert again.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_refusal_by_the_org_reserves_nothing_for_the_key(make_limiter: MakeLimiter) -> None:
    limiter, clock = make_limiter(), Clock()
    scope_list = scopes(Limits(tpm=1_000), org=Limits(tpm=100))  # the key's effective TPM: 100
    sibling = scopes_for(org_id="o", org_tier=Tier("org", Limits(tpm=100)), key_id="sibling")
    await limiter.admit(sibling, "glm-4", 90, clock.now_ms())  # the org has 10 left
    with pytest.raises(RateLimited) as info:
        await limiter.admit(scope_list, "glm-4", 60, clock.now_ms())
    assert info.value.scope == "org:o"
    assert "Rate limit reached for tokens per minute (TPM) on org:o" in info.value.message
    assert await used(limiter, "key:k", Dimension.TOKENS, clock.now_ms()) == 0


async def test_a_request_larger_than_the_limit_is_refused_as_never_fitting(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    with pytest.raises(RateLimited) as info:
        await limiter.admit(scopes(Limits(tpm=100)), "glm-4", 101, clock.now_ms())
    assert info.value.message.startswith("Request too large for tokens per minute (TPM)")
    assert info.value.headers["retry-after"] == "60"


async def test_per_model_limits_count_apart_from_the_default(make_limiter: MakeLimiter) -> None:
    limiter, clock = make_limiter(), Clock()
    tier = Tier("t", Limits(rpm=10), models={"glm-4": Limits(rpm=1)})
    scope_list = scopes_for(org_id="o", org_tier=tier, key_id="k")
    await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    with pytest.raises(RateLimited) as info:
        await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    assert "key:k for glm-4" in info.value.message
    await limiter.admit(scope_list, "other", 0, clock.now_ms())  # only the default counts it


async def test_scopes_without_limits_are_admitted_without_headers(
    make_limiter: MakeLimiter,
) -> None:
    limiter, clock = make_limiter(), Clock()
    admission = await limiter.admit(scopes(Limits()), "glm-4", 10, clock.now_ms())
    assert admission.headers == {}
    await limiter.settle(admission, 5, clock.now_ms())
