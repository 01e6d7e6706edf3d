"""What billing administration answers: balances, packs, budgets, statements, and the JSON
of organizations, prices and tiers (the CLI prints the same reports as tables)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openmaas.core.admin_fields import iso_ms
from openmaas.core.ledger_events import TOKENS, BudgetPeriod
from openmaas.core.money import Currency, format_micros
from openmaas.core.prices import ModelPrice
from openmaas.core.tiers import Tier
from openmaas.store import billing as store


def format_amount(amount: int, unit: str) -> str:
    """Micros of a currency as a decimal string; tokens as an integer."""
    return str(amount) if unit == TOKENS else format_micros(amount)


def price_json(price: ModelPrice) -> dict[str, Any]:
    money = format_micros
    return {
        "model": price.model,
        "currency": price.currency.value,
        "effective_from": iso_ms(price.effective_from_ms),
        "input": money(price.input_per_million),
        "cached_input": money(price.cached_input_per_million),
        "output": money(price.output_per_million),
        "reasoning": (
            None if price.reasoning_per_million is None else money(price.reasoning_per_million)
        ),
    }


@dataclass(frozen=True, slots=True)
class PackReport:
    pack_id: str
    models: tuple[str, ...]
    remaining: int  # tokens
    expires_at_ms: int
    expired: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.pack_id,
            "models": list(self.models),
            "tokens_remaining": self.remaining,
            "expires_at": iso_ms(self.expires_at_ms),
            "expired": self.expired,
        }


@dataclass(frozen=True, slots=True)
class BudgetReport:
    scope: str
    period: BudgetPeriod
    limit: int
    used: int  # spent plus held in the current day or month

    def as_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "period": self.period.value,
            "limit": format_micros(self.limit),
            "used": format_micros(self.used),
        }


@dataclass(frozen=True, slots=True)
class BalanceReport:
    org_id: str
    name: str
    currency: Currency
    cash: int
    available: int  # what a new request may hold: cash down to the credit limit, and promo
    promo: int
    held: int
    credit_limit: int
    packs: tuple[PackReport, ...] = ()
    budgets: tuple[BudgetReport, ...] = ()
    leased: int = 0  # of cash and promo: set aside for gateway processes, still unspent

    def as_json(self) -> dict[str, Any]:
        money = format_micros
        return {
            "organization": self.org_id,
            "name": self.name,
            "currency": self.currency.value,
            "cash": money(self.cash),
            "available": money(self.available),
            "promo": money(self.promo),
            "held": money(self.held),
            "leased": money(self.leased),
            "credit_limit": money(self.credit_limit),
            "packs": [p.as_json() for p in self.packs],
            "budgets": [b.as_json() for b in self.budgets],
        }


@dataclass(frozen=True, slots=True)
class Funding:
    """The result of a top-up or a promotional grant; ``applied`` False: a repeated id."""

    funding_id: str
    applied: bool
    balance: BalanceReport

    def as_json(self) -> dict[str, Any]:
        return {"id": self.funding_id, "applied": self.applied, **self.balance.as_json()}


STATEMENT_COLUMNS = ("time_utc", "request_id", "account", "counterparty", "amount", "unit")


def statement_csv(lines: Sequence[store.StatementLine]) -> str:
    """One row per ledger line: time (UTC, ISO), request id, account, counterparty, signed
    amount as a decimal string in its unit, unit."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_COLUMNS)
    for line in lines:
        writer.writerow(
            (
                iso_ms(line.at_ms),
                line.request_id or "",
                line.account,
                line.counterparty,
                format_amount(line.amount, line.unit),
                line.unit,
            )
        )
    return out.getvalue()


def statement_json(line: store.StatementLine) -> dict[str, Any]:
    return {
        "time": iso_ms(line.at_ms),
        "request_id": line.request_id,
        "account": line.account,
        "counterparty": line.counterparty,
        "amount": format_amount(line.amount, line.unit),
        "unit": line.unit,
    }


def tier_json(tier: Tier) -> dict[str, Any]:
    return {"name": tier.name, **store.tier_json(tier)}
