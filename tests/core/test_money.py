"""Integer money and the rounding rule (core/money.py)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.money import (
    Currency,
    Money,
    ceil_div,
    format_micros,
    line_charge,
    parse_micros,
    total,
)

tokens = st.integers(min_value=0, max_value=10**9)
prices = st.integers(min_value=0, max_value=10**9)  # up to 1000 units per 1M tokens
discounts = st.integers(min_value=0, max_value=10_000)


def test_the_minor_unit_makes_common_prices_exact_integers() -> None:
    assert parse_micros("0.60") == 600_000  # 0.60 USD / 1M tokens
    assert parse_micros("0.000001") == 1
    assert parse_micros("50") == 50_000_000
    assert parse_micros(Decimal("1.5")) == 1_500_000
    assert Money.parse("12.50", Currency.USD) == Money(12_500_000, Currency.USD)


@pytest.mark.parametrize("bad", ["0.0000001", "abc", "NaN", "Infinity", ""])
def test_amounts_that_are_not_exact_micros_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_micros(bad)


def test_floats_are_refused_everywhere() -> None:
    with pytest.raises(TypeError):
        parse_micros(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(5) * 1.5  # type: ignore[operator]
    with pytest.raises(TypeError):
        line_charge(1, 0.5)  # type: ignore[arg-type]


def test_currencies_never_mix() -> None:
    cny, usd = Money(1, Currency.CNY), Money(1, Currency.USD)
    for op in (lambda: cny + usd, lambda: cny - usd, lambda: cny < usd, lambda: cny >= usd):
        with pytest.raises(ValueError):
            op()
    with pytest.raises(TypeError):
        cny + 1  # type: ignore[operator]
    assert cny != usd
    with pytest.raises(ValueError):
        total([cny, usd], Currency.CNY)


def test_money_arithmetic_and_display() -> None:
    a = Money.parse("1.25")
    assert a.currency is Currency.CNY  # the default currency
    assert a + a == Money(2_500_000)
    assert a - Money(250_000) == Money(1_000_000)
    assert -a == Money(-1_250_000)
    assert a * 3 == 3 * a == Money(3_750_000)
    assert Money(1) > Money(0) and Money(0) <= Money(0)
    assert not Money.zero() and bool(Money(1))
    assert str(Money(-1_500, Currency.USD)) == "-0.001500 USD"
    assert Money(5, "USD") == Money(5, Currency.USD)  # type: ignore[arg-type]
    assert total([], Currency.USD) == Money.zero(Currency.USD)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_round_trips_exactly(micros: int) -> None:
    assert parse_micros(format_micros(micros)) == micros


def test_ceil_div() -> None:
    assert ceil_div(0, 7) == 0
    assert ceil_div(1, 7) == 1
    assert ceil_div(7, 7) == 1
    assert ceil_div(8, 7) == 2
    with pytest.raises(ValueError):
        ceil_div(1, 0)


def test_the_rounding_rule_by_example() -> None:
    # 0.60 / 1M tokens: one token costs 0.6 micros, rounded up to 1.
    assert line_charge(1, 600_000) == 1
    assert line_charge(1_000_000, 600_000) == 600_000
    assert line_charge(1_000_001, 600_000) == 600_001
    # A 20 % discount inside the same single rounding.
    assert line_charge(1_000_000, 600_000, 2_000) == 480_000
    # Free lines are free; a 100 % discount is free.
    assert line_charge(0, 600_000) == 0
    assert line_charge(123, 0) == 0
    assert line_charge(123, 600_000, 10_000) == 0


@pytest.mark.parametrize("args", [(-1, 1, 0), (1, -1, 0), (1, 1, -1), (1, 1, 10_001)], ids=str)
def test_the_rounding_rule_refuses_out_of_range_inputs(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        line_charge(*args)


@given(tokens, prices, discounts)
def test_a_line_is_the_exact_value_rounded_up_by_less_than_one_micro(
    n: int, price: int, discount: int
) -> None:
    exact = Fraction(n * price * (10_000 - discount), 1_000_000 * 10_000)
    charge = line_charge(n, price, discount)
    assert exact <= charge < exact + 1


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=1, max_value=10**9),
       st.integers(min_value=0, max_value=9_999))  # fmt: skip
def test_no_line_with_a_token_and_a_price_is_free_by_rounding(
    n: int, price: int, discount: int
) -> None:
    assert line_charge(n, price, discount) >= 1


@given(st.lists(st.tuples(tokens, prices, discounts), max_size=20))
def test_totals_equal_the_sum_of_their_parts(items: list[tuple[int, int, int]]) -> None:
    parts = [Money(line_charge(*item), Currency.USD) for item in items]
    assert total(parts, Currency.USD).micros == sum(p.micros for p in parts)
    # Addition is exact and order-free (integers, not floats).
    assert total(list(reversed(parts)), Currency.USD) == total(parts, Currency.USD)


@given(tokens, tokens, prices)
def test_more_tokens_never_cost_less(a: int, b: int, price: int) -> None:
    low, high = sorted((a, b))
    assert line_charge(low, price) <= line_charge(high, price)


@given(tokens, tokens, prices)
def test_splitting_a_line_costs_at_most_one_micro_more(a: int, b: int, price: int) -> None:
    whole = line_charge(a + b, price)
    split = line_charge(a, price) + line_charge(b, price)
    assert whole <= split <= whole + 1
