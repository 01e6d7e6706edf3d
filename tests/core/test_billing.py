"""The billing rule per termination (core/billing.py); the table lives in docs/billing.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.billing import BillingDecision, Rule, billable_usage, recovery_usage
from openmaas.core.ledger import Ledger
from openmaas.core.ledger_events import Hold, HoldResolved, OpenOrg, Settle, TopUp, cash
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.termination import Termination
from openmaas.core.types import Usage

FULL = Usage(prompt_tokens=120, cached_tokens=20, completion_tokens=40, reasoning_tokens=10)
PROMPT_ONLY = Usage(prompt_tokens=120, cached_tokens=20)
ESTIMATE = Usage(prompt_tokens=118, completion_tokens=41)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "billing.md"


# (termination, engine usage) -> (billed usage, rule): the table of docs/billing.md.
TABLE = [
    (Termination.FINISHED, FULL, FULL, Rule.FULL),
    (Termination.LENGTH, FULL, FULL, Rule.FULL),
    (Termination.CLIENT_DISCONNECTED, FULL, FULL, Rule.AS_COUNTED),
    (Termination.CLIENT_DISCONNECTED, PROMPT_ONLY, PROMPT_ONLY, Rule.AS_COUNTED),
    (Termination.CLIENT_DISCONNECTED, Usage(), Usage(), Rule.AS_COUNTED),
    (Termination.KEY_REVOKED, FULL, FULL, Rule.AS_COUNTED),
    (Termination.KEY_REVOKED, PROMPT_ONLY, PROMPT_ONLY, Rule.AS_COUNTED),
    (Termination.CONTENT_FILTERED, FULL, FULL, Rule.AS_COUNTED),
    (Termination.CONTENT_FILTERED, PROMPT_ONLY, PROMPT_ONLY, Rule.AS_COUNTED),
    (Termination.ENGINE_ERROR, PROMPT_ONLY, Usage(), Rule.FREE_NO_OUTPUT),
    (Termination.ENGINE_ERROR, FULL, FULL, Rule.AS_COUNTED),
    (Termination.GATEWAY_SHUTDOWN, PROMPT_ONLY, Usage(), Rule.FREE_NO_OUTPUT),
    (Termination.GATEWAY_SHUTDOWN, FULL, FULL, Rule.AS_COUNTED),
    (Termination.TIMEOUT, PROMPT_ONLY, Usage(), Rule.FREE_NO_OUTPUT),
    (Termination.TIMEOUT, FULL, FULL, Rule.AS_COUNTED),
    (Termination.GATEWAY_KILLED, PROMPT_ONLY, Usage(), Rule.FREE_NO_OUTPUT),
    (Termination.GATEWAY_KILLED, FULL, FULL, Rule.AS_COUNTED),
    (Termination.REJECTED, PROMPT_ONLY, Usage(), Rule.FREE_REJECTED),
]


@pytest.mark.parametrize(("termination", "engine", "billed", "rule"), TABLE, ids=str)
def test_the_billing_table(
    termination: Termination, engine: Usage, billed: Usage, rule: Rule
) -> None:
    decision = billable_usage(termination, engine)
    assert decision == BillingDecision(billed, rule, estimated=False)


def test_every_termination_has_a_rule() -> None:
    assert {row[0] for row in TABLE} == set(Termination)
    for termination in Termination:
        assert isinstance(billable_usage(termination, FULL), BillingDecision)


def test_the_engine_count_wins_over_any_estimate() -> None:
    for termination in Termination:
        decision = billable_usage(termination, FULL, estimate=ESTIMATE)
        assert decision.usage in (FULL, Usage()) and not decision.estimated


def test_an_estimate_is_used_only_without_an_engine_count_and_is_marked() -> None:
    decision = billable_usage(Termination.FINISHED, None, estimate=ESTIMATE)
    assert decision.estimated and decision.usage.estimated
    assert decision.usage.prompt_tokens == 118 and decision.usage.completion_tokens == 41
    # An engine that reported its own count as an estimate stays marked.
    marked = Usage(prompt_tokens=3, estimated=True)
    assert billable_usage(Termination.FINISHED, marked).estimated
    # Nothing counted and nothing estimated: nothing to charge.
    assert billable_usage(Termination.CLIENT_DISCONNECTED, None).free


def test_negative_engine_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        billable_usage(Termination.FINISHED, Usage(prompt_tokens=-1))


def test_crash_recovery_bills_the_checkpoint_or_nothing() -> None:
    assert recovery_usage(None).free  # died before any checkpoint reached disk
    assert recovery_usage(PROMPT_ONLY).free  # died before the first completion token
    decision = recovery_usage(FULL)
    assert decision.usage == FULL and decision.rule is Rule.AS_COUNTED


counts = st.integers(min_value=0, max_value=10**7)


@given(st.sampled_from(Termination), counts, counts)
def test_never_more_than_the_engine_counted(termination: Termination, p: int, c: int) -> None:
    engine = Usage(prompt_tokens=p, completion_tokens=c)
    decision = billable_usage(termination, engine)
    assert decision.usage in (engine, Usage())
    # Free exactly when the failure was ours before any output, or the input was refused.
    free = termination is Termination.REJECTED or (
        c == 0
        and termination
        in (
            Termination.ENGINE_ERROR,
            Termination.TIMEOUT,
            Termination.GATEWAY_SHUTDOWN,
            Termination.GATEWAY_KILLED,
        )
    )
    assert (decision.usage == Usage()) == (free or (p == 0 and c == 0))


@pytest.mark.parametrize(("termination", "engine", "billed", "rule"), TABLE, ids=str)
def test_each_termination_settles_exactly_once_through_the_ledger(
    termination: Termination, engine: Usage, billed: Usage, rule: Rule
) -> None:
    price = AppliedPrice(ModelPrice("m", 1_000_000, 500_000, 2_000_000))
    ledger = Ledger()
    ledger.execute(OpenOrg("o"))
    ledger.execute(TopUp("t", "o", 10_000))
    ledger.execute(Hold("r", "o", price.worst_case(120, 100), 0))
    decision = billable_usage(termination, engine)
    (event,) = ledger.execute(Settle("r", decision.usage))
    assert isinstance(event, HoldResolved)
    assert event.charged == price.charge(billed).micros
    assert ledger.balance(cash("o")) == 10_000 - event.charged
    assert ledger.execute(Settle("r", decision.usage)) == ()


def test_the_docs_list_every_termination() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for termination in Termination:
        assert f"`{termination.value}`" in text
