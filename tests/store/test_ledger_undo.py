"""Undoing the events of an optimistic batch another process's appends sent back
(store/ledger/undo.py): after any sequence of commands, a batch applied with an ``Undo``
and reverted leaves the ledger deciding as before it (its state equal, field by field)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from openmaas.core.ledger import Ledger, RecentIds
from openmaas.core.ledger_events import (
    BudgetPeriod,
    Command,
    DrawLease,
    ExpirePacks,
    GrantPack,
    GrantPromo,
    Hold,
    OpenOrg,
    Release,
    SetBudget,
    SetCreditLimit,
    Settle,
    ShrinkLease,
    SpendLease,
    TopUp,
)
from openmaas.core.money import Currency
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.store.ledger.undo import Undo

PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 500_000, 2_000_000))
AT_MS = 1_790_000_000_000
ORGS = ("o", "p")
IDS = st.integers(0, 3).map(str)
AMOUNTS = st.integers(1, 400)
LEASES = st.integers(0, 6).map(str).map("l".__add__)

EVERY_COMMAND: st.SearchStrategy[Command] = st.one_of(
    st.builds(OpenOrg, st.sampled_from(ORGS), st.just(Currency.CNY), st.integers(0, 50)),
    st.builds(SetCreditLimit, st.sampled_from(ORGS), st.integers(0, 100)),
    st.builds(TopUp, IDS.map("t".__add__), st.sampled_from(ORGS), AMOUNTS),
    st.builds(GrantPromo, IDS.map("g".__add__), st.sampled_from(ORGS), AMOUNTS),
    st.builds(
        GrantPack,
        IDS.map("k".__add__),
        st.sampled_from(ORGS),
        st.just(frozenset({"m"})),
        AMOUNTS,
        st.sampled_from((AT_MS - 1, AT_MS + 10**9)),
    ),
    st.builds(ExpirePacks, st.just(AT_MS)),
    st.builds(
        SetBudget,
        st.sampled_from(("org:o", "key:k")),
        st.sampled_from(tuple(BudgetPeriod)),
        st.none() | st.integers(0, 300),
    ),
    st.builds(
        Hold,
        IDS.map("r".__add__),
        st.sampled_from(ORGS),
        st.integers(1, 30).map(lambda n: PRICE.worst_case(n, 5)),
        st.just(AT_MS),
        st.sampled_from(((), ("org:o",), ("key:k", "org:o"))),
    ),
    st.builds(Settle, IDS.map("r".__add__), st.builds(Usage, st.integers(0, 40))),
    st.builds(Release, IDS.map("r".__add__)),
    st.builds(
        DrawLease,
        LEASES,
        st.sampled_from(ORGS),
        st.just("p1"),
        AMOUNTS,
        st.integers(1, 20),
        st.sampled_from((2500, 10_000)),
    ),
    st.builds(
        SpendLease,
        IDS.map("r".__add__),
        LEASES,
        st.just(PRICE),
        st.builds(Usage, st.integers(0, 60), st.just(0), st.integers(0, 10)),
        st.integers(1, 80),
    ),
    st.builds(ShrinkLease, LEASES, st.sampled_from((0, 0, 10, 50))),
)
HOT_PATH: st.SearchStrategy[Command] = st.one_of(
    st.builds(Hold, IDS.map("r".__add__), st.sampled_from(ORGS), st.just(PRICE.worst_case(9, 5)),
              st.just(AT_MS)),
    st.builds(Settle, IDS.map("r".__add__), st.builds(Usage, st.integers(0, 40))),
    st.builds(DrawLease, LEASES, st.sampled_from(ORGS), st.just("p1"), st.just(300), st.just(1)),
    st.builds(SpendLease, IDS.map("r".__add__), LEASES, st.just(PRICE),
              st.builds(Usage, st.integers(0, 60)), st.just(40)),
    st.builds(ShrinkLease, LEASES),
)  # fmt: skip
COMMANDS = st.one_of(EVERY_COMMAND, HOT_PATH, HOT_PATH)


def run(ledger: Ledger, commands: list[Command], undo: Undo | None = None) -> None:
    """Decide and apply each command, as the store's batch does (a refusal applies nothing)."""
    for command in commands:
        try:
            events = ledger.decide(command)
        except Exception:
            continue
        for event in events:
            if undo is not None:
                undo.record(ledger, event)
            ledger.apply(event)


def shape(ledger: Ledger) -> dict[str, Any]:
    """The ledger's state, each mapping's entries in a canonical order (a lease pushed out
    of the closed ones and put back comes back last), ``closed_leases`` in its order."""
    state = ledger.state()
    fields: dict[str, Any] = {}
    for name in state.__slots__:
        value = getattr(state, name)
        if isinstance(value, dict):
            value = sorted(value.items())
        elif isinstance(value, tuple) and name != "closed_leases":
            value = sorted(map(repr, value))
        fields[name] = value
    return fields


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(COMMANDS, max_size=40),
    batch=st.lists(COMMANDS, min_size=1, max_size=12),
    after=st.lists(COMMANDS, max_size=10),
)
def test_a_reverted_batch_leaves_the_ledger_as_it_was(
    before: list[Command], batch: list[Command], after: list[Command]
) -> None:
    """Two ledgers go through the same commands; one also applies ``batch`` and reverts it.
    They then hold the same state, and the commands after it decide the same events (a
    window of two settled ids, so closed leases are pushed out and put back)."""
    window = 2
    reverted = Ledger(settled_ids=RecentIds(window))
    plain = Ledger(settled_ids=RecentIds(window))
    for ledger in (reverted, plain):
        for org in ORGS:
            ledger.execute(OpenOrg(org, Currency.CNY, 0))
            ledger.execute(TopUp(f"t{org}", org, 2_000))
            ledger.execute(GrantPromo(f"g{org}", org, 300))
        for lease in ("l0", "l1", "l2"):
            ledger.execute(DrawLease(lease, "o", "p1", 300, 1, 10_000))
        for lease in ("l1", "l2"):  # as many closed as the window: the next pushes one out
            ledger.execute(ShrinkLease(lease))
        run(ledger, before)
    undo = Undo()
    run(reverted, batch, undo)
    undo.revert(reverted)
    assert shape(reverted) == shape(plain)
    assert set(reverted.settled_ids) == set(plain.settled_ids)
    for command in after:
        outcomes = []
        for ledger in (reverted, plain):
            try:
                outcomes.append(repr(ledger.execute(command)))
            except Exception as exc:
                outcomes.append(repr(exc))
        assert outcomes[0] == outcomes[1]
    assert shape(reverted) == shape(plain)
    assert set(reverted.settled_ids) == set(plain.settled_ids)
