"""Prices by model and time, discounts, itemized charges and worst cases (core/prices.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.money import Currency, Money, line_charge
from openmaas.core.prices import (
    AppliedPrice,
    LineKind,
    ModelPrice,
    PriceCatalog,
    TokenLines,
    split_usage,
)
from openmaas.core.types import Usage

GLM = ModelPrice("glm-4.6", 2_000_000, 400_000, 8_000_000, currency=Currency.CNY)
THINKER = ModelPrice("glm-z", 1_000_000, 100_000, 4_000_000, reasoning_per_million=16_000_000)

counts = st.integers(min_value=0, max_value=2_000_000)
price_values = st.integers(min_value=0, max_value=100_000_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt, completion = draw(counts), draw(counts)
    return Usage(
        prompt_tokens=prompt,
        cached_tokens=draw(st.integers(0, prompt)),
        completion_tokens=completion,
        reasoning_tokens=draw(st.integers(0, completion)),
    )


@st.composite
def model_prices(draw: st.DrawFn) -> ModelPrice:
    return ModelPrice(
        "m",
        draw(price_values),
        draw(price_values),
        draw(price_values),
        draw(st.none() | price_values),
    )


def test_an_itemized_charge() -> None:
    charge = AppliedPrice(GLM).charge(Usage(prompt_tokens=1_000, cached_tokens=400,
                                            completion_tokens=250))  # fmt: skip
    assert [(line.kind, line.tokens, line.micros) for line in charge.lines] == [
        (LineKind.INPUT, 600, 1_200),
        (LineKind.CACHED_INPUT, 400, 160),
        (LineKind.OUTPUT, 250, 2_000),
    ]
    assert charge.micros == 3_360
    assert charge.money == Money(3_360, Currency.CNY)
    assert charge.tokens == 1_250 and charge.model == "glm-4.6"


def test_reasoning_is_a_line_only_where_the_model_prices_it() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=100, reasoning_tokens=60)
    assert split_usage(usage, GLM) == TokenLines(input=10, output=100)
    assert split_usage(usage, THINKER) == TokenLines(input=10, output=40, reasoning=60)
    kinds = [line.kind for line in AppliedPrice(THINKER).charge(usage).lines]
    assert kinds == [LineKind.INPUT, LineKind.OUTPUT, LineKind.REASONING]
    assert THINKER.per_million(LineKind.REASONING) == 16_000_000
    assert GLM.per_million(LineKind.REASONING) == GLM.output_per_million


def test_inconsistent_engine_counts_are_clamped_and_negative_ones_refused() -> None:
    odd = Usage(prompt_tokens=5, cached_tokens=9, completion_tokens=3, reasoning_tokens=7)
    assert split_usage(odd, THINKER) == TokenLines(cached_input=5, reasoning=3)
    with pytest.raises(ValueError):
        split_usage(Usage(prompt_tokens=-1), GLM)
    with pytest.raises(ValueError):
        TokenLines(input=-1)


def test_a_one_token_request_is_never_free() -> None:
    cheap = ModelPrice("tiny", 1, 1, 1)
    assert AppliedPrice(cheap).charge(Usage(prompt_tokens=1)).micros == 1
    assert AppliedPrice(cheap, 9_999).charge(Usage(completion_tokens=1)).micros == 1


def test_prices_are_integers_and_never_negative() -> None:
    with pytest.raises(TypeError):
        ModelPrice("m", 0.5, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ModelPrice("m", 1, -1, 0)
    with pytest.raises(ValueError):
        ModelPrice("m", 1, 1, 1, reasoning_per_million=-1)
    with pytest.raises(ValueError):
        AppliedPrice(GLM, 10_001)
    with pytest.raises(TypeError):
        AppliedPrice(GLM, True)  # type: ignore[arg-type]


def test_old_usage_keeps_its_old_price() -> None:
    old = ModelPrice("glm", 1_000_000, 0, 1_000_000, effective_from_ms=1_000)
    new = ModelPrice("glm", 3_000_000, 0, 3_000_000, effective_from_ms=5_000)
    catalog = PriceCatalog().with_price(new).with_price(old)  # order of setting is irrelevant
    assert catalog.find("glm", 999) is None
    assert catalog.price_at("glm", 1_000) is old
    assert catalog.price_at("glm", 4_999) is old
    assert catalog.price_at("glm", 5_000) is new
    usage = Usage(prompt_tokens=1_000_000)
    assert catalog.cost("glm", usage, at_ms=2_000).micros == 1_000_000
    assert catalog.cost("glm", usage, at_ms=6_000).micros == 3_000_000
    with pytest.raises(KeyError):
        catalog.price_at("other", 6_000)


def test_setting_a_price_again_for_the_same_instant_replaces_it() -> None:
    first = ModelPrice("glm", 1, 1, 1, effective_from_ms=0)
    second = ModelPrice("glm", 2, 2, 2, effective_from_ms=0)
    catalog = PriceCatalog().with_price(first).with_price(second)
    assert catalog.prices == (second,)
    with pytest.raises(ValueError):
        PriceCatalog((first, second))


def test_discounts_apply_per_organization() -> None:
    catalog = PriceCatalog((GLM,)).with_discount("acme", 2_500)
    usage = Usage(prompt_tokens=1_000_000)
    assert catalog.cost("glm-4.6", usage, 0, org_id="acme").micros == 1_500_000
    assert catalog.cost("glm-4.6", usage, 0, org_id="other").micros == 2_000_000
    assert catalog.cost("glm-4.6", usage, 0).micros == 2_000_000
    assert catalog.applied("glm-4.6", 0, "acme").discount_bp == 2_500
    with pytest.raises(ValueError):
        catalog.with_discount("acme", -1)
    with pytest.raises(ValueError):
        PriceCatalog(discounts_bp={"x": 20_000})


def test_cover_takes_lines_in_order() -> None:
    lines = TokenLines(input=10, cached_input=5, output=20, reasoning=3)
    covered, residual = lines.cover(12)
    assert covered == TokenLines(input=10, cached_input=2)
    assert residual == TokenLines(cached_input=3, output=20, reasoning=3)
    assert lines.cover(0) == (TokenLines(), lines)
    assert lines.cover(1_000) == (lines, TokenLines())


@given(usages(), model_prices(), st.integers(0, 10_000))
def test_a_charge_is_the_sum_of_its_lines_each_by_the_rounding_rule(
    usage: Usage, price: ModelPrice, discount: int
) -> None:
    charge = AppliedPrice(price, discount).charge(usage)
    assert charge.micros == sum(line.micros for line in charge.lines)
    for line in charge.lines:
        assert line.micros == line_charge(line.tokens, line.price_per_million, discount)
    # Every token is on exactly one line.
    assert charge.tokens == usage.prompt_tokens + usage.completion_tokens


@given(usages(), model_prices(), st.integers(0, 10_000), counts)
def test_the_settlements_total_is_the_itemized_charges_to_the_micro(
    usage: Usage, price: ModelPrice, discount: int, pack_tokens: int
) -> None:
    applied = AppliedPrice(price, discount)
    lines = split_usage(usage, price)
    for part in (lines, *lines.cover(pack_tokens)):
        assert applied.charge_micros(part) == applied.charge_lines(part).micros


def test_the_settlements_total_refuses_what_a_line_refuses() -> None:
    with pytest.raises(TypeError):
        AppliedPrice(GLM).charge_micros(TokenLines(input=1.5))  # type: ignore[arg-type]


@given(usages(), model_prices(), st.integers(0, 10_000), counts)
def test_pack_coverage_never_raises_the_charge(
    usage: Usage, price: ModelPrice, discount: int, pack_tokens: int
) -> None:
    applied = AppliedPrice(price, discount)
    lines = split_usage(usage, price)
    covered, residual = lines.cover(pack_tokens)
    assert covered.total + residual.total == lines.total
    assert covered.total == min(pack_tokens, lines.total)
    assert applied.charge_lines(residual).micros <= applied.charge_lines(lines).micros


@given(usages(), model_prices(), st.integers(0, 10_000), counts, counts)
def test_the_worst_case_bounds_every_usage_within_it(
    usage: Usage, price: ModelPrice, discount: int, extra_prompt: int, extra_output: int
) -> None:
    applied = AppliedPrice(price, discount)
    quote = applied.worst_case(
        usage.prompt_tokens + extra_prompt, usage.completion_tokens + extra_output
    )
    assert applied.charge(usage).micros <= quote.micros
    # And any residual left after a pack covers part of it is bounded by cash_for.
    covered, residual = split_usage(usage, price).cover(extra_prompt)
    assert applied.charge_lines(residual).micros <= quote.cash_for(quote.tokens - covered.total)


def test_worst_case_of_nothing_is_nothing_and_counts_are_checked() -> None:
    applied = AppliedPrice(GLM)
    assert applied.worst_case(0, 0).micros == 0
    assert applied.worst_case(1, 0).micros >= 2
    with pytest.raises(ValueError):
        applied.worst_case(-1, 10)
