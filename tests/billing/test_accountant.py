"""Billing around real requests (billing/accountant.py through serving/gateway.py): holds
before the engine, settlement with the usage record, limits, recovery after a crash. Real
SQLite, the scriptable fake engine, a frozen clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter, Limiter
from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.errors import (
    BudgetExceeded,
    EngineFailure,
    EngineOverloaded,
    InsufficientBalance,
    RateLimited,
    UpstreamUnavailable,
)
from openmaas.core.ids import new_request_id
from openmaas.core.ledger_events import (
    BudgetPeriod,
    GrantPack,
    Hold,
    SetBudget,
    TopUp,
    cash,
    held,
    system,
)
from openmaas.core.limits import Admission
from openmaas.core.money import Currency
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.tiers import Limits, Tier
from openmaas.core.types import (
    Finished,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    Usage,
)
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.serving.gateway import Gateway
from openmaas.store.billing import InFlight, load_inflight, set_price, set_tier, update_org
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository, UsageRepository
from openmaas.store.schema import usage_records
from tests.support.clock import ManualClock
from tests.support.waiting import eventually

NOW_MS = 1_790_000_000_000
PROMPT = "price this prompt please"  # the fake counts 4 prompt tokens (one per word)
# 1 CNY per 1M input tokens, 2 CNY per 1M output: 1 and 2 micros per token.
PRICE = ModelPrice("priced", 1_000_000, 500_000, 2_000_000, effective_from_ms=0)


class Rig:
    def __init__(self, database: AsyncEngine, org_id: str, clock: ManualClock) -> None:
        self.database = database
        self.org_id = org_id
        self.principal = Principal(key_id="om_member", org_id=org_id, role="member")
        self.clock = clock
        self.usage = UsageRepository(database)
        self.engines: dict[str, FakeEngine] = {}
        self.accountant = self.new_accountant()
        self.gateway: Gateway | None = None

    def new_accountant(self, limiter: Limiter | None = None) -> Accountant:
        """A fresh process's view: its own ledger cache and limiter over the same database."""
        ledger = LedgerStore(self.database, self.clock.now_ms)
        return Accountant(
            self.database, ledger, limiter or InProcessLimiter(), self.clock,
            refresh_seconds=0, checkpoint_seconds=0.5,
        )  # fmt: skip

    async def serve(self, **scripts: dict[str, object]) -> Gateway:
        models = []
        for name, script in scripts.items():
            engine = FakeEngine(name, FakeScript(**script))
            await engine.start()
            self.engines[name] = engine
            models.append(ServedModel(name, engine, context_length=64))
        self.gateway = Gateway(ModelCatalog(models), self.accountant, self.clock, lambda: False)
        return self.gateway

    async def top_up(self, micros: int, topup_id: str = "t1") -> None:
        await self.accountant.ledger.execute(TopUp(topup_id, self.org_id, micros))

    async def cash(self) -> int:
        return (await self.accountant.ledger.refresh()).balance(cash(self.org_id))

    async def records(self) -> list[dict[str, object]]:
        async with self.database.connect() as conn:
            rows = await conn.execute(select(usage_records).order_by(usage_records.c.started_at_ms))
            return [dict(r._mapping) for r in rows]

    async def stop(self) -> None:
        for engine in self.engines.values():
            await engine.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW_MS)


@pytest.fixture
async def rig(database: AsyncEngine, clock: ManualClock) -> AsyncIterator[Rig]:
    org = await OrganizationRepository(database).create("acme", NOW_MS)
    async with database.begin() as conn:
        await set_price(conn, PRICE)
    r = Rig(database, org.id, clock)
    try:
        yield r
    finally:
        await r.stop()
        await database.dispose()


def chat(model: str = "priced", max_tokens: int | None = 10) -> GenerationRequest:
    return GenerationRequest(
        request_id=new_request_id(),
        model=model,
        messages=(Message(Role.USER, PROMPT),),
        sampling=SamplingParams(max_tokens=max_tokens),
    )


def worst_case(max_tokens: int) -> int:
    return AppliedPrice(PRICE).worst_case(4, max_tokens).micros


async def run(gateway: Gateway, principal: Principal, request: GenerationRequest) -> Usage:
    generation = await gateway.generate(principal, request, "chat.completions")
    try:
        async for event in generation:
            if isinstance(event, Finished):
                return event.usage
    finally:
        await generation.aclose()
    raise AssertionError("no Finished event")


async def test_no_balance_refuses_before_the_engine_and_records_nothing(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c"})
    with pytest.raises(InsufficientBalance) as info:
        await gateway.generate(rig.principal, chat(), "chat.completions")
    assert info.value.needed_micros == worst_case(10)
    # It names the organization as people know it, and the command that fixes it.
    assert f"organization 'acme' ({rig.org_id})" in info.value.message
    assert "openmaas billing topup acme <amount>" in info.value.message
    assert rig.engines["priced"].stats.streams_started == 0
    assert await rig.records() == []
    async with rig.database.connect() as conn:
        assert await load_inflight(conn) == []


async def test_max_tokens_beyond_the_context_holds_no_more_than_the_context(rig: Rig) -> None:
    """Claude Code asks for 32,000 output tokens whatever the model; a model with a window
    of 64 tokens can never generate more than 64, so that is the most the hold covers."""
    gateway = await rig.serve(priced={"text": "a b c"})  # context_length 64
    await rig.top_up(worst_case(64))
    usage = await run(gateway, rig.principal, chat(max_tokens=32_000))
    assert usage.completion_tokens == 3
    assert [r["cost_micros"] for r in await rig.records()] == [4 + 3 * 2]


async def test_a_finished_request_is_charged_its_price_once(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c"})
    await rig.top_up(1_000)
    usage = await run(gateway, rig.principal, chat())
    assert (usage.prompt_tokens, usage.completion_tokens) == (4, 3)
    cost = 4 * 1 + 3 * 2  # micros, by the price
    [record] = await rig.records()
    assert (record["cost_micros"], record["currency"], record["termination"]) == (
        cost,
        "CNY",
        "finished",
    )
    ledger = await rig.accountant.ledger.refresh()
    assert ledger.balance(cash(rig.org_id)) == 1_000 - cost
    assert ledger.balance(held(rig.org_id)) == 0
    assert ledger.balance(system("CNY", "revenue")) == cost
    assert ledger.open_holds() == []
    assert all(total == 0 for total in ledger.totals_by_unit().values())
    async with rig.database.connect() as conn:
        assert await load_inflight(conn) == []


async def test_an_unpriced_model_is_metered_and_not_charged(rig: Rig) -> None:
    gateway = await rig.serve(free={"text": "a b c"})
    await run(gateway, rig.principal, chat("free"))
    [record] = await rig.records()
    assert record["cost_micros"] is None and record["completion_tokens"] == 3
    assert await rig.cash() == 0


async def test_an_engine_that_refuses_releases_the_hold(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c", "first_token_delay": 5, "slots": 1})
    await rig.top_up(1_000)
    first = asyncio.create_task(gateway.generate(rig.principal, chat(), "chat.completions"))
    await eventually(lambda: rig.engines["priced"].stats.streams_started, what="the engine")
    with pytest.raises(EngineOverloaded):
        await gateway.generate(rig.principal, chat(), "chat.completions")
    ledger = await rig.accountant.ledger.refresh()
    assert ledger.balance(held(rig.org_id)) == worst_case(10)  # only the first one's hold
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await gateway.wait_idle(2.0)
    # The cancelled request was queued (no tokens): as counted, the fake read its prompt.
    [record] = await rig.records()
    assert record["termination"] == "client_disconnected"
    assert await rig.cash() == 1_000 - record["cost_micros"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("script", "termination", "charged"),
    [
        ({"text": "a b c", "fail_before_first_token": True}, "engine_error", 0),
        ({"text": "a b c d e", "fail_after_tokens": 2}, "engine_error", 4 * 1 + 2 * 2),
    ],
    ids=["error-before-first-token-is-free", "error-mid-stream-charges-what-was-made"],
)
async def test_engine_errors_follow_the_billing_table(
    rig: Rig, script: dict[str, object], termination: str, charged: int
) -> None:
    gateway = await rig.serve(priced=script)
    await rig.top_up(1_000)
    with pytest.raises(EngineFailure):
        await run(gateway, rig.principal, chat())
    [record] = await rig.records()
    assert (record["termination"], record["cost_micros"]) == (termination, charged)
    assert await rig.cash() == 1_000 - charged


async def test_a_client_that_leaves_mid_stream_pays_for_what_was_generated(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c d e f g h", "token_delay": 0.01})
    await rig.top_up(1_000)
    generation = await gateway.generate(rig.principal, chat(), "chat.completions")
    await generation.__anext__()
    await generation.__anext__()
    record = await generation.aclose()
    assert record is not None and record.termination.value == "client_disconnected"
    made = record.usage.completion_tokens
    assert 2 <= made < 8
    assert record.cost is not None and record.cost.micros == 4 * 1 + made * 2
    assert await rig.cash() == 1_000 - record.cost.micros


async def test_200_concurrent_requests_against_a_balance_for_10(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c", "slots": 8, "queue": 300})
    await rig.top_up(10 * worst_case(10))
    results = await asyncio.gather(
        *(run(gateway, rig.principal, chat()) for _ in range(200)), return_exceptions=True
    )
    served = [r for r in results if isinstance(r, Usage)]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    # Each served request costs less than its hold, so refunds may admit a few more than 10
    # (only once earlier ones settled); never one the balance could not cover.
    assert len(served) + len(refused) == 200 and len(served) >= 10
    assert len(await rig.records()) == len(served)
    ledger = await rig.accountant.ledger.refresh()
    assert ledger.balance(cash(rig.org_id)) == 10 * worst_case(10) - len(served) * 10
    assert ledger.balance(cash(rig.org_id)) >= 0
    assert all(total == 0 for total in ledger.totals_by_unit().values())


async def test_concurrent_holds_never_overdraw(rig: Rig) -> None:
    """With engines slower than admission, exactly the covered number of holds is admitted."""
    gateway = await rig.serve(priced={"text": "a b c", "first_token_delay": 0.3, "slots": 300})
    await rig.top_up(10 * worst_case(10))
    starts = await asyncio.gather(
        *(gateway.generate(rig.principal, chat(), "chat.completions") for _ in range(200)),
        return_exceptions=True,
    )
    admitted = [g for g in starts if not isinstance(g, BaseException)]
    assert len(admitted) == 10
    assert all(isinstance(g, InsufficientBalance) for g in starts if g not in admitted)
    assert await rig.cash() == 0  # everything is held
    for generation in admitted:
        await generation.aclose()
    # Each read its prompt and made its first token (generate waits for it), then left.
    assert await rig.cash() == 10 * worst_case(10) - 10 * (4 * 1 + 1 * 2)


async def test_resource_packs_pay_before_cash(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c"})
    await rig.accountant.ledger.execute(
        GrantPack("p1", rig.org_id, frozenset({"priced"}), 5, NOW_MS + 86_400_000)
    )
    await rig.top_up(1_000)
    await run(gateway, rig.principal, chat())
    # 7 tokens: the pack's 5 cover the 4 input tokens and 1 output; 2 output tokens in cash.
    [record] = await rig.records()
    assert record["cost_micros"] == 2 * 2
    assert await rig.cash() == 1_000 - 4


async def test_a_day_budget_is_a_hard_stop(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c"})
    await rig.top_up(10_000)
    await rig.accountant.ledger.execute(
        SetBudget(f"key:{rig.principal.key_id}", BudgetPeriod.DAY, worst_case(10) + 5)
    )
    await run(gateway, rig.principal, chat())  # spends 10 micros
    with pytest.raises(BudgetExceeded):
        await run(gateway, rig.principal, chat())
    assert len(await rig.records()) == 1


async def test_tier_limits_refuse_with_headers_and_free_their_slots(rig: Rig) -> None:
    async with rig.database.begin() as conn:
        await set_tier(conn, Tier("tiny", Limits(rpm=3, tpm=None, concurrency=1)))
        await update_org(conn, rig.org_id, tier="tiny")
    gateway = await rig.serve(free={"text": "a b c", "first_token_delay": 0.2})
    first = await gateway.generate(rig.principal, chat("free"), "chat.completions")
    assert first.limit_headers["x-ratelimit-limit-requests"] == "3"
    assert first.limit_headers["x-ratelimit-remaining-requests"] == "2"
    with pytest.raises(RateLimited) as info:  # concurrency 1: the first is still running
        await gateway.generate(rig.principal, chat("free"), "chat.completions")
    assert info.value.limit == "concurrency"
    await first.aclose()
    await run(gateway, rig.principal, chat("free"))  # its slot came back
    await run(gateway, rig.principal, chat("free"))  # the 3rd request (the refusal did not count)
    with pytest.raises(RateLimited) as info:  # but 3 requests per minute were made
        await run(gateway, rig.principal, chat("free"))
    assert info.value.limit == "requests"
    assert int(info.value.headers["retry-after"]) >= 60  # nothing frees up within the minute
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"


class _RemoteLimiter(InProcessLimiter):
    """In-process counts behind a round trip, as Redis's are: a settlement waits for
    ``answer`` (the reply) once it has been sent (``sent``)."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.sent = asyncio.Event()
        self.answer = asyncio.Event()

    async def settle(self, admission: Admission, actual_tokens: int, now_ms: int) -> None:
        self.sent.set()
        await self.answer.wait()
        await super().settle(admission, actual_tokens, now_ms)


async def test_limits_in_another_process_are_settled_beside_the_ledger_write(rig: Rig) -> None:
    """With Redis, a request's settlement of its limits is sent while its usage record is
    being committed, not after the commit: one round trip less before the response ends.
    Both still end before the request does (its concurrency slot is free for the next)."""
    async with rig.database.begin() as conn:
        await set_tier(conn, Tier("one", Limits(rpm=100, tpm=None, concurrency=1)))
        await update_org(conn, rig.org_id, tier="one")
    limiter = _RemoteLimiter()
    rig.accountant = rig.new_accountant(limiter)
    gateway = await rig.serve(free={"text": "a b c"})
    generation = await gateway.generate(rig.principal, chat("free"), "chat.completions")
    path = rig.database.url.database
    assert path is not None
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # no commit gets through until the rollback

    async def drain() -> None:
        async for _ in generation:
            pass
        await generation.aclose()

    draining = asyncio.create_task(drain())
    try:
        await eventually(limiter.sent.is_set, timeout=3, what="the settlement sent")
        assert not await rig.records()  # the usage record is not committed yet
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    await asyncio.sleep(0.05)
    assert not draining.done()  # the request waits for the limits' reply too
    limiter.answer.set()
    await draining
    assert len(await rig.records()) == 1
    await run(gateway, rig.principal, chat("free"))  # concurrency 1: its slot came back


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "remote"])
async def test_a_usage_record_that_fails_to_commit_still_frees_the_limits(
    rig: Rig, remote: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refusing a request's usage record (recovery settles it later) must not
    leave its concurrency slot taken: the next request of a concurrency-1 tier is admitted,
    whether the limits are settled after the write or beside it."""
    async with rig.database.begin() as conn:
        await set_tier(conn, Tier("one", Limits(rpm=100, tpm=None, concurrency=1)))
        await update_org(conn, rig.org_id, tier="one")
    limiter = _RemoteLimiter() if remote else InProcessLimiter()
    if isinstance(limiter, _RemoteLimiter):
        limiter.answer.set()
    rig.accountant = rig.new_accountant(limiter)
    gateway = await rig.serve(free={"text": "a b c"})
    ledger = rig.accountant.ledger

    async def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database is down")

    monkeypatch.setattr(ledger, "write", refused)
    with pytest.raises(RuntimeError, match="the database is down"):
        await run(gateway, rig.principal, chat("free"))
    monkeypatch.undo()
    await run(gateway, rig.principal, chat("free"))  # concurrency 1: its slot came back
    assert len(await rig.records()) == 1  # the second; the first is left to recovery


async def test_recovery_bills_a_killed_request_by_its_checkpoint(rig: Rig) -> None:
    """A process dies mid-stream; the next start settles the hold once from the checkpoint."""
    gateway = await rig.serve(priced={"text": "a b c d e f g h", "token_delay": 0.01})
    await rig.top_up(1_000)
    doomed = chat()
    generation = await gateway.generate(rig.principal, doomed, "chat.completions")
    await generation.__anext__()
    async with rig.database.connect() as conn:
        [row] = await load_inflight(conn)
    assert row.request_id == doomed.request_id and row.checkpoint is None  # admitted only
    rig.clock.advance(0.5)  # a checkpoint interval passes
    for _ in range(2):
        await generation.__anext__()

    async def checkpointed_row() -> InFlight | None:  # written in the background
        async with rig.database.connect() as conn:
            [row] = await load_inflight(conn)
        return row if row.checkpoint is not None else None

    row = await eventually(checkpointed_row, what="the checkpoint")
    assert row.checkpoint is not None
    checkpointed = row.checkpoint.completion_tokens
    assert checkpointed >= 1
    # "kill -9": the generation is never closed; a new process starts on the same database.
    restarted = rig.new_accountant()
    assert await restarted.recover() == 1
    [record] = await rig.records()
    assert record["termination"] == "gateway_killed"
    assert record["cost_micros"] == 4 * 1 + checkpointed * 2
    ledger = await restarted.ledger.refresh()
    assert ledger.open_holds() == []
    assert ledger.balance(cash(rig.org_id)) == 1_000 - record["cost_micros"]
    assert await restarted.recover() == 0  # nothing left: recovering twice bills nothing
    async with rig.database.connect() as conn:
        assert await load_inflight(conn) == []


async def test_recovery_releases_a_request_killed_before_its_first_token(rig: Rig) -> None:
    gateway = await rig.serve(priced={"text": "a b c", "first_token_delay": 5})
    await rig.top_up(1_000)
    pending = asyncio.create_task(gateway.generate(rig.principal, chat(), "chat.completions"))
    await eventually(lambda: rig.engines["priced"].stats.streams_started, what="the engine")
    restarted = rig.new_accountant()
    assert await restarted.recover() == 1
    [record] = await rig.records()
    assert (record["termination"], record["cost_micros"]) == ("gateway_killed", 0)
    assert (await restarted.ledger.refresh()).balance(cash(rig.org_id)) == 1_000
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)


async def test_usd_organizations_pay_usd_prices(rig: Rig, tmp_path: Path) -> None:
    orgs = OrganizationRepository(rig.database)
    usd = await orgs.create("yankee", NOW_MS, currency="USD")
    async with rig.database.begin() as conn:
        await set_price(conn, ModelPrice("priced", 3_000_000, 0, 3_000_000, None, Currency.USD))
    gateway = await rig.serve(priced={"text": "a b c"})
    principal = Principal("om_usd", usd.id, "member")
    await rig.accountant.ledger.execute(TopUp("u1", usd.id, 1_000))
    await run(gateway, principal, chat())
    async with rig.database.connect() as conn:
        row = (
            await conn.execute(
                select(usage_records.c.cost_micros, usage_records.c.currency).where(
                    usage_records.c.org_id == usd.id
                )
            )
        ).one()
        count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar()
    assert tuple(row) == (7 * 3, "USD") and count == 1


async def test_a_client_gone_during_admission_leaves_no_hold(rig: Rig) -> None:
    """The hold commits, then the caller is cancelled before it hears back: it is released."""

    class SlowToAnswer(LedgerStore):
        async def execute(self, command, **writes):  # type: ignore[no-untyped-def]
            events = await super().execute(command, **writes)
            if isinstance(command, Hold):
                placed.set()
                # Committed, and slow to answer: the caller is cancelled while it waits.
                await asyncio.sleep(0.2)
            return events

    placed = asyncio.Event()
    rig.accountant.ledger = SlowToAnswer(rig.database, rig.clock.now_ms)
    gateway = await rig.serve(priced={"text": "a b c"})
    await rig.top_up(1_000)
    admission = asyncio.create_task(gateway.generate(rig.principal, chat(), "chat.completions"))
    await placed.wait()
    admission.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admission
    ledger = await rig.accountant.ledger.refresh()
    assert ledger.open_holds() == []
    assert ledger.balance(cash(rig.org_id)) == 1_000
    assert rig.engines["priced"].stats.streams_started == 0
    async with rig.database.connect() as conn:
        assert await load_inflight(conn) == []


async def test_an_engine_refusing_before_its_first_token_is_a_refusal(rig: Rig) -> None:
    """Every deployment busy (an upstream's 429) is "retry later", not an engine failure:
    nothing is recorded or charged and the hold is released."""
    gateway = await rig.serve(
        priced={"text": "a b c", "fail_first_streams": 1, "failure": "upstream_unavailable"}
    )
    await rig.top_up(1_000)
    with pytest.raises(UpstreamUnavailable):
        await gateway.generate(rig.principal, chat(), "chat.completions")
    assert await rig.records() == []
    ledger = await rig.accountant.ledger.refresh()
    assert ledger.open_holds() == [] and ledger.balance(cash(rig.org_id)) == 1_000
    assert await gateway.wait_idle(1.0)
    await run(gateway, rig.principal, chat())  # the next one is served and charged
    assert len(await rig.records()) == 1
