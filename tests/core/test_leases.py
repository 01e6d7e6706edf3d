"""Leases: gateway processes admit priced requests in memory against money the ledger set
aside for them (core/leases.py with the lease commands of core/ledger.py).

The stateful test runs three processes' lease books against one ledger, with per-request
holds where no lease is granted, top-ups, idle time and ``kill -9`` of a process (its
requests recovered and its leases closed by a survivor), and checks after every step that
the sum of what the processes may spend never exceeds what the organization may spend:
every reservation is covered by its lease, the leases hold exactly what the ledger moved
into them, no floor is crossed and no request is ever charged beyond what it reserved."""

from __future__ import annotations

import itertools
from typing import Annotated

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from pydantic import Field, TypeAdapter

from openmaas.core.errors import InsufficientBalance
from openmaas.core.leases import LeaseBook, LeasePolicy, Shrink
from openmaas.core.ledger import Ledger
from openmaas.core.ledger_events import (
    DrawLease,
    Event,
    GrantPromo,
    Hold,
    LeaseSpent,
    OpenOrg,
    Release,
    Settle,
    ShrinkLease,
    SpendLease,
    TopUp,
    cash,
    held,
    leased,
    leased_promo,
    promo,
    system,
)
from openmaas.core.money import Currency
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage

PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 500_000, 2_000_000))  # 1 and 2 micros/token
EVENT_LOG = TypeAdapter(list[Annotated[Event, Field(discriminator="kind")]])


def funded(amount: int, promo_amount: int = 0, credit_limit: int = 0) -> Ledger:
    ledger = Ledger()
    ledger.execute(OpenOrg("o", Currency.CNY, credit_limit))
    if amount:
        ledger.execute(TopUp("t0", "o", amount))
    if promo_amount:
        ledger.execute(GrantPromo("g0", "o", promo_amount))
    return ledger


def book_of(ledger: Ledger, **policy: int | float) -> LeaseBook:
    return LeaseBook(LeasePolicy(**policy), lambda lease_id: ledger.leases[lease_id].left)


def draw(ledger: Ledger, book: LeaseBook, lease_id: str, amount: int, now: float) -> None:
    want, at_least = book.want("o", amount, now)
    ledger.execute(DrawLease(lease_id, "o", "p1", want, at_least))
    shrink = book.opened("o", lease_id, now)
    if shrink is not None:
        ledger.execute(ShrinkLease(shrink.lease_id, shrink.keep))


# -- the ledger's lease commands ------------------------------------------------------


def test_a_lease_takes_promotional_credit_first_and_at_most_its_share() -> None:
    ledger = funded(1_000, promo_amount=200)
    ledger.execute(DrawLease("l1", "o", "p1", want=10_000, at_least=10, share_bp=5000))
    lease = ledger.leases["l1"]
    assert (lease.promo, lease.cash) == (200, 400)  # half of 1,200, promo first
    assert ledger.balance(leased("o")) == 400 and ledger.balance(leased_promo("o")) == 200
    assert ledger.may_spend("o") == 600
    assert ledger.leased_parts("o") == (200, 400)


def test_a_lease_below_its_minimum_is_refused_and_moves_nothing() -> None:
    ledger = funded(100)
    with pytest.raises(InsufficientBalance):
        ledger.execute(DrawLease("l1", "o", "p1", want=1_000, at_least=30, share_bp=2500))
    assert ledger.balance(cash("o")) == 100 and ledger.leases == {}


def test_spending_takes_from_the_lease_at_most_what_the_request_reserved() -> None:
    ledger = funded(10_000)
    ledger.execute(DrawLease("l1", "o", "p1", want=1_000, at_least=100, share_bp=10_000))
    usage = Usage(prompt_tokens=100, completion_tokens=100)  # costs 300
    (spent,) = ledger.execute(SpendLease("r1", "l1", PRICE, usage, reserved=250))
    assert isinstance(spent, LeaseSpent)
    assert (spent.charged, spent.from_promo + spent.from_cash, spent.shortfall) == (300, 250, 0)
    assert ledger.leases["l1"].left == 750  # 50 beyond the reservation came from cash
    assert ledger.balance(cash("o")) == 9_000 - 50
    assert ledger.execute(SpendLease("r1", "l1", PRICE, usage, reserved=250)) == ()  # once
    assert ledger.execute(Settle("r1", usage)) == ()  # and never again as a hold


def test_shrinking_gives_back_cash_first_and_closing_everything() -> None:
    ledger = funded(1_000, promo_amount=100)
    ledger.execute(DrawLease("l1", "o", "p1", want=500, at_least=1, share_bp=10_000))
    assert (ledger.leases["l1"].promo, ledger.leases["l1"].cash) == (100, 400)
    ledger.execute(ShrinkLease("l1", keep=150))
    assert (ledger.leases["l1"].promo, ledger.leases["l1"].cash) == (100, 50)
    ledger.execute(ShrinkLease("l1", keep=0))
    assert ledger.leases["l1"].closed and ledger.leases["l1"].left == 0
    assert (ledger.balance(cash("o")), ledger.balance(promo("o"))) == (1_000, 100)
    assert ledger.execute(ShrinkLease("l1", keep=0)) == ()
    assert ledger.open_leases() == []


def test_lease_events_replay_to_the_same_state() -> None:
    ledger = Ledger()
    events: list[Event] = []
    for command in (
        OpenOrg("o", Currency.CNY, 0),
        TopUp("t0", "o", 5_000),
        GrantPromo("g0", "o", 300),
        DrawLease("l1", "o", "p1", want=2_000, at_least=10, share_bp=10_000),
        SpendLease("r1", "l1", PRICE, Usage(prompt_tokens=10, completion_tokens=5), 40),
        ShrinkLease("l1", keep=100),
        ShrinkLease("l1", keep=0),
    ):
        events += ledger.execute(command)
    replayed = Ledger.replay(EVENT_LOG.validate_json(EVENT_LOG.dump_json(events)))
    assert replayed.balances == ledger.balances
    assert replayed.leases == ledger.leases and replayed.settled_ids == ledger.settled_ids


# -- one process's book ---------------------------------------------------------------


def test_requests_fit_a_lease_until_its_money_is_reserved() -> None:
    ledger = funded(100_000)
    book = book_of(ledger, min_requests=4, share_bp=10_000)
    assert book.reserve("o", "r0", 100, now=0.0) is None  # no lease yet
    draw(ledger, book, "l1", 100, now=0.0)
    assert ledger.leases["l1"].left == 400  # at least 4 worst cases (nothing recent)
    assert [book.reserve("o", f"r{i}", 100, now=0.0) for i in range(5)] == ["l1"] * 4 + [None]
    assert book.reserved("o") == 400


def test_a_replaced_lease_gives_back_what_nothing_reserved_then_closes() -> None:
    ledger = funded(100_000)
    book = book_of(ledger, min_requests=4, share_bp=10_000)
    draw(ledger, book, "l1", 100, now=0.0)
    for i in range(3):
        assert book.reserve("o", f"r{i}", 100, now=0.0) == "l1"  # of 400
    assert book.reserve("o", "r3", 150, now=0.0) is None  # 400 - 300 < 150
    draw(ledger, book, "l2", 150, now=0.0)  # l1 retires, keeping the 300 its requests hold
    assert ledger.leases["l1"].left == 300
    assert book.reserve("o", "r3", 150, now=0.0) == "l2"
    usage = Usage(prompt_tokens=50, completion_tokens=10)  # 70 of the 100 reserved
    for i in range(3):
        ledger.execute(SpendLease(f"r{i}", "l1", PRICE, usage, reserved=100))
        shrink = book.release(f"r{i}")
        assert (shrink is None) == (i < 2)
    assert shrink == Shrink("l1", 0)
    ledger.execute(ShrinkLease(shrink.lease_id, shrink.keep))
    assert ledger.open_leases() == ["l2"] and ledger.leases["l1"].left == 0
    assert ledger.balance(system("CNY", "revenue")) == 210


def test_an_idle_lease_is_closed_and_a_busy_one_is_not() -> None:
    ledger = funded(100_000)
    book = book_of(ledger, seconds=2.0, min_requests=1, share_bp=10_000)
    draw(ledger, book, "l1", 100, now=0.0)
    assert book.reserve("o", "r1", 100, now=0.0) == "l1"
    assert book.idle(now=5.0) == []  # r1 is still open
    assert book.release("r1") is None  # the current lease stays for the next request
    assert book.idle(now=1.0) == []  # last used at 0.0: not idle for 2 s yet
    assert book.idle(now=5.0) == [Shrink("l1", 0)]
    assert book.open_leases() == [] and book.reserve("o", "r2", 100, now=5.0) is None


def test_lease_size_follows_what_the_process_reserved_recently() -> None:
    ledger = funded(10_000_000)
    book = book_of(ledger, seconds=1.0, min_requests=2, share_bp=10_000)
    draw(ledger, book, "l1", 100, now=0.0)
    for i in range(2):
        book.reserve("o", f"a{i}", 100, now=0.5)
    assert book.want("o", 100, now=0.9) == (2 * (200 + 100), 200)  # what it needed lately
    assert book.want("o", 100, now=5.0) == (200, 200)  # quiet for a while: the minimum


# -- many processes, one ledger --------------------------------------------------------

PROCESSES = ("p0", "p1", "p2")


class Processes(RuleBasedStateMachine):
    """Three gateway processes admit, settle and cancel requests against one ledger, with
    leases where the ledger grants them and single holds where it does not."""

    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.ledger = funded(20_000, promo_amount=1_000, credit_limit=500)
        self.funded = 20_000 + 1_000 + 500
        self.policy = LeasePolicy(seconds=2.0, min_requests=3, share_bp=2500)
        self.books = {p: self._new_book() for p in PROCESSES}
        self.open: dict[str, tuple[str, str | None, int, int]] = {}  # id -> p, lease, $, tok
        self.ids = itertools.count()
        self.now = 0.0

    def _new_book(self) -> LeaseBook:
        return LeaseBook(self.policy, lambda lease_id: self.ledger.leases[lease_id].left)

    def _shrink(self, shrink: Shrink | None) -> None:
        if shrink is not None:
            self.ledger.execute(ShrinkLease(shrink.lease_id, shrink.keep))

    @rule(
        target=requests,
        process=st.sampled_from(PROCESSES),
        prompt=st.integers(1, 400),
        max_output=st.integers(0, 400),
    )
    def admit(self, process: str, prompt: int, max_output: int) -> str:
        request_id = f"r{next(self.ids)}"
        quote = PRICE.worst_case(prompt, max_output)
        amount = quote.micros
        book = self.books[process]
        lease_id = book.reserve("o", request_id, amount, self.now)
        if lease_id is None:
            want, at_least = book.want("o", amount, self.now)
            new_id = f"lease{next(self.ids)}"
            try:
                self.ledger.execute(DrawLease(new_id, "o", process, want, at_least, 2500))
            except InsufficientBalance:
                self._shrink(book.retire("o"))
            else:
                self._shrink(book.opened("o", new_id, self.now))
                lease_id = book.reserve("o", request_id, amount, self.now)
                assert lease_id == new_id  # a new lease always fits the request it is for
        if lease_id is None:
            try:
                self.ledger.execute(Hold(request_id, "o", quote, 0))
            except InsufficientBalance:
                return "refused"
        self.open[request_id] = (process, lease_id, amount, prompt + max_output)
        return request_id

    @rule(request=consumes(requests), share=st.floats(0, 1))
    def settle(self, request: str, share: float) -> None:
        if request not in self.open:
            return
        process, lease_id, amount, tokens = self.open.pop(request)
        usage = Usage(prompt_tokens=1, completion_tokens=int((tokens - 1) * share))
        if lease_id is None:
            self.ledger.execute(Settle(request, usage))
            return
        (spent,) = self.ledger.execute(SpendLease(request, lease_id, PRICE, usage, amount))
        assert isinstance(spent, LeaseSpent) and spent.charged <= amount
        self._shrink(self.books[process].release(request))

    @rule(request=consumes(requests))
    def cancel(self, request: str) -> None:
        if request not in self.open:
            return
        process, lease_id, _, _ = self.open.pop(request)
        if lease_id is None:
            self.ledger.execute(Release(request))
        else:
            self._shrink(self.books[process].release(request))

    @rule(seconds=st.floats(0.1, 5.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for book in self.books.values():
            for shrink in book.idle(self.now):
                self._shrink(shrink)

    @rule(process=st.sampled_from(PROCESSES))
    def kill_9(self, process: str) -> None:
        """The process dies; a survivor settles its requests by their last checkpoint
        (here: nothing generated) and closes its leases; it restarts with no leases."""
        for request, (owner, lease_id, amount, _) in list(self.open.items()):
            if owner != process:
                continue
            del self.open[request]
            usage = Usage(prompt_tokens=1)
            if lease_id is None:
                self.ledger.execute(Settle(request, usage))
            else:
                self.ledger.execute(SpendLease(request, lease_id, PRICE, usage, amount))
        for lease_id in self.ledger.open_leases(instance_id=process):
            self.ledger.execute(ShrinkLease(lease_id, 0))
        self.books[process] = self._new_book()

    @rule(amount=st.integers(1, 5_000))
    def top_up(self, amount: int) -> None:
        self.ledger.execute(TopUp(f"topup{next(self.ids)}", "o", amount))
        self.funded += amount

    @invariant()
    def processes_never_commit_more_than_the_organization_may_spend(self) -> None:
        ledger = self.ledger
        for book in self.books.values():  # every reservation is covered by its lease
            for lease_id in book.open_leases():
                lease = ledger.leases[lease_id]
                assert not lease.closed
        for process in self.books:
            for lease_id in ledger.open_leases(instance_id=process):
                reserved = sum(
                    amount for _, lid, amount, _ in self.open.values() if lid == lease_id
                )
                assert reserved <= ledger.leases[lease_id].left
        promo_left, cash_left = ledger.leased_parts("o")
        assert ledger.balance(leased("o")) == cash_left >= 0
        assert ledger.balance(leased_promo("o")) == promo_left >= 0
        assert ledger.balance(cash("o")) >= -500 and ledger.balance(promo("o")) >= 0
        assert ledger.balance(held("o")) >= 0
        # Nobody ever pays beyond what was funded: no charge went to the shortfall account.
        assert ledger.balance(system("CNY", "shortfall")) == 0
        revenue = ledger.balance(system("CNY", "revenue"))
        set_aside = ledger.balance(held("o")) + promo_left + cash_left
        assert revenue + set_aside + ledger.may_spend("o") == self.funded
        assert all(total == 0 for total in ledger.totals_by_unit().values())

    def teardown(self) -> None:
        """Everything ends: every request settles, every lease closes; nothing stays set
        aside and the organization got back all it did not spend."""
        for request in list(self.open):
            self.cancel(request)
        for book in self.books.values():
            for shrink in book.close_all():
                self._shrink(shrink)
        assert self.ledger.open_leases() == [] and self.ledger.holds == {}
        assert self.ledger.leased_parts("o") == (0, 0) and self.ledger.balance(held("o")) == 0


TestProcesses = Processes.TestCase
TestProcesses.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
