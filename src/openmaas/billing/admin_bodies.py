"""The bodies of billing administration (admin HTTP API and CLI alike): money as decimal
strings, validated here once; ``BillingAdmin`` takes them typed."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, PlainValidator, StrictBool, WithJsonSchema

from openmaas.core.admin_fields import (
    AdminBody,
    Amount,
    Count,
    CurrencyCode,
    Identifier,
    Moment,
    Money,
    PositiveCount,
    refuse,
)
from openmaas.core.money import Currency
from openmaas.core.tiers import MAX_WEIGHT
from openmaas.core.types import DataPolicy

BASIS_POINTS = 10_000


def _discount(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise refuse("must be a non-negative integer.")
    if value > BASIS_POINTS:
        raise refuse(f"must be within 0..{BASIS_POINTS}.")
    return value


def _data_policy(value: object) -> DataPolicy:
    try:
        if isinstance(value, str):
            return DataPolicy(value)
    except ValueError:
        pass
    raise refuse(f"must be one of {', '.join(p.value for p in DataPolicy)}.")


def _models(value: object) -> list[str]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(m, str) and m.strip() for m in value)
    ):
        raise refuse("must be a non-empty list of model names.")
    return list(value)


def _model_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise refuse("must be a non-empty model name.")
    return value


def _tier_models(value: object) -> object:
    if not isinstance(value, dict):
        raise refuse("must be an object of {model: {rpm, tpm, concurrency}}.")
    for model in value:
        if not model or model == "*" or not isinstance(value[model], dict):
            raise refuse(f"entry '{model}' must be an object of caps.")
    return value


class TermsChange(AdminBody):
    """``PATCH /admin/v1/orgs/{org}``: any subset; ``tier: null`` removes the tier."""

    tier: str | None = None
    discount_bp: (
        Annotated[
            int,
            PlainValidator(_discount),
            WithJsonSchema({"type": "integer", "minimum": 0, "maximum": BASIS_POINTS}),
        ]
        | None
    ) = None
    credit_limit: Money | None = None
    data_policy: (
        Annotated[
            DataPolicy,
            PlainValidator(_data_policy),
            WithJsonSchema({"type": "string", "enum": [p.value for p in DataPolicy]}),
        ]
        | None
    ) = None
    prompt_logging: StrictBool | None = None  # the organization's generations logged

    @property
    def sets_tier(self) -> bool:
        """Whether ``tier`` was given (``null`` included): left out, the tier stays."""
        return "tier" in self.model_fields_set


class KeyTierChange(AdminBody):
    """``PATCH /admin/v1/keys/{key_id}``: ``tier`` (null: the organization's applies)."""

    tier: str | None = None


class NewFunds(AdminBody):
    """A top-up or a promotional grant; ``id`` makes a retry harmless."""

    amount: Amount
    id: Identifier | None = None


class NewPack(AdminBody):
    """A resource pack: ``tokens`` for ``models`` until ``expires_at``."""

    models: Annotated[
        list[str],
        PlainValidator(_models),
        WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1}),
    ]
    tokens: PositiveCount
    expires_at: Moment
    id: Identifier | None = None


class BudgetLimit(AdminBody):
    """``PUT /admin/v1/budgets/{scope}/{period}``."""

    limit: Money


class NewPrice(AdminBody):
    """Prices per 1M tokens from ``effective_from`` (default: now); ``reasoning`` defaults
    to the output price."""

    model: Annotated[
        str, PlainValidator(_model_name), WithJsonSchema({"type": "string", "maxLength": 200})
    ]
    input: Money
    cached_input: Money
    output: Money
    reasoning: Money | None = None
    currency: CurrencyCode = Currency.CNY
    effective_from: Moment | None = None


class Caps(AdminBody):
    """One model's limits within a tier; a cap left out is unlimited."""

    rpm: Count | None = None
    tpm: Count | None = None
    concurrency: Count | None = None


def _weight(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
        raise refuse(f"must be an integer from 1 to {MAX_WEIGHT}.")
    return value


Weight = Annotated[
    int,
    PlainValidator(_weight),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT}),
]


class TierLimits(Caps):
    """``PUT /admin/v1/tiers/{name}``: the whole tier; ``models`` adds per-model caps;
    ``weight`` (default 1) is the organization's share of a busy engine's slots."""

    models: Annotated[dict[str, Caps], BeforeValidator(_tier_models)] | None = None
    weight: Weight = 1
