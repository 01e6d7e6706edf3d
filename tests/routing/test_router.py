"""Routing and failover over FakeEngine deployments (routing/router.py).

Time for circuit breakers comes from a manual clock; the only real waiting is polling a
condition (the health check's loop) against a deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter
from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.errors import (
    EngineFailure,
    EngineOverloaded,
    InvalidRequest,
    UpstreamUnavailable,
)
from openmaas.core.routing import Backoff, BreakerConfig, BreakerState
from openmaas.core.types import (
    DataPolicy,
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    GenerationRequest,
    Message,
    Role,
    RoutingHints,
    StreamEvent,
    TextDelta,
    Usage,
)
from openmaas.engines.base import EngineState, EngineStream, ModelKind, SlotEngine, UsageTracker
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.routing.router import DataClass, Deployment, RoutedEngine, RouterConfig
from openmaas.serving.gateway import Gateway
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import UsageRepository
from tests.support.clock import ManualClock
from tests.support.waiting import eventually

LOCAL, EXTERNAL = DataClass.LOCAL, DataClass.EXTERNAL
TEXT = "one two three four five"


def fake(**script: Any) -> FakeEngine:
    script.setdefault("text", TEXT)
    return FakeEngine("upstream-model", FakeScript(**script))


def config(**overrides: Any) -> RouterConfig:
    options: dict[str, Any] = {
        "backoff": Backoff(base_s=0, cap_s=0),
        "breaker": BreakerConfig(failures=1, failure_rate=None, cooldown_s=30),
        "health_interval_s": 0.005,
    }
    options.update(overrides)
    return RouterConfig(**options)


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(1_000_000, monotonic=1000.0)


@pytest.fixture()
async def make(clock: ManualClock) -> AsyncIterator[Callable[..., Any]]:
    started: list[RoutedEngine] = []

    async def build(
        deployments: list[Deployment],
        model: str = "m",
        fallbacks: tuple[RoutedEngine, ...] = (),
        **overrides: Any,
    ) -> RoutedEngine:
        router = RoutedEngine(
            model,
            deployments,
            config=config(**overrides),
            fallbacks=fallbacks,
            clock=clock,
            rng=random.Random(7),
        )
        await router.start()
        started.append(router)
        return router

    yield build
    for router in started:
        await router.stop()


def request(
    text: str = "hello there",
    *,
    policy: DataPolicy = DataPolicy.BURST,
    session: str | None = None,
    messages: tuple[Message, ...] | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        "req",
        "m",
        messages=messages or (Message(Role.USER, text),),
        routing=RoutingHints(data_policy=policy, affinity_key=session),
    )


async def drain(stream: EngineStream) -> list[StreamEvent]:
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def all_idle(router: RoutedEngine) -> bool:
    return all(n == 0 for n in router.outstanding().values()) and all(
        m.engine.capacity().in_flight == 0 for m in router.members
    )


# --- selection ------------------------------------------------------------------------------


async def test_load_spreads_by_least_outstanding_and_weight(make: Any) -> None:
    a, b = fake(slots=8), fake(slots=8)
    router = await make([Deployment("a", a, weight=2), Deployment("b", b, weight=1)])
    streams = [router.stream(request()) for _ in range(6)]
    assert router.outstanding() == {"a": 4, "b": 2}
    assert {s.route.decision for s in streams} == {"least_loaded"}
    for s in streams[:4]:
        await drain(s)
    assert sum(router.outstanding().values()) == 2
    # Requests go to whichever now has the fewest per weight.
    more = [router.stream(request()) for _ in range(4)]
    assert router.outstanding() == {"a": 4, "b": 2}
    for s in streams[4:] + more:
        await s.aclose()
    assert all_idle(router)


async def test_route_and_usage_come_from_the_serving_deployment(make: Any) -> None:
    router = await make([Deployment("only", fake(), data_class=LOCAL)])
    stream = router.stream(request("count these four words"))
    events = await drain(stream)
    assert text_of(events) == TEXT
    assert isinstance(events[-1], Finished)
    route = stream.route
    assert (route.deployment, route.data_class, route.decision, route.attempts) == (
        "only",
        "local",
        "least_loaded",
        1,
    )
    assert stream.tracker.snapshot().completion_tokens == 5
    assert stream.tracker.snapshot().prompt_tokens == 4


async def test_lower_priority_value_goes_first_and_full_deployments_are_skipped(
    make: Any,
) -> None:
    first, second = fake(), fake()
    router = await make(
        [
            Deployment("second", second, priority=1),
            Deployment("first", first, priority=0, max_concurrency=1),
        ]
    )
    s1 = router.stream(request())
    s2 = router.stream(request())
    assert (s1.route.deployment, s2.route.deployment) == ("first", "second")
    await s1.aclose()
    await s2.aclose()
    assert all_idle(router)


async def test_everything_full_is_refused_at_once_as_overloaded(make: Any) -> None:
    router = await make([Deployment("a", fake(), max_concurrency=1)])
    held = router.stream(request())
    with pytest.raises(EngineOverloaded):
        router.stream(request())
    await held.aclose()
    assert all_idle(router)


# --- affinity -------------------------------------------------------------------------------


async def test_affinity_sticks_to_one_deployment_per_session(make: Any) -> None:
    engines = {name: fake() for name in "abcd"}
    router = await make([Deployment(n, e) for n, e in engines.items()], affinity=True)
    homes: dict[str, set[str]] = {}
    for session in ("alice", "bob", "carol", "dave", "erin"):
        for _ in range(4):
            stream = router.stream(request(session=session))
            await drain(stream)
            assert stream.route.decision == "affinity"
            homes.setdefault(session, set()).add(stream.route.deployment or "")
    assert all(len(h) == 1 for h in homes.values())
    assert len(set().union(*homes.values())) > 1  # sessions do not all land on one


async def test_a_conversations_turns_follow_its_opening_without_a_session(make: Any) -> None:
    router = await make([Deployment(n, fake()) for n in "abcdefgh"], affinity=True)
    system = Message(Role.SYSTEM, "You are a helpful assistant.")
    chosen = set()
    history: tuple[Message, ...] = (system, Message(Role.USER, "Tell me about caching."))
    for turn in range(5):
        stream = router.stream(request(messages=history))
        events = await drain(stream)
        chosen.add(stream.route.deployment)
        history += (Message(Role.ASSISTANT, text_of(events)), Message(Role.USER, f"more {turn}"))
    assert len(chosen) == 1


async def test_affinity_spills_when_its_home_is_loaded(make: Any) -> None:
    router = await make([Deployment(n, fake(slots=8)) for n in "abc"], affinity=True)
    home = router.stream(request(session="busy"))
    assert home.route.decision == "affinity"
    # With one request out of 3 deployments the bound is ceil(2 × 1.25 / 3) = 1: spill.
    spilled = router.stream(request(session="busy"))
    assert spilled.route.decision == "affinity_spill"
    assert spilled.route.deployment != home.route.deployment
    await home.aclose()
    back = router.stream(request(session="busy"))
    assert back.route.deployment == home.route.deployment
    await spilled.aclose()
    await back.aclose()
    assert all_idle(router)


# --- failover and circuit breakers ----------------------------------------------------------


@pytest.mark.parametrize(
    "failure", ["engine_failure", "upstream_unavailable", "timeout_connect", "timeout_first_token"]
)
async def test_a_failure_before_the_first_token_fails_over(make: Any, failure: str) -> None:
    bad, good = fake(fail_before_first_token=True, failure=failure), fake()
    router = await make([Deployment("bad", bad, priority=0), Deployment("good", good, priority=1)])
    stream = router.stream(request())
    events = await drain(stream)
    assert text_of(events) == TEXT
    assert (stream.route.deployment, stream.route.attempts) == ("good", 2)
    assert bad.stats.streams_started == 1 and good.stats.streams_started == 1
    assert router.breaker_state("bad") is BreakerState.OPEN
    assert all_idle(router)


async def test_a_deployment_silent_past_the_first_token_timeout_is_failed_over(
    make: Any,
) -> None:
    hung, quick = fake(first_token_delay=60), fake()
    router = await make(
        [Deployment("hung", hung), Deployment("quick", quick, priority=1)],
        first_token_timeout_s=0.01,
    )
    stream = router.stream(request())
    assert text_of(await drain(stream)) == TEXT
    assert (stream.route.deployment, stream.route.attempts) == ("quick", 2)
    assert router.breaker_state("hung") is BreakerState.OPEN
    assert all_idle(router) and hung.stats.streams_open == 0


async def test_a_failure_mid_stream_is_never_retried(make: Any) -> None:
    flaky, spare = fake(fail_after_tokens=2), fake()
    router = await make(
        [Deployment("flaky", flaky, priority=0), Deployment("spare", spare, priority=1)]
    )
    stream = router.stream(request())
    seen: list[StreamEvent] = []
    with pytest.raises(EngineFailure):
        async for event in stream:
            seen.append(event)
    await stream.aclose()
    assert text_of(seen) == "one two "  # what the client saw, once
    assert spare.stats.streams_started == 0
    assert (stream.route.deployment, stream.route.attempts) == ("flaky", 1)
    assert router.breaker_state("flaky") is BreakerState.OPEN  # the failure still counts
    assert all_idle(router)


async def test_a_bad_request_is_not_retried_and_does_not_trip_the_circuit(make: Any) -> None:
    picky, spare = fake(fail_before_first_token=True, failure="invalid_request"), fake()
    router = await make(
        [Deployment("picky", picky, priority=0), Deployment("s", spare, priority=1)]
    )
    with pytest.raises(InvalidRequest):
        await drain(router.stream(request()))
    assert spare.stats.streams_started == 0
    assert router.breaker_state("picky") is BreakerState.CLOSED


async def test_attempts_are_bounded(make: Any) -> None:
    engines = [fake(fail_before_first_token=True) for _ in range(5)]
    router = await make(
        [Deployment(f"d{i}", e) for i, e in enumerate(engines)],
        max_attempts=2,
        breaker=BreakerConfig(failures=10, failure_rate=None),
    )
    with pytest.raises(EngineFailure):
        await drain(router.stream(request()))
    assert sum(e.stats.streams_started for e in engines) == 2
    assert all_idle(router)


async def test_a_dead_replica_is_avoided_then_comes_back_after_the_cool_down(
    make: Any, clock: ManualClock
) -> None:
    dead, alive = fake(fail_first_streams=1, failure="upstream_unavailable"), fake()
    healthy = False

    async def probe() -> None:
        if not healthy:
            raise UpstreamUnavailable("still down", deployment="dead")

    router = await make(
        [
            Deployment("dead", dead, priority=0, probe=probe),
            Deployment("alive", alive, priority=1),
        ]
    )
    first = router.stream(request())
    await drain(first)
    assert first.route.attempts == 2 and router.breaker_state("dead") is BreakerState.OPEN
    for _ in range(3):  # avoided while open: never tried again
        stream = router.stream(request())
        await drain(stream)
        assert (stream.route.deployment, stream.route.attempts) == ("alive", 1)
    assert dead.stats.streams_started == 1

    # After the cool-down the health check probes it; a failed probe re-opens it.
    probes_failed = router.members[0].breaker
    clock.advance(30)
    await eventually(lambda: probes_failed.state(clock.monotonic()) is BreakerState.OPEN)
    assert router.breaker_state("dead") is BreakerState.OPEN
    clock.advance(30)
    healthy = True
    await eventually(lambda: router.breaker_state("dead") is BreakerState.CLOSED)
    back = router.stream(request())
    await drain(back)
    assert (back.route.deployment, back.route.attempts) == ("dead", 1)


async def test_without_a_probe_a_ready_engine_is_brought_back(
    make: Any, clock: ManualClock
) -> None:
    flaky = fake(fail_first_streams=1)
    router = await make([Deployment("flaky", flaky), Deployment("other", fake(), priority=1)])
    await drain(router.stream(request()))
    assert router.breaker_state("flaky") is BreakerState.OPEN
    clock.advance(30)
    await eventually(lambda: router.breaker_state("flaky") is BreakerState.CLOSED)


async def test_a_half_open_circuit_lets_one_real_request_probe(
    make: Any, clock: ManualClock
) -> None:
    """Health checks off (a long interval): the first request after the cool-down probes."""
    flaky, other = fake(fail_first_streams=1), fake()
    router = await make(
        [Deployment("flaky", flaky), Deployment("other", other, priority=1)],
        health_interval_s=3600,
    )
    await drain(router.stream(request()))
    clock.advance(30)
    assert router.breaker_state("flaky") is BreakerState.HALF_OPEN
    probe = router.stream(request())
    assert probe.route.deployment == "flaky"
    second = router.stream(request())  # the probe is out: nobody else goes there
    assert second.route.deployment == "other"
    await drain(probe)
    await drain(second)
    assert router.breaker_state("flaky") is BreakerState.CLOSED


# --- data policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure", ["engine_failure", "upstream_unavailable", "timeout_first_token"]
)
async def test_local_only_never_touches_external_whatever_fails(make: Any, failure: str) -> None:
    locals_ = [fake(fail_before_first_token=True, failure=failure) for _ in range(2)]
    cloud = fake()
    router = await make(
        [
            Deployment("l1", locals_[0], data_class=LOCAL),
            Deployment("l2", locals_[1], data_class=LOCAL),
            Deployment("cloud", cloud, data_class=EXTERNAL, priority=-1),
        ],
        breaker=BreakerConfig(failures=100, failure_rate=None),
    )
    with pytest.raises((EngineFailure, UpstreamUnavailable)):
        await drain(router.stream(request(policy=DataPolicy.LOCAL_ONLY)))
    assert [e.stats.streams_started for e in locals_] == [1, 1]
    assert cloud.stats.streams_started == 0


async def test_local_only_never_touches_external_when_local_is_full_or_open(make: Any) -> None:
    cloud = fake()
    router = await make(
        [
            Deployment("l", fake(fail_first_streams=1), max_concurrency=1),
            Deployment("cloud", cloud, data_class=EXTERNAL),
        ]
    )
    held = router.stream(request(policy=DataPolicy.LOCAL_ONLY))
    with pytest.raises(EngineOverloaded):  # saturated
        router.stream(request(policy=DataPolicy.LOCAL_ONLY))
    with pytest.raises(EngineFailure):  # its one local deployment fails: no external retry
        await drain(held)
    assert router.breaker_state("l") is BreakerState.OPEN
    with pytest.raises(UpstreamUnavailable):  # circuit open
        router.stream(request(policy=DataPolicy.LOCAL_ONLY))
    with pytest.raises(UpstreamUnavailable):  # counting sends the prompt too: same rule
        await router.count_prompt_tokens(request(policy=DataPolicy.LOCAL_ONLY))
    assert cloud.stats.streams_started == 0
    stream = router.stream(request())  # a burst organization does get the cloud
    await drain(stream)
    assert stream.route.deployment == "cloud"


async def test_local_only_on_a_cloud_only_model_names_the_policy(make: Any) -> None:
    cloud = fake()
    router = await make([Deployment("cloud", cloud, data_class=EXTERNAL)])
    with pytest.raises(UpstreamUnavailable, match="local only"):
        router.stream(request(policy=DataPolicy.LOCAL_ONLY))
    with pytest.raises(UpstreamUnavailable, match="local only"):
        await router.count_prompt_tokens(request(policy=DataPolicy.LOCAL_ONLY))
    assert cloud.stats.streams_started == 0
    stream = router.stream(request())  # a burst organization: external is all there is
    await drain(stream)
    assert (stream.route.data_class, stream.route.decision) == ("external", "least_loaded")


async def test_burst_uses_external_only_when_local_is_saturated(make: Any) -> None:
    local, cloud = fake(), fake()
    router = await make(
        [
            Deployment("cloud", cloud, data_class=EXTERNAL, priority=-5),
            Deployment("local", local, data_class=LOCAL, max_concurrency=2),
        ]
    )
    held = [router.stream(request()) for _ in range(2)]
    assert [s.route.data_class for s in held] == ["local", "local"]
    overflow = router.stream(request())
    assert (overflow.route.deployment, overflow.route.decision) == ("cloud", "burst")
    assert overflow.route.data_class == "external"
    await drain(held[0])
    again = router.stream(request())
    assert again.route.deployment == "local"
    for s in [held[1], overflow, again]:
        await drain(s)
    assert all_idle(router)


async def test_burst_overflows_to_external_when_local_fails(make: Any) -> None:
    local, cloud = fake(fail_before_first_token=True), fake()
    router = await make(
        [Deployment("local", local), Deployment("cloud", cloud, data_class=EXTERNAL)]
    )
    stream = router.stream(request())
    await drain(stream)
    assert (stream.route.deployment, stream.route.decision, stream.route.attempts) == (
        "cloud",
        "burst",
        2,
    )


# --- fallbacks and final errors -------------------------------------------------------------


async def test_a_model_whose_deployments_all_fail_falls_back_to_another_model(make: Any) -> None:
    b_engine = fake(text="from b")
    b = await make([Deployment("b1", b_engine)], model="b")
    a = await make(
        [Deployment("a1", fake(fail_before_first_token=True))], model="a", fallbacks=(b,)
    )
    stream = a.stream(request())
    events = await drain(stream)
    assert text_of(events) == "from b"
    assert (stream.route.deployment, stream.route.decision, stream.route.attempts) == (
        "b1",
        "fallback:b",
        2,
    )
    assert all_idle(a) and all_idle(b)
    # Refused at once (A's only deployment full): the fallback is used at once too.
    full = await make([Deployment("x", fake(), max_concurrency=1)], model="full", fallbacks=(b,))
    held = full.stream(request())
    other = full.stream(request())
    assert other.route.decision == "fallback:b"
    await held.aclose()
    await other.aclose()
    assert all_idle(full) and all_idle(b)


class LeakyEngine(FakeEngine):
    """Fails the way an upstream might, with a credential in its error message."""

    def _stream(self, request: GenerationRequest, tracker: UsageTracker) -> Any:
        async def fail() -> AsyncIterator[StreamEvent]:
            raise UpstreamUnavailable(
                "401 from https://api.example.com key=sk-SECRET", deployment="x", status=503
            )
            yield  # pragma: no cover

        return fail()


async def test_when_nothing_can_take_it_the_error_leaks_no_upstream_detail(make: Any) -> None:
    router = await make(
        [
            Deployment("x", LeakyEngine("up", FakeScript())),
            Deployment("y", LeakyEngine("up", FakeScript())),
        ]
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await drain(router.stream(request()))
    assert "SECRET" not in caught.value.message and "example.com" not in caught.value.message
    assert caught.value.status == 503
    assert all_idle(router)


# --- exact outstanding counts ---------------------------------------------------------------


async def test_a_client_gone_mid_stream_or_before_the_first_token_is_released(
    make: Any,
) -> None:
    slow_start, slow_tokens = fake(first_token_delay=60), fake(token_delay=60)
    router = await make([Deployment("s", slow_start), Deployment("t", slow_tokens, priority=1)])
    # Before the first token.
    stream = router.stream(request())
    task = asyncio.create_task(drain(stream))
    await eventually(lambda: slow_start.stats.streams_open == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all_idle(router) and slow_start.stats.streams_open == 0
    # Mid-stream.
    router.members[0].deployment.engine.script.first_token_delay = 0  # type: ignore[attr-defined]
    slow_start.script.token_delay = 60
    stream = router.stream(request())
    seen: list[StreamEvent] = []

    async def read() -> None:
        async for event in stream:
            seen.append(event)

    task = asyncio.create_task(read())
    await eventually(lambda: len(seen) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    assert all_idle(router) and slow_start.stats.streams_open == 0
    # Never read at all.
    await router.stream(request()).aclose()
    assert all_idle(router)


async def test_a_cancelled_probe_gives_its_slot_back(make: Any, clock: ManualClock) -> None:
    flaky = fake(fail_first_streams=1)
    router = await make(
        [Deployment("flaky", flaky), Deployment("other", fake(), priority=1)],
        health_interval_s=3600,
    )
    await drain(router.stream(request()))
    clock.advance(30)
    flaky.script.first_token_delay = 60
    probe = router.stream(request())
    assert probe.route.deployment == "flaky"
    task = asyncio.create_task(drain(probe))
    await eventually(lambda: flaky.stats.streams_open == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.breaker_state("flaky") is BreakerState.HALF_OPEN
    flaky.script.first_token_delay = 0
    again = router.stream(request())  # the slot is free again: a new probe
    await drain(again)
    assert again.route.deployment == "flaky"
    assert router.breaker_state("flaky") is BreakerState.CLOSED


# --- lifecycle, counting, embeddings --------------------------------------------------------


async def test_a_deployment_that_fails_to_load_is_skipped(make: Any) -> None:
    broken, fine = fake(fail_on_load=True), fake()
    router = await make([Deployment("broken", broken, priority=0), Deployment("fine", fine)])
    assert router.health().state is EngineState.READY
    stream = router.stream(request())
    await drain(stream)
    assert (stream.route.deployment, stream.route.attempts) == ("fine", 1)


async def test_counting_prompt_tokens_fails_over(make: Any) -> None:
    down, up = fake(), fake()
    router = await make([Deployment("down", down), Deployment("up", up, priority=1)])
    await down.stop()
    assert await router.count_prompt_tokens(request("three words here")) == 3


class Embedder(SlotEngine):
    def __init__(self, fail: int = 0) -> None:
        super().__init__("emb", ModelKind.EMBEDDING, slots=2, queue=0)
        self.fail = fail
        self.calls = 0

    async def _load(self) -> None:
        return None

    async def _unload(self) -> None:
        return None

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self.calls += 1
        if self.calls <= self.fail:
            raise UpstreamUnavailable("down", deployment="e", status=502)
        return EmbeddingResult(tuple((1.0,) for _ in request.inputs), Usage(len(request.inputs)))


async def test_embeddings_route_and_fail_over(make: Any) -> None:
    bad, good = Embedder(fail=1), Embedder()
    router = await make([Deployment("bad", bad), Deployment("good", good, priority=1)])
    assert router.kind is ModelKind.EMBEDDING
    result = await router.embed(EmbeddingRequest("r", "emb", ("a", "b")))
    assert len(result.vectors) == 2 and (bad.calls, good.calls) == (1, 1)
    assert router.breaker_state("bad") is BreakerState.OPEN
    assert all_idle(router)


def test_a_router_needs_consistent_deployments() -> None:
    from openmaas.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        RoutedEngine("m", [])
    with pytest.raises(ConfigurationError):
        RoutedEngine("m", [Deployment("a", fake()), Deployment("a", fake())])
    with pytest.raises(ConfigurationError):
        RoutedEngine("m", [Deployment("a", fake()), Deployment("b", Embedder())])


# --- through the gateway --------------------------------------------------------------------


async def test_the_gateway_records_the_route_and_releases_a_client_gone_mid_stream(
    database: AsyncEngine, make: Any, clock: ManualClock
) -> None:
    """The router plugs into the gateway unchanged: its usage record names the serving
    deployment and how it was chosen, and a client gone mid-stream frees the deployment."""
    bad, good = fake(fail_before_first_token=True), fake(token_delay=60)
    router = await make([Deployment("bad", bad), Deployment("good", good, priority=1)])
    usage = UsageRepository(database)
    billing = Accountant(database, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock)
    gateway = Gateway(ModelCatalog([ServedModel("m", router)]), billing, clock, lambda: False)
    principal = Principal(key_id="om0123456789abcdef", org_id="org_test", role="member")
    req = request()
    generation = await gateway.generate(principal, req, "chat.completions")
    first = await generation.__anext__()
    assert isinstance(first, TextDelta) and router.outstanding() == {"bad": 0, "good": 1}
    await generation.aclose()  # the client went away
    assert all_idle(router) and good.stats.streams_open == 0
    record = await usage.get(req.request_id)
    assert record is not None
    assert (record["deployment"], record["data_class"], record["route"]) == (
        "good",
        "local",
        "least_loaded",
    )
    assert record["attempts"] == 2 and record["completion_tokens"] == 1


# --- two replicas of the real embedded model ------------------------------------------------


@pytest.mark.slow
async def test_two_llama_cpp_replicas_share_load_and_a_stopped_one_is_avoided(make: Any) -> None:
    from openmaas.core.types import SamplingParams
    from openmaas.engines.embedded import chat_model_path
    from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

    def replica() -> LlamaCppEngine:
        return LlamaCppEngine(
            "smol", LlamaCppConfig(chat_model_path(), ModelKind.CHAT, slots=1, queue=0, threads=1)
        )

    r1, r2 = replica(), replica()
    router = await make([Deployment("r1", r1), Deployment("r2", r2)])

    def ask() -> GenerationRequest:
        return GenerationRequest(
            "req",
            "smol",
            messages=(Message(Role.USER, "Name a fruit."),),
            sampling=SamplingParams(max_tokens=4, ignore_eos=True),
        )

    streams = [router.stream(ask()), router.stream(ask())]
    assert sorted(s.route.deployment or "" for s in streams) == ["r1", "r2"]
    results = await asyncio.gather(*(drain(s) for s in streams))
    for events, stream in zip(results, streams, strict=True):
        assert isinstance(events[-1], Finished)
        assert stream.tracker.snapshot().completion_tokens == 4
    assert all_idle(router)
    await r1.stop()  # a dead replica: not READY, never chosen
    for _ in range(2):
        stream = router.stream(ask())
        await drain(stream)
        assert (stream.route.deployment, stream.route.attempts) == ("r2", 1)
