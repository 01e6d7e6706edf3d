"""The double-entry ledger with holds, packs and budgets (core/ledger.py, ledger_events.py)."""

from __future__ import annotations

from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydantic import Field, TypeAdapter

from openmaas.core.errors import BudgetExceeded, InsufficientBalance, InvalidRequest, NotFound
from openmaas.core.ledger import Ledger, RecentIds
from openmaas.core.ledger_events import (
    TOKENS,
    BudgetPeriod,
    Command,
    Event,
    ExpirePacks,
    Funded,
    GrantPack,
    GrantPromo,
    Hold,
    HoldPlaced,
    HoldResolved,
    OpenOrg,
    Release,
    SetBudget,
    SetCreditLimit,
    Settle,
    TopUp,
    Transfer,
    cash,
    held,
    held_tokens,
    pack,
    period_key,
    promo,
    system,
)
from openmaas.core.money import Currency
from openmaas.core.prices import LINE_SLACK, AppliedPrice, ModelPrice
from openmaas.core.types import Usage

# 1 micro per input token, 2 per output token: easy to check by hand.
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 500_000, 2_000_000))
DAY_MS = 86_400_000
EVENT_LOG = TypeAdapter(list[Annotated[Event, Field(discriminator="kind")]])


def new_ledger(balance: int = 0, credit_limit: int = 0) -> Ledger:
    ledger = Ledger()
    ledger.execute(OpenOrg("o", Currency.CNY, credit_limit))
    if balance:
        ledger.execute(TopUp("t0", "o", balance))
    return ledger


def hold(
    request_id: str,
    prompt: int = 10,
    max_out: int = 10,
    at_ms: int = 0,
    budget_scopes: tuple[str, ...] = (),
) -> Hold:
    return Hold(request_id, "o", PRICE.worst_case(prompt, max_out), at_ms, budget_scopes)


def test_a_request_lifecycle_moves_money_by_double_entry() -> None:
    ledger = new_ledger(balance=1_000)
    (placed,) = ledger.execute(hold("r1"))
    assert isinstance(placed, HoldPlaced)
    worst = 20 * 2 + LINE_SLACK  # all 20 tokens at the dearest price, plus the rounding slack
    assert placed.cash == worst
    assert ledger.balance(cash("o")) == 1_000 - worst
    assert ledger.balance(held("o")) == worst
    (resolved,) = ledger.execute(Settle("r1", Usage(prompt_tokens=4, completion_tokens=3)))
    assert isinstance(resolved, HoldResolved)
    assert resolved.charged == 4 + 6
    assert ledger.balance(cash("o")) == 1_000 - 10
    assert ledger.balance(system("CNY", "revenue")) == 10
    assert ledger.balance(held("o")) == 0
    assert ledger.totals_by_unit() == {"CNY": 0, TOKENS: 0}
    assert ledger.open_holds() == []


def test_settling_twice_changes_nothing() -> None:
    ledger = new_ledger(balance=1_000)
    ledger.execute(hold("r1"))
    ledger.execute(Settle("r1", Usage(prompt_tokens=4, completion_tokens=3)))
    snapshot = dict(ledger.balances)
    assert ledger.execute(Settle("r1", Usage(prompt_tokens=4, completion_tokens=3))) == ()
    assert ledger.execute(Settle("r1", Usage(prompt_tokens=400))) == ()
    assert ledger.execute(Release("r1")) == ()
    assert ledger.execute(hold("r1")) == ()  # a request id is held at most once
    assert ledger.balances == snapshot


def test_release_returns_everything() -> None:
    ledger = new_ledger(balance=100)
    ledger.execute(hold("r1"))
    (released,) = ledger.execute(Release("r1"))
    assert isinstance(released, HoldResolved) and released.released and released.charged == 0
    assert ledger.balance(cash("o")) == 100
    assert ledger.execute(Settle("r1", Usage(prompt_tokens=5))) == ()  # resolved at most once


def test_settling_an_unknown_request_is_a_bug() -> None:
    with pytest.raises(KeyError):
        new_ledger().execute(Settle("nope", Usage()))


def test_a_hold_the_balance_cannot_cover_is_refused_and_changes_nothing() -> None:
    ledger = new_ledger(balance=20)
    snapshot = dict(ledger.balances)
    with pytest.raises(InsufficientBalance) as refused:
        ledger.execute(hold("r1"))
    assert refused.value.needed_micros == 40 + LINE_SLACK
    assert refused.value.available_micros == 20
    assert ledger.balances == snapshot and ledger.open_holds() == []


def test_two_hundred_holds_against_a_balance_for_ten_admit_exactly_ten() -> None:
    per_request = PRICE.worst_case(100, 100).micros
    ledger = new_ledger(balance=10 * per_request)
    admitted, refused = 0, 0
    for i in range(200):
        try:
            ledger.execute(hold(f"r{i}", 100, 100))
            admitted += 1
        except InsufficientBalance:
            refused += 1
    assert (admitted, refused) == (10, 190)
    assert ledger.balance(cash("o")) == 0
    assert ledger.balance(held("o")) == 10 * per_request
    assert len(ledger.open_holds()) == 10


def test_post_paid_organizations_may_go_down_to_their_credit_limit() -> None:
    ledger = new_ledger(credit_limit=50)
    ledger.execute(hold("r1", 5, 5))  # 10 tokens * 2 + 3 = 23 micros
    ledger.execute(hold("r2", 5, 5))  # 46
    with pytest.raises(InsufficientBalance):
        ledger.execute(hold("r3", 5, 5))  # 69 > 50
    assert ledger.balance(cash("o")) == -46
    with pytest.raises(InvalidRequest):
        ledger.execute(SetCreditLimit("o", 40))  # the balance is already below -40
    ledger.execute(SetCreditLimit("o", 100))
    ledger.execute(hold("r3", 5, 5))
    assert ledger.available("o") == 100 - 69


def test_promotional_credit_is_used_before_cash_and_returned_to_itself() -> None:
    ledger = new_ledger(balance=100)
    ledger.execute(GrantPromo("g1", "o", 15))
    (placed,) = ledger.execute(hold("r1"))
    assert isinstance(placed, HoldPlaced) and (placed.promo, placed.cash) == (15, 28)
    ledger.execute(Settle("r1", Usage(prompt_tokens=5, completion_tokens=1)))  # 7 micros
    assert ledger.balance(promo("o")) == 15 - 7
    assert ledger.balance(cash("o")) == 100
    assert ledger.execute(GrantPromo("g1", "o", 15)) == ()  # idempotent by grant id


def test_top_ups_are_idempotent_and_checked() -> None:
    ledger = new_ledger()
    ledger.execute(TopUp("pay-1", "o", 500))
    assert ledger.execute(TopUp("pay-1", "o", 500)) == ()
    assert ledger.balance(cash("o")) == 500
    with pytest.raises(InvalidRequest):
        ledger.execute(TopUp("pay-2", "o", 0))
    with pytest.raises(NotFound):
        ledger.execute(TopUp("pay-3", "nobody", 5))
    assert ledger.execute(OpenOrg("o")) == ()


def test_packs_are_used_before_cash_oldest_expiring_first() -> None:
    ledger = new_ledger(balance=1_000)
    ledger.execute(GrantPack("late", "o", frozenset({"m"}), 100, expires_at_ms=2 * DAY_MS))
    ledger.execute(GrantPack("soon", "o", frozenset({"m"}), 15, expires_at_ms=DAY_MS))
    ledger.execute(GrantPack("other", "o", frozenset({"x"}), 1_000, expires_at_ms=DAY_MS))
    (placed,) = ledger.execute(hold("r1", 10, 10))
    assert isinstance(placed, HoldPlaced)
    assert placed.packs == (("soon", 15), ("late", 5)) and placed.cash == 0
    ledger.execute(Settle("r1", Usage(prompt_tokens=10, completion_tokens=6)))
    assert ledger.balance(pack("soon")) == 0
    assert ledger.balance(pack("late")) == 100 - 1  # 16 tokens used, 15 + 1
    assert ledger.balance(pack("other")) == 1_000  # not for this model
    assert ledger.balance(cash("o")) == 1_000
    assert ledger.balance(system(TOKENS, "consumed")) == 16


def test_what_a_pack_cannot_cover_is_paid_in_cash() -> None:
    ledger = new_ledger(balance=1_000)
    ledger.execute(GrantPack("p", "o", frozenset({"m"}), 12, expires_at_ms=DAY_MS))
    (placed,) = ledger.execute(hold("r1", 10, 10))
    assert isinstance(placed, HoldPlaced)
    assert placed.packs == (("p", 12),) and placed.cash == 8 * 2 + LINE_SLACK
    (resolved,) = ledger.execute(Settle("r1", Usage(prompt_tokens=10, completion_tokens=10)))
    assert isinstance(resolved, HoldResolved)
    assert resolved.pack_tokens == 12 and resolved.charged == 8 * 2  # output tokens 3..10
    assert ledger.balance(cash("o")) == 1_000 - 16


def test_expired_packs_are_unusable_and_their_tokens_leave() -> None:
    ledger = new_ledger(balance=1_000)
    ledger.execute(GrantPack("p", "o", frozenset({"m"}), 100, expires_at_ms=DAY_MS))
    (placed,) = ledger.execute(hold("r1", 10, 10, at_ms=DAY_MS - 1))
    assert isinstance(placed, HoldPlaced) and placed.packs == (("p", 20),)
    events = ledger.execute(ExpirePacks(at_ms=DAY_MS))
    assert len(events) == 1 and ledger.balance(pack("p")) == 0
    assert ledger.execute(ExpirePacks(at_ms=DAY_MS + 1)) == ()
    # A request admitted before expiry keeps its held tokens; what it did not use expires.
    ledger.execute(Settle("r1", Usage(prompt_tokens=5, completion_tokens=5)))
    assert ledger.balance(system(TOKENS, "expired")) == 80 + 10
    assert ledger.balance(held_tokens("o")) == 0
    (later,) = ledger.execute(hold("r2", 10, 10, at_ms=DAY_MS))
    assert isinstance(later, HoldPlaced) and later.packs == () and later.cash > 0


def test_a_settlement_above_the_hold_never_goes_below_the_floor() -> None:
    ledger = new_ledger(balance=30)
    ledger.execute(hold("r1", 1, 1))  # 2 tokens: 4 + slack held
    # The engine counted far more prompt than the estimate (an admission bug): the charge
    # is exact, the balance stops at its floor and the platform records the shortfall.
    (resolved,) = ledger.execute(Settle("r1", Usage(prompt_tokens=100)))
    assert isinstance(resolved, HoldResolved)
    assert resolved.charged == 100 and resolved.shortfall == 70
    assert ledger.balance(cash("o")) == 0
    assert ledger.balance(system("CNY", "revenue")) == 100
    assert ledger.balance(system("CNY", "shortfall")) == -70
    assert ledger.totals_by_unit()["CNY"] == 0


def test_budgets_stop_hard_per_day_and_count_what_was_charged() -> None:
    ledger = new_ledger(balance=10_000)
    ledger.execute(SetBudget("key:k", BudgetPeriod.DAY, 50))
    scopes = ("key:k", "project:p")
    ledger.execute(hold("r1", 5, 5, budget_scopes=scopes))  # 23 held against 50
    ledger.execute(hold("r2", 5, 5, budget_scopes=scopes))  # 46
    with pytest.raises(BudgetExceeded) as refused:
        ledger.execute(hold("r3", 5, 5, budget_scopes=scopes))
    assert (refused.value.scope, refused.value.period) == ("key:k", "day")
    ledger.execute(Settle("r1", Usage(prompt_tokens=1)))  # charged 1, frees 22
    ledger.execute(hold("r3", 5, 5, budget_scopes=scopes))
    assert ledger.budget_spent[("key:k", "day:1970-01-01")] == 1
    # The next UTC day starts a new budget.
    ledger.execute(hold("r4", at_ms=DAY_MS, budget_scopes=scopes))
    ledger.execute(SetBudget("key:k", BudgetPeriod.DAY, None))
    ledger.execute(SetBudget("project:p", BudgetPeriod.MONTH, 0))
    with pytest.raises(BudgetExceeded):
        ledger.execute(hold("r5", at_ms=0, budget_scopes=scopes))
    ledger.execute(hold("r5", at_ms=0, budget_scopes=("key:k",)))


def test_period_keys_are_utc() -> None:
    assert period_key(BudgetPeriod.DAY, 0) == "1970-01-01"
    assert period_key(BudgetPeriod.MONTH, 31 * DAY_MS) == "1970-02"
    assert period_key(BudgetPeriod.DAY, DAY_MS - 1) == "1970-01-01"


@given(st.integers(min_value=0, max_value=4_000_000_000_000))
def test_period_keys_change_exactly_at_utc_midnight(at_ms: int) -> None:
    day_start = at_ms - at_ms % DAY_MS
    assert period_key(BudgetPeriod.DAY, day_start) == period_key(BudgetPeriod.DAY, at_ms)
    assert period_key(BudgetPeriod.DAY, day_start + DAY_MS - 1) == period_key(
        BudgetPeriod.DAY, at_ms
    )
    if day_start:
        assert period_key(BudgetPeriod.DAY, day_start - 1) != period_key(BudgetPeriod.DAY, at_ms)
    assert period_key(BudgetPeriod.DAY, at_ms).startswith(period_key(BudgetPeriod.MONTH, at_ms))


def test_a_price_in_another_currency_is_a_bug() -> None:
    usd = AppliedPrice(ModelPrice("m", 1, 1, 1, currency=Currency.USD))
    with pytest.raises(ValueError):
        new_ledger(balance=100).execute(Hold("r", "o", usd.worst_case(1, 1), 0))


def test_the_event_log_round_trips_through_json_and_replays_to_the_same_state() -> None:
    log: list[Event] = [*Ledger().decide(OpenOrg("o"))]
    ledger = Ledger.replay(log)
    commands: list[Command] = [
        TopUp("t", "o", 10_000),
        GrantPromo("g", "o", 5),
        GrantPack("p", "o", frozenset({"m"}), 7, DAY_MS),
        SetBudget("key:k", BudgetPeriod.MONTH, 1_000),
        SetCreditLimit("o", 10),
        hold("r1", budget_scopes=("key:k",)),
        Settle("r1", Usage(prompt_tokens=9, cached_tokens=2, completion_tokens=4)),
        hold("r2"),
        ExpirePacks(DAY_MS),
        Release("r2"),
    ]
    for command in commands:
        log += ledger.execute(command)
    restored = EVENT_LOG.validate_json(EVENT_LOG.dump_json(log))
    assert restored == log
    assert Ledger.replay(restored) == ledger


# -- the stateful property test ---------------------------------------------------------

ORGS = ("prepaid", "postpaid")
SCOPES = ("key:a", "project:b")


class LedgerMachine(RuleBasedStateMachine):
    """Any sequence of commands, with crashes that rebuild the state from the event log."""

    @initialize()
    def open_orgs(self) -> None:
        self.ledger = Ledger()
        self.log: list[Event] = []
        self.now = 0
        self.quotes: dict[str, int] = {}  # request id -> worst-case tokens
        self.resolved: set[str] = set()
        self.charged = 0  # what every settlement charged, by its events
        self.counter = 0
        self.last_top_up: TopUp | None = None
        self.run(OpenOrg("prepaid"))
        self.run(OpenOrg("postpaid", credit_limit=500))

    def run(self, command: Command) -> tuple[Event, ...]:
        events = self.ledger.execute(command)
        self.log += events
        self.charged += sum(e.charged for e in events if isinstance(e, HoldResolved))
        return events

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    @rule(org=st.sampled_from(ORGS), amount=st.integers(1, 2_000))
    def top_up(self, org: str, amount: int) -> None:
        self.last_top_up = TopUp(self.next_id("t"), org, amount)
        self.run(self.last_top_up)

    @precondition(lambda self: self.last_top_up is not None)
    @rule()
    def retry_last_top_up(self) -> None:
        """A retried admin request reuses its id: nothing happens twice."""
        snapshot = dict(self.ledger.balances)
        assert self.last_top_up is not None
        assert self.run(self.last_top_up) == ()
        assert self.ledger.balances == snapshot

    @rule(org=st.sampled_from(ORGS), amount=st.integers(1, 200))
    def grant_promo(self, org: str, amount: int) -> None:
        self.run(GrantPromo(self.next_id("g"), org, amount))

    @rule(org=st.sampled_from(ORGS), tokens=st.integers(1, 300), life=st.integers(1, 5))
    def grant_pack(self, org: str, tokens: int, life: int) -> None:
        models = frozenset({"m"})
        self.run(GrantPack(self.next_id("p"), org, models, tokens, self.now + life * 1_000))

    @rule(step=st.integers(0, 3_000))
    def advance_and_expire(self, step: int) -> None:
        self.now += step
        self.run(ExpirePacks(self.now))

    @rule(scope=st.sampled_from(SCOPES), period=st.sampled_from(BudgetPeriod),
          limit=st.none() | st.integers(0, 3_000))  # fmt: skip
    def set_budget(self, scope: str, period: BudgetPeriod, limit: int | None) -> None:
        self.run(SetBudget(scope, period, limit))

    @rule(org=st.sampled_from(ORGS), prompt=st.integers(0, 100), max_out=st.integers(0, 100),
          scopes=st.lists(st.sampled_from(SCOPES), unique=True))  # fmt: skip
    def hold(self, org: str, prompt: int, max_out: int, scopes: list[str]) -> None:
        request_id = self.next_id("r")
        snapshot = dict(self.ledger.balances)
        quote = PRICE.worst_case(prompt, max_out)
        try:
            self.run(Hold(request_id, org, quote, self.now, tuple(scopes)))
        except (InsufficientBalance, BudgetExceeded):
            assert self.ledger.balances == snapshot  # a refusal changes nothing
            return
        self.quotes[request_id] = quote.tokens

    @precondition(lambda self: self.ledger.open_holds())
    @rule(data=st.data(), over=st.booleans())
    def settle(self, data: st.DataObject, over: bool) -> None:
        request_id = data.draw(st.sampled_from(self.ledger.open_holds()))
        limit = self.quotes[request_id] * (3 if over else 1)
        prompt = data.draw(st.integers(0, limit))
        completion = data.draw(st.integers(0, limit - prompt))
        usage = Usage(prompt, data.draw(st.integers(0, prompt)), completion)
        (event,) = self.run(Settle(request_id, usage))
        assert isinstance(event, HoldResolved)
        if prompt + completion <= self.quotes[request_id]:
            assert event.shortfall == 0  # within its worst case, a hold always covers it
        self.resolved.add(request_id)

    @precondition(lambda self: self.ledger.open_holds())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self.ledger.open_holds()))
        self.run(Release(request_id))
        self.resolved.add(request_id)

    @precondition(lambda self: self.resolved)
    @rule(data=st.data())
    def settle_again(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.resolved)))
        snapshot = dict(self.ledger.balances)
        assert self.run(Settle(request_id, Usage(prompt_tokens=5))) == ()
        assert self.run(Release(request_id)) == ()
        assert self.ledger.balances == snapshot

    @rule()
    def crash(self) -> None:
        """kill -9: only the committed event log survives; the state is rebuilt from it."""
        restored = EVENT_LOG.validate_json(EVENT_LOG.dump_json(self.log))
        rebuilt = Ledger.replay(restored)
        assert rebuilt == self.ledger
        self.ledger = rebuilt

    @invariant()
    def every_unit_sums_to_zero(self) -> None:
        assert all(total == 0 for total in self.ledger.totals_by_unit().values())

    @invariant()
    def no_balance_is_below_its_floor(self) -> None:
        for account, floor in self.ledger.floors.items():
            assert self.ledger.balance(account) >= floor, account
        for org in ORGS:
            assert self.ledger.available(org) >= 0

    @invariant()
    def holds_accounts_match_the_open_holds(self) -> None:
        for org in ORGS:
            open_holds = [h for h in self.ledger.holds.values() if h.org == org]
            assert self.ledger.balance(held(org)) == sum(h.money for h in open_holds)
            tokens = sum(n for h in open_holds for _, n in h.packs)
            assert self.ledger.balance(held_tokens(org)) == tokens

    @invariant()
    def revenue_is_what_was_charged(self) -> None:
        assert self.ledger.balance(system("CNY", "revenue")) == self.charged
        for key, amount in self.ledger.budget_held.items():
            assert amount >= 0, key


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def test_grants_are_idempotent_and_bad_input_is_refused() -> None:
    ledger = new_ledger()
    grant = GrantPack("p", "o", frozenset({"m"}), 10, DAY_MS)
    assert len(ledger.execute(grant)) == 1
    assert ledger.execute(grant) == ()
    assert ledger.balance(pack("p")) == 10
    with pytest.raises(InvalidRequest):
        ledger.execute(GrantPack("q", "o", frozenset({"m"}), 0, DAY_MS))
    with pytest.raises(InvalidRequest):
        ledger.execute(OpenOrg("x", credit_limit=-1))
    with pytest.raises(InvalidRequest):
        ledger.execute(SetBudget("key:k", BudgetPeriod.DAY, -5))
    with pytest.raises(TypeError):
        ledger.execute("topup")  # type: ignore[arg-type]


def test_replay_refuses_an_invalid_transfer_whole() -> None:
    ledger = new_ledger()
    snapshot = (dict(ledger.balances), set(ledger.funding_ids))
    bad = [
        Transfer(system(TOKENS, "issued"), cash("o"), 5),  # across units
        Transfer(system("CNY", "external"), cash("o"), 0),  # nothing
        Transfer(system("CNY", "external"), cash("ghost"), 5),  # an account never opened
    ]
    for transfer in bad:
        with pytest.raises(ValueError):
            ledger.apply(Funded("x", (Transfer(system("CNY", "external"), cash("o"), 1), transfer)))
    assert (ledger.balances, ledger.funding_ids) == snapshot


def test_the_settled_ids_kept_are_a_window_whatever_was_settled() -> None:
    """Memory bounded: the state keeps the ids of the last ``window`` settlements, not one
    per request ever settled; a repeat inside the window is answered from memory."""
    ledger = Ledger(settled_ids=RecentIds(8))
    ledger.execute(OpenOrg("o"))
    ledger.execute(TopUp("t", "o", 1_000_000))
    for n in range(100):
        ledger.execute(hold(f"r{n}"))
        ledger.execute(Settle(f"r{n}", Usage(prompt_tokens=1)))
    assert len(ledger.settled_ids) == 8 and ledger.holds == {}
    assert [ledger.settled(f"r{n}") for n in (91, 92, 99)] == [False, True, True]
    assert ledger.decide(Settle("r99", Usage(prompt_tokens=5))) == ()
    ledger.remember_settled("r0")  # the store found r0's settlement in the log
    assert ledger.decide(Settle("r0", Usage(prompt_tokens=5))) == ()
    assert len(ledger.settled_ids) == 8
    with pytest.raises(ValueError):
        RecentIds(0)
