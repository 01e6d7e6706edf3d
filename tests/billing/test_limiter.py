"""What only the in-process limiter (billing/limiter.py) promises: no state shared between
instances, exact under threads. The behaviour both backends share is in
test_limiter_backends.py."""

from __future__ import annotations

import asyncio
import threading

from openmaas.billing.limiter import InProcessLimiter
from openmaas.core.errors import RateLimited
from openmaas.core.limits import Admission
from openmaas.core.tiers import Limits, Scope, Tier, scopes_for
from tests.support.clock import ManualClock


def scopes(limits: Limits, org: Limits | None = None) -> list[Scope]:
    return scopes_for(
        org_id="o",
        org_tier=Tier("org", org or Limits()),
        key_id="k",
        key_tier=Tier("key", limits),
    )


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
