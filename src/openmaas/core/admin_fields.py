"""Administrative input, validated once for the CLI and the admin HTTP API.

Every admin request body is an ``AdminBody`` (a pydantic model: its schema is in
``/openapi.json``); the CLI builds the same models from its options. ``AdminBody.parse``
refuses what is wrong with ``InvalidRequest`` naming the field (HTTP 400, ``param``), and a
field the model does not know ("Unknown field 'x'."). The field types here carry the rules
shared by several bodies: money as decimal strings (exact micros; a JSON number is refused,
a float is not exact and an integer ambiguous), currencies, times, counts.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from openmaas.core.errors import InvalidRequest
from openmaas.core.money import Currency, parse_micros
from openmaas.core.validation import blamed_field

_OURS = "admin_field"


def refuse(message: str) -> PydanticCustomError:
    """A refusal whose message follows the field's quoted name: ``'amount' <message>``."""
    return PydanticCustomError(_OURS, message)


class AdminBody(BaseModel):
    """An admin request body: unknown fields are refused, errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, data: object) -> Self:
        if not isinstance(data, dict):
            raise InvalidRequest("The body must be a JSON object.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise refusal(exc) from None


def refusal(exc: ValidationError) -> InvalidRequest:
    """The first problem of ``exc`` as the 400 every admin endpoint answers."""
    field, error = blamed_field(exc)
    if error["type"] == "extra_forbidden":
        return InvalidRequest(f"Unknown field '{field}'.", field)
    if error["type"] == _OURS:
        return InvalidRequest(f"'{field}' {error['msg']}", field)
    if error["type"] == "missing":
        return InvalidRequest(f"'{field}' is required.", field)
    return InvalidRequest(f"'{field}': {error['msg']}.", field)


EARLIEST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_COUNT = 2**63 - 1  # what a database's 64-bit integer holds


def _micros(value: object, *, allow_zero: bool) -> int:
    if not isinstance(value, str | Decimal):
        raise refuse(f'must be a decimal string such as "12.50", not {type(value).__name__}.')
    try:
        micros = parse_micros(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError) as exc:
        raise refuse(f"is not a valid amount: {exc}") from None
    if micros < 0 or (micros == 0 and not allow_zero):
        raise refuse("must be zero or more." if allow_zero else "must be more than zero.")
    if micros > MAX_COUNT:  # micros are stored as 64-bit integers
        raise refuse(f"must be at most {MAX_COUNT // 1_000_000}.{MAX_COUNT % 1_000_000:06d}.")
    return micros


_MONEY_SCHEMA = {"type": "string", "pattern": r"^\d+(\.\d{1,6})?$", "examples": ["12.50"]}

Amount = Annotated[
    int,
    PlainValidator(lambda v: _micros(v, allow_zero=False)),
    WithJsonSchema(
        {
            **_MONEY_SCHEMA,
            "description": "More than zero, at most six decimals, at most 9223372036854.775807.",
        }
    ),
]
"""Money more than zero, a decimal string; the value is exact micros."""

Money = Annotated[
    int,
    PlainValidator(lambda v: _micros(v, allow_zero=True)),
    WithJsonSchema(
        {
            **_MONEY_SCHEMA,
            "description": "Zero or more, at most six decimals, at most 9223372036854.775807.",
        }
    ),
]
"""Money (zero allowed), a decimal string; the value is exact micros."""


def _currency(value: object) -> Currency:
    try:
        if isinstance(value, str):
            return Currency(value.upper())
    except ValueError:
        pass
    raise refuse(f"must be one of {', '.join(c.value for c in Currency)}.")


CurrencyCode = Annotated[
    Currency,
    PlainValidator(_currency),
    WithJsonSchema({"type": "string", "enum": [c.value for c in Currency]}),
]


def iso_ms(at_ms: int) -> str:
    """Epoch milliseconds as ``2026-11-27T07:40:00.123Z``."""
    moment = datetime.fromtimestamp(at_ms // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{at_ms % 1000:03d}Z"


def parse_time(value: object, name: str) -> int:
    """``2026-11-27`` (midnight UTC) or an ISO 8601 time (UTC unless it says otherwise) as
    epoch milliseconds; an integer is taken as epoch milliseconds."""
    try:
        return _epoch_ms(value)
    except PydanticCustomError as exc:
        raise InvalidRequest(f"'{name}' {exc.message()}", name) from None


def _epoch_ms(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise refuse("must be a date (YYYY-MM-DD) or an ISO 8601 time.")
    if isinstance(value, int):
        if not EARLIEST_MS <= value <= LATEST_MS:
            raise refuse("must be epoch milliseconds within the years 1 to 9999.")
        return value
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise refuse(f"must be a date (YYYY-MM-DD) or an ISO 8601 time, not {value!r}.") from None
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


Moment = Annotated[
    int,
    PlainValidator(_epoch_ms),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "examples": ["2026-12-31", "2026-12-31T18:00:00+08:00"]},
                      {"type": "integer", "description": "epoch milliseconds",
                       "minimum": EARLIEST_MS, "maximum": LATEST_MS}],
        }
    ),
]  # fmt: skip
"""A date (midnight UTC) or an ISO 8601 time; the value is epoch milliseconds."""


def _count(value: object, info: ValidationInfo, *, positive: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(f"must be {'a positive' if positive else 'a non-negative'} integer.")
    if not (1 if positive else 0) <= value <= MAX_COUNT:
        kind = "a positive" if positive else "a non-negative"
        raise refuse(f"must be {kind} integer of at most {MAX_COUNT}.")
    return value


Count = Annotated[
    int,
    PlainValidator(lambda v, info: _count(v, info, positive=False)),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_COUNT}),
]
PositiveCount = Annotated[
    int,
    PlainValidator(lambda v, info: _count(v, info, positive=True)),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_COUNT}),
]


def _name(limit: int) -> Any:
    def check(value: object) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            raise refuse(f"must be a non-empty string of at most {limit} characters.")
        return value

    return PlainValidator(check)


Name = Annotated[str, _name(200), WithJsonSchema({"type": "string", "maxLength": 200})]
"""A non-empty name of at most 200 characters (organizations, keys, models)."""

Identifier = Annotated[str, _name(120), WithJsonSchema({"type": "string", "maxLength": 120})]
"""An idempotency id of at most 120 characters (a top-up's, a pack's)."""
