"""Money as integers: one minor unit, one rounding rule, no floats.

**The minor unit is the micro**: one millionth (1e-6) of a currency's major unit (1 CNY,
1 USD). Prices are stated per 1M tokens, so a price of 0.60 USD / 1M tokens is the integer
600_000 micros per 1M tokens, and every price a catalog can state with up to six decimals
is exact.

**The rounding rule** (one rule, applied once per line item of a request):

    charge = ceil(tokens * price_per_million * (10_000 - discount_bp) / (1_000_000 * 10_000))

in micros. Rounding is always up, so a line with at least one token and a non-zero price
is never free by rounding; the total of a request is the sum of its lines, and the total of
a statement is the sum of its requests (no rounding after the line items). Per line the
charge exceeds the exact value by less than one micro.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

MICROS_PER_UNIT = 1_000_000
"""Minor units (micros) in one major unit of any currency."""

TOKENS_PER_PRICE = 1_000_000
"""Prices are per this many tokens."""

BASIS_POINTS = 10_000
"""A discount of 10_000 basis points is 100 %."""


class Currency(StrEnum):
    CNY = "CNY"
    USD = "USD"


DEFAULT_CURRENCY = Currency.CNY


def _require_int(value: object, what: str) -> int:
    if type(value) is int:  # the common case, one check (on every charge line)
        return value
    # bool is an int subclass; True micros is a bug, not an amount.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (micros), not {type(value).__name__}")
    return value


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division for a non-negative numerator and a positive denominator."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return -(-numerator // denominator)


def line_charge(tokens: int, price_per_million: int, discount_bp: int = 0) -> int:
    """The charge in micros for ``tokens`` at ``price_per_million`` micros per 1M tokens,
    less ``discount_bp`` basis points: the module's rounding rule (always up)."""
    _require_int(tokens, "tokens")
    _require_int(price_per_million, "price_per_million")
    _require_int(discount_bp, "discount_bp")
    if tokens < 0 or price_per_million < 0:
        raise ValueError("tokens and prices are never negative")
    if not 0 <= discount_bp <= BASIS_POINTS:
        raise ValueError("discount_bp must be within 0..10000")
    return ceil_div(
        tokens * price_per_million * (BASIS_POINTS - discount_bp), TOKENS_PER_PRICE * BASIS_POINTS
    )


def parse_micros(text: str | int | Decimal) -> int:
    """``"0.60"`` -> ``600_000``. Exact or refused: more than six decimals, or a float, is an
    error (``0.1`` as a float is not 0.1)."""
    if isinstance(text, float):
        raise TypeError("amounts are never floats; pass a decimal string such as '0.60'")
    try:
        value = Decimal(text) if not isinstance(text, Decimal) else text
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {text!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {text!r}")
    micros = value * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"{text!r} has more than six decimals; the minor unit is 1e-6")
    return int(micros)


def format_micros(micros: int) -> str:
    """``600_000`` -> ``"0.600000"``: all six decimals, so the text round-trips exactly."""
    _require_int(micros, "micros")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    return f"{sign}{whole}.{frac:06d}"


@dataclass(frozen=True, slots=True, order=False)
class Money:
    """An amount of micros in one currency. Arithmetic refuses floats and mixed currencies."""

    micros: int
    currency: Currency = DEFAULT_CURRENCY

    def __post_init__(self) -> None:
        _require_int(self.micros, "Money.micros")
        if not isinstance(self.currency, Currency):
            object.__setattr__(self, "currency", Currency(self.currency))

    @classmethod
    def zero(cls, currency: Currency = DEFAULT_CURRENCY) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str | int | Decimal, currency: Currency = DEFAULT_CURRENCY) -> Money:
        """``Money.parse("12.50", Currency.USD)``: exact, or ValueError."""
        return cls(parse_micros(text), currency)

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency is not self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.micros + self._same(other).micros, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.micros - self._same(other).micros, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.micros, self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.micros < self._same(other).micros

    def __le__(self, other: Money) -> bool:
        return self.micros <= self._same(other).micros

    def __gt__(self, other: Money) -> bool:
        return self.micros > self._same(other).micros

    def __ge__(self, other: Money) -> bool:
        return self.micros >= self._same(other).micros

    def __mul__(self, factor: int) -> Money:
        return Money(self.micros * _require_int(factor, "factor"), self.currency)

    __rmul__ = __mul__

    def __bool__(self) -> bool:
        return self.micros != 0

    def __str__(self) -> str:
        return f"{format_micros(self.micros)} {self.currency.value}"


def total(amounts: list[Money] | tuple[Money, ...], currency: Currency) -> Money:
    """The exact sum of ``amounts``, all in ``currency`` (an empty sum is zero)."""
    result = Money.zero(currency)
    for amount in amounts:
        result = result + amount
    return result
