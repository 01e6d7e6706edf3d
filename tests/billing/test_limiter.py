"""The in-process limiter (billing/limiter.py): exact under bursts of concurrent requests."""

from __future__ import annotations

import asyncio
import threading

import pytest

from openmaas.billing.limiter import InProcessLimiter, Limiter
from openmaas.core.errors import RateLimited
from openmaas.core.limits import Admission, Dimension
from openmaas.core.tiers import Limits, Scope, Tier, scopes_for
from tests.support.clock import ManualClock


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
        await asyncio.sleep(0)  # one turn of the loop: all are woken before any admits
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


def test_in_process_limiter_implements_the_protocol() -> None:
    assert isinstance(InProcessLimiter(), Limiter)


async def test_100_simultaneous_admits_of_10_tokens_against_100_tpm_admit_exactly_10() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    admitted, refused = await burst(limiter, 100, scopes(Limits(tpm=100)), 10, clock.now_ms())
    assert len(admitted) == 10 and len(refused) == 90
    assert {e.limit for e in refused} == {"tokens"}
    assert all(e.headers["x-ratelimit-remaining-tokens"] == "0" for e in refused)
    assert all(int(e.headers["retry-after"]) >= 1 for e in refused)
    assert limiter.state.used("key:k", "*", Dimension.TOKENS, clock.now_ms()) == 100


async def test_100_simultaneous_admits_against_a_concurrency_cap_of_10() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    scope_list = scopes(Limits(concurrency=10))
    admitted, refused = await burst(limiter, 100, scope_list, 0, clock.now_ms())
    assert len(admitted) == 10 and len(refused) == 90
    assert {e.limit for e in refused} == {"concurrency"}
    # Freeing three slots admits exactly three more of the next burst.
    for admission in admitted[:3]:
        await limiter.settle(admission, 0, clock.now_ms())
    again, _ = await burst(limiter, 50, scope_list, 0, clock.now_ms())
    assert len(again) == 3


async def test_100_simultaneous_admits_against_60_rpm_admit_exactly_60() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    admitted, _ = await burst(limiter, 100, scopes(Limits(rpm=60)), 1, clock.now_ms())
    assert len(admitted) == 60


async def test_burst_shared_by_two_keys_is_capped_by_the_org_and_leaves_no_stray_reservations() -> (
    None
):
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    org = Tier("org", Limits(tpm=100, concurrency=7))
    a = scopes_for(org_id="o", org_tier=org, key_id="a")
    b = scopes_for(org_id="o", org_tier=org, key_id="b")
    (got_a, _), (got_b, _) = await asyncio.gather(
        burst(limiter, 50, a, 10, clock.now_ms()), burst(limiter, 50, b, 10, clock.now_ms())
    )
    assert len(got_a) + len(got_b) == 7  # concurrency is the tighter cap
    state, now = limiter.state, clock.now_ms()
    assert state.used("key:a", "*", Dimension.TOKENS, now) == 10 * len(got_a)
    assert state.used("key:b", "*", Dimension.TOKENS, now) == 10 * len(got_b)
    assert state.used("org:o", "*", Dimension.CONCURRENCY, now) == 7


async def test_settle_refunds_and_a_later_request_fits() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    scope_list = scopes(Limits(tpm=1_000))
    admission = await limiter.admit(scope_list, "glm-4", 1_000, clock.now_ms())
    assert admission.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited):
        await limiter.admit(scope_list, "glm-4", 1, clock.now_ms())
    clock.advance(2)
    await limiter.settle(admission, 250, clock.now_ms())
    await limiter.settle(admission, 0, clock.now_ms())  # idempotent: the first settlement holds
    nxt = await limiter.admit(scope_list, "glm-4", 750, clock.now_ms())
    assert nxt.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_release_frees_the_slot_and_the_tokens() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    scope_list = scopes(Limits(tpm=100, concurrency=1))
    admission = await limiter.admit(scope_list, "glm-4", 100, clock.now_ms())
    await limiter.release(admission)
    await limiter.release(admission)  # idempotent
    await limiter.admit(scope_list, "glm-4", 100, clock.now_ms())


async def test_window_rollover_with_a_fake_clock() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(0)
    scope_list = scopes(Limits(rpm=2))
    await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    clock.advance(30)  # 30 s into the window
    with pytest.raises(RateLimited) as info:
        await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())
    assert info.value.retry_after_seconds == 31.0
    assert info.value.headers["retry-after"] == "31"
    clock.advance(31)  # 61 s: the first admissions left the window
    await limiter.admit(scope_list, "glm-4", 0, clock.now_ms())


async def test_refusal_by_the_org_reserves_nothing_for_the_key() -> None:
    limiter, clock = InProcessLimiter(), ManualClock(1_700_000_000_000)
    scope_list = scopes(Limits(tpm=1_000), org=Limits(tpm=100))  # the key's effective TPM: 100
    sibling = scopes_for(org_id="o", org_tier=Tier("org", Limits(tpm=100)), key_id="sibling")
    await limiter.admit(sibling, "glm-4", 90, clock.now_ms())  # the org has 10 left
    with pytest.raises(RateLimited) as info:
        await limiter.admit(scope_list, "glm-4", 60, clock.now_ms())
    assert info.value.scope == "org:o"
    assert limiter.state.used("key:k", "*", Dimension.TOKENS, clock.now_ms()) == 0


async def test_limiters_share_nothing() -> None:
    clock = ManualClock(1_700_000_000_000)
    one, two = InProcessLimiter(), InProcessLimiter()
    scope_list = scopes(Limits(concurrency=1))
    await one.admit(scope_list, "glm-4", 0, clock.now_ms())
    await two.admit(scope_list, "glm-4", 0, clock.now_ms())  # no module-level state


def test_threads_cannot_oversubscribe() -> None:
    limiter, clock = InProcessLimiter(sweep_every=7), ManualClock(1_700_000_000_000)
    scope_list = scopes(Limits(tpm=500, concurrency=40))
    admitted: list[Admission] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            try:
                admitted.append(asyncio.run(limiter.admit(scope_list, "glm-4", 3, clock.now_ms())))
            except RateLimited:
                pass

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 40  # 40 slots, 120 tokens: the slots run out first
