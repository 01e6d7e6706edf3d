"""Prices per model, effective from a time, and the itemized charge of one request.

A ``ModelPrice`` states micros per 1M tokens for each token class (see ``core/money.py``
for the unit and the rounding rule). A model's price changes by adding a new
``ModelPrice`` with a later ``effective_from_ms``; old usage keeps the price that was in
force when it started (``PriceCatalog.price_at``). Organizations may have a discount in
basis points, applied inside each line's single rounding.

How ``Usage`` splits into lines (``cached_tokens`` is part of ``prompt_tokens``;
``reasoning_tokens`` is part of ``completion_tokens``):

=============  ===========================================  ==========================
line           tokens                                       price
=============  ===========================================  ==========================
input          prompt - cached                              ``input_per_million``
cached_input   cached (at most prompt)                      ``cached_input_per_million``
output         completion - reasoning (all of completion    ``output_per_million``
               when the model has no reasoning price)
reasoning      reasoning (at most completion), only when    ``reasoning_per_million``
               the model prices reasoning separately
=============  ===========================================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from openmaas.core.money import BASIS_POINTS, TOKENS_PER_PRICE, Currency, Money, line_charge
from openmaas.core.types import Usage


class LineKind(StrEnum):
    INPUT = "input"
    CACHED_INPUT = "cached_input"
    OUTPUT = "output"
    REASONING = "reasoning"


LINE_ORDER: tuple[LineKind, ...] = (
    LineKind.INPUT,
    LineKind.CACHED_INPUT,
    LineKind.OUTPUT,
    LineKind.REASONING,
)
"""The order of lines on a charge, and the order in which resource packs cover them."""

LINE_SLACK = len(LINE_ORDER) - 1
"""Rounding each of n lines up adds at most n-1 micros over rounding their sum once."""

_PER_PRICE_BP = TOKENS_PER_PRICE * BASIS_POINTS  # ``line_charge``'s denominator


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Micros per 1M tokens for one model from ``effective_from_ms`` (epoch ms) on."""

    model: str
    input_per_million: int
    cached_input_per_million: int
    output_per_million: int
    reasoning_per_million: int | None = None
    currency: Currency = Currency.CNY
    effective_from_ms: int = 0

    def __post_init__(self) -> None:
        for name in ("input_per_million", "cached_input_per_million", "output_per_million"):
            _check_price(getattr(self, name), name)
        if self.reasoning_per_million is not None:
            _check_price(self.reasoning_per_million, "reasoning_per_million")

    def per_million(self, kind: LineKind) -> int:
        if kind is LineKind.INPUT:
            return self.input_per_million
        if kind is LineKind.CACHED_INPUT:
            return self.cached_input_per_million
        if kind is LineKind.OUTPUT:
            return self.output_per_million
        return (
            self.reasoning_per_million
            if self.reasoning_per_million is not None
            else self.output_per_million
        )

    @property
    def max_per_million(self) -> int:
        """The dearest line's price (every line of ``LINE_ORDER``; read per admission)."""
        reasoning = self.reasoning_per_million
        return max(
            self.input_per_million,
            self.cached_input_per_million,
            self.output_per_million,
            self.output_per_million if reasoning is None else reasoning,
        )


def _check_price(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int micros per 1M tokens")
    if value < 0:
        raise ValueError(f"{name} must not be negative")


def _check_discount(discount_bp: int) -> None:
    if isinstance(discount_bp, bool) or not isinstance(discount_bp, int):
        raise TypeError("discount_bp must be an int")
    if not 0 <= discount_bp <= BASIS_POINTS:
        raise ValueError("discount_bp must be within 0..10000")


@dataclass(frozen=True, slots=True)
class TokenLines:
    """Tokens per line, in ``LINE_ORDER``."""

    input: int = 0
    cached_input: int = 0
    output: int = 0
    reasoning: int = 0

    def __post_init__(self) -> None:
        if min(self.as_tuple()) < 0:
            raise ValueError("token counts are never negative")

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.input, self.cached_input, self.output, self.reasoning)

    @property
    def total(self) -> int:
        return sum(self.as_tuple())

    def cover(self, tokens: int) -> tuple[TokenLines, TokenLines]:
        """Split into (covered, residual): ``tokens`` (from a resource pack) cover lines
        in ``LINE_ORDER`` until used up."""
        left = max(0, tokens)
        covered: list[int] = []
        for count in self.as_tuple():
            take = min(count, left)
            covered.append(take)
            left -= take
        residual = [count - take for count, take in zip(self.as_tuple(), covered, strict=True)]
        return TokenLines(*covered), TokenLines(*residual)


def split_usage(usage: Usage, price: ModelPrice) -> TokenLines:
    """Usage as lines (table in the module docstring). Counts an engine reports
    inconsistently are clamped: cached to prompt, reasoning to completion."""
    counts = (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
    if min(counts) < 0 or usage.reasoning_tokens < 0:
        raise ValueError(f"negative token count in {usage!r}")
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    reasoning = 0
    if price.reasoning_per_million is not None:
        reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
    return TokenLines(
        input=usage.prompt_tokens - cached,
        cached_input=cached,
        output=usage.completion_tokens - reasoning,
        reasoning=reasoning,
    )


@dataclass(frozen=True, slots=True)
class ChargeLine:
    kind: LineKind
    tokens: int
    price_per_million: int
    micros: int


@dataclass(frozen=True, slots=True)
class AppliedPrice:
    """A model's price with an organization's discount: what a request is billed at. The
    ledger stores it with the hold, so settlement uses the price in force at admission."""

    price: ModelPrice
    discount_bp: int = 0

    def __post_init__(self) -> None:
        _check_discount(self.discount_bp)

    @property
    def currency(self) -> Currency:
        return self.price.currency

    def charge_lines(self, lines: TokenLines) -> Charge:
        """The itemized charge for ``lines`` (zero-token lines are left out)."""
        items = tuple(
            ChargeLine(
                kind,
                tokens,
                self.price.per_million(kind),
                line_charge(tokens, self.price.per_million(kind), self.discount_bp),
            )
            for kind, tokens in zip(LINE_ORDER, lines.as_tuple(), strict=True)
            if tokens
        )
        return Charge(self.price.model, self.currency, self.discount_bp, items)

    def charge_micros(self, lines: TokenLines) -> int:
        """``charge_lines(lines).micros`` without the itemized lines: the ledger's
        settlements (one per request) need only the total. The same rule, line by line
        (``money.line_charge``); the price and discount were checked when built."""
        price = self.price
        reasoning = price.reasoning_per_million
        keep = BASIS_POINTS - self.discount_bp
        total = 0
        for tokens, per_million in (
            (lines.input, price.input_per_million),
            (lines.cached_input, price.cached_input_per_million),
            (lines.output, price.output_per_million),
            (lines.reasoning, price.output_per_million if reasoning is None else reasoning),
        ):
            if type(tokens) is not int:  # a float or a bool: refused as line_charge does
                total += line_charge(tokens, per_million, self.discount_bp)
            elif tokens:
                total -= (-tokens * per_million * keep) // _PER_PRICE_BP
        return total

    def charge(self, usage: Usage) -> Charge:
        return self.charge_lines(split_usage(usage, self.price))

    def cash_bound(self, tokens: int) -> int:
        """An upper bound, in micros, of the charge for any ``tokens`` tokens split in any
        way over the lines: one rounding at the dearest line's price plus ``LINE_SLACK``."""
        if tokens <= 0:
            return 0
        return line_charge(tokens, self.price.max_per_million, self.discount_bp) + LINE_SLACK

    def worst_case(self, prompt_tokens: int, max_output_tokens: int) -> HoldQuote:
        """What admission holds: every prompt token uncached, every allowed output token
        generated, each at the dearest price. ``prompt_tokens`` must be an upper bound of
        what the engine will count (e.g. the UTF-8 byte length of the rendered prompt for a
        byte-level BPE tokenizer)."""
        if prompt_tokens < 0 or max_output_tokens < 0:
            raise ValueError("token counts are never negative")
        return HoldQuote(self, prompt_tokens + max_output_tokens)


@dataclass(frozen=True, slots=True)
class HoldQuote:
    """The worst case of one request: at most ``tokens`` tokens at ``applied``."""

    applied: AppliedPrice
    tokens: int

    def cash_for(self, tokens: int) -> int:
        return self.applied.cash_bound(min(tokens, self.tokens))

    @property
    def micros(self) -> int:
        return self.cash_for(self.tokens)


@dataclass(frozen=True, slots=True)
class Charge:
    """An itemized charge; ``micros`` is exactly the sum of the lines."""

    model: str
    currency: Currency
    discount_bp: int
    lines: tuple[ChargeLine, ...] = ()

    @property
    def micros(self) -> int:
        return sum(line.micros for line in self.lines)

    @property
    def money(self) -> Money:
        return Money(self.micros, self.currency)

    @property
    def tokens(self) -> int:
        return sum(line.tokens for line in self.lines)


@dataclass(frozen=True, slots=True)
class PriceCatalog:
    """Every price ever set, and the discounts per organization. Immutable: ``with_*``
    return a new catalog (the store builds one from its tables)."""

    prices: tuple[ModelPrice, ...] = ()
    discounts_bp: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[tuple[str, Currency, int]] = set()
        for price in self.prices:
            key = (price.model, price.currency, price.effective_from_ms)
            if key in seen:
                raise ValueError(
                    f"two {price.currency} prices for {price.model} from {price.effective_from_ms}"
                )
            seen.add(key)
        for discount in self.discounts_bp.values():
            _check_discount(discount)

    def with_price(self, price: ModelPrice) -> PriceCatalog:
        kept = tuple(
            p
            for p in self.prices
            if (p.model, p.currency, p.effective_from_ms)
            != (price.model, price.currency, price.effective_from_ms)
        )
        return PriceCatalog((*kept, price), dict(self.discounts_bp))

    def with_discount(self, org_id: str, discount_bp: int) -> PriceCatalog:
        _check_discount(discount_bp)
        return PriceCatalog(self.prices, {**self.discounts_bp, org_id: discount_bp})

    def find(self, model: str, at_ms: int, currency: Currency | None = None) -> ModelPrice | None:
        """The price of ``model`` in force at ``at_ms`` (in ``currency``, if given): the
        latest not after it. A model may have a price list per currency."""
        best: ModelPrice | None = None
        for price in self.prices:
            if currency is not None and price.currency is not currency:
                continue
            if price.model == model and price.effective_from_ms <= at_ms:
                if best is None or price.effective_from_ms > best.effective_from_ms:
                    best = price
        return best

    def price_at(self, model: str, at_ms: int, currency: Currency | None = None) -> ModelPrice:
        price = self.find(model, at_ms, currency)
        if price is None:
            raise KeyError(f"no price for model {model!r} at {at_ms}")
        return price

    def applied(
        self,
        model: str,
        at_ms: int,
        org_id: str | None = None,
        currency: Currency | None = None,
    ) -> AppliedPrice:
        discount = self.discounts_bp.get(org_id, 0) if org_id is not None else 0
        return AppliedPrice(self.price_at(model, at_ms, currency), discount)

    def cost(self, model: str, usage: Usage, at_ms: int, org_id: str | None = None) -> Charge:
        """The itemized charge for ``usage`` of ``model`` started at ``at_ms``."""
        return self.applied(model, at_ms, org_id).charge(usage)
