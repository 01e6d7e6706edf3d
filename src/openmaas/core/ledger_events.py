"""The ledger's commands and events: the contract between ``core/ledger.py`` and the store.

A *command* asks for something (``Hold``, ``Settle``, ``TopUp`` ...). ``Ledger.decide``
turns it into *events*, each self-contained (its transfers fully resolved), which the store
appends to its log in the same transaction as the balances they change. Events are frozen
dataclasses with a ``kind`` tag, so ``pydantic.TypeAdapter(Event)`` can write them as JSON
and read them back for replay.

Account names (plain strings, so they can be rows of an ``accounts`` table):

====================================  ======  ==================================================
account                               unit    meaning, floor
====================================  ======  ==================================================
``org:<org>:cash``                    money   prepaid balance; floor ``-credit_limit``
``org:<org>:promo``                   money   promotional credit; floor 0
``org:<org>:held``                    money   money held by open requests; floor 0
``org:<org>:held_tokens``             tokens  pack tokens held by open requests; floor 0
``org:<org>:leased``                  money   cash leased to gateway processes; floor 0
``org:<org>:leased_promo``            money   promotional credit leased to them; floor 0
``pack:<pack_id>``                    tokens  a resource pack's remaining tokens; floor 0
``system:<CUR>:external``             money   top-ups come from here (the outside world)
``system:<CUR>:promotions``           money   promotional credit comes from here
``system:<CUR>:revenue``              money   every charge goes here
``system:<CUR>:shortfall``            money   the part of a charge nobody could pay
``system:tokens:<name>``              tokens  ``issued``, ``consumed``, ``expired`` pack tokens
====================================  ======  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from openmaas.core.money import Currency
from openmaas.core.prices import AppliedPrice, HoldQuote
from openmaas.core.types import Usage

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TOKENS = "tokens"
"""The unit of resource-pack accounts; every other account counts its currency's micros."""


def cash(org: str) -> str:
    return f"org:{org}:cash"


def promo(org: str) -> str:
    return f"org:{org}:promo"


def held(org: str) -> str:
    return f"org:{org}:held"


def held_tokens(org: str) -> str:
    return f"org:{org}:held_tokens"


def leased(org: str) -> str:
    return f"org:{org}:leased"


def leased_promo(org: str) -> str:
    return f"org:{org}:leased_promo"


def pack(pack_id: str) -> str:
    return f"pack:{pack_id}"


def system(unit: str, name: str) -> str:
    """``external`` (money from outside: top-ups), ``promotions``, ``revenue``, ``shortfall``
    (charges nobody could pay); for tokens: ``issued``, ``consumed``, ``expired``."""
    return f"system:{unit}:{name}"


class BudgetPeriod(StrEnum):
    DAY = "day"
    MONTH = "month"


def period_key(period: BudgetPeriod, at_ms: int) -> str:
    """The UTC day (``2026-11-27``) or month (``2026-11``) that ``at_ms`` falls in."""
    moment = EPOCH + timedelta(milliseconds=at_ms)  # integer arithmetic, no float seconds
    return moment.strftime("%Y-%m-%d" if period is BudgetPeriod.DAY else "%Y-%m")


@dataclass(frozen=True, slots=True)
class Transfer:
    debit: str  # the account the amount leaves
    credit: str  # the account the amount enters
    amount: int


# -- commands -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenOrg:
    org: str
    currency: Currency = Currency.CNY
    credit_limit: int = 0  # micros the cash balance may go below zero (post-paid)


@dataclass(frozen=True, slots=True)
class SetCreditLimit:
    org: str
    credit_limit: int


@dataclass(frozen=True, slots=True)
class TopUp:
    topup_id: str  # idempotency key
    org: str
    amount: int


@dataclass(frozen=True, slots=True)
class GrantPromo:
    grant_id: str  # idempotency key
    org: str
    amount: int


@dataclass(frozen=True, slots=True)
class GrantPack:
    pack_id: str  # idempotency key
    org: str
    models: frozenset[str]
    tokens: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class ExpirePacks:
    at_ms: int


@dataclass(frozen=True, slots=True)
class SetBudget:
    scope: str  # e.g. "key:<id>" or "project:<id>"
    period: BudgetPeriod
    limit: int | None  # micros; None removes the budget


@dataclass(frozen=True, slots=True)
class Hold:
    request_id: str  # idempotency key of the whole hold -> settle lifecycle
    org: str
    quote: HoldQuote
    at_ms: int
    budget_scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settle:
    request_id: str
    usage: Usage  # the billable usage (``core/billing.py``)


@dataclass(frozen=True, slots=True)
class Release:
    request_id: str


@dataclass(frozen=True, slots=True)
class DrawLease:
    """Set money aside for one gateway process (``instance_id``), which then admits requests
    against it in memory: ``want`` micros, but at most ``share_bp`` (basis points) of what
    the organization may spend now, promotional credit first; refused with
    ``InsufficientBalance`` when that is under ``at_least``."""

    lease_id: str  # idempotency key
    org: str
    instance_id: str
    want: int
    at_least: int
    share_bp: int = 2500


@dataclass(frozen=True, slots=True)
class SpendLease:
    """Settle one request admitted against a lease: its charge by ``applied`` leaves the
    lease, up to what the request ``reserved`` there (beyond that: promo, then cash down to
    the floor, then the shortfall account), so other requests' reservations stay whole."""

    request_id: str  # idempotency key, shared with holds: a request is settled once
    lease_id: str
    applied: AppliedPrice
    usage: Usage  # the billable usage (``core/billing.py``)
    reserved: int  # the micros its admission reserved (its worst case), for the record


@dataclass(frozen=True, slots=True)
class ShrinkLease:
    """Give back what a lease holds beyond ``keep`` micros (cash first, so what stays is
    spent promotional credit first); ``keep`` 0 closes it."""

    lease_id: str
    keep: int = 0


Command = (
    OpenOrg | SetCreditLimit | TopUp | GrantPromo | GrantPack | ExpirePacks | SetBudget
    | Hold | Settle | Release | DrawLease | SpendLease | ShrinkLease
)  # fmt: skip


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrgOpened:
    org: str
    currency: Currency
    credit_limit: int
    kind: Literal["org_opened"] = "org_opened"


@dataclass(frozen=True, slots=True)
class CreditLimitSet:
    org: str
    credit_limit: int
    kind: Literal["credit_limit_set"] = "credit_limit_set"


@dataclass(frozen=True, slots=True)
class Funded:
    """A top-up or a promotional grant, by ``funding_id``."""

    funding_id: str
    transfers: tuple[Transfer, ...]
    kind: Literal["funded"] = "funded"


@dataclass(frozen=True, slots=True)
class PackGranted:
    pack_id: str
    org: str
    models: frozenset[str]
    expires_at_ms: int
    transfers: tuple[Transfer, ...]
    kind: Literal["pack_granted"] = "pack_granted"


@dataclass(frozen=True, slots=True)
class PackExpired:
    pack_id: str
    transfers: tuple[Transfer, ...]
    kind: Literal["pack_expired"] = "pack_expired"


@dataclass(frozen=True, slots=True)
class BudgetSet:
    scope: str
    period: BudgetPeriod
    limit: int | None
    kind: Literal["budget_set"] = "budget_set"


@dataclass(frozen=True, slots=True)
class HoldPlaced:
    request_id: str
    org: str
    applied: AppliedPrice
    packs: tuple[tuple[str, int], ...]  # (pack id, tokens held), oldest-expiring first
    promo: int  # micros held from promotional credit
    cash: int  # micros held from cash
    budget_keys: tuple[tuple[str, str], ...]  # (scope, "day:2026-11-27" | "month:2026-11")
    transfers: tuple[Transfer, ...]
    kind: Literal["hold_placed"] = "hold_placed"

    @property
    def money(self) -> int:
        return self.promo + self.cash


@dataclass(frozen=True, slots=True)
class HoldResolved:
    """A hold settled (``released`` False) or released; ``charged`` is the money charge."""

    request_id: str
    released: bool
    usage: Usage
    pack_tokens: int
    charged: int
    shortfall: int
    transfers: tuple[Transfer, ...]
    kind: Literal["hold_resolved"] = "hold_resolved"


@dataclass(frozen=True, slots=True)
class LeaseDrawn:
    lease_id: str
    org: str
    instance_id: str
    promo: int  # micros from promotional credit
    cash: int  # micros from cash
    transfers: tuple[Transfer, ...]
    kind: Literal["lease_drawn"] = "lease_drawn"


@dataclass(frozen=True, slots=True)
class LeaseSpent:
    """One request settled from a lease: ``from_promo`` + ``from_cash`` of the lease,
    ``charged`` in all (the rest from the organization's balance, or ``shortfall``)."""

    request_id: str
    lease_id: str
    org: str
    usage: Usage
    reserved: int
    from_promo: int
    from_cash: int
    charged: int
    shortfall: int
    transfers: tuple[Transfer, ...]
    kind: Literal["lease_spent"] = "lease_spent"


@dataclass(frozen=True, slots=True)
class LeaseShrunk:
    lease_id: str
    promo: int  # micros given back to promotional credit
    cash: int  # micros given back to cash
    closed: bool
    transfers: tuple[Transfer, ...]
    kind: Literal["lease_shrunk"] = "lease_shrunk"


Event = (
    OrgOpened | CreditLimitSet | Funded | PackGranted | PackExpired | BudgetSet | HoldPlaced
    | HoldResolved | LeaseDrawn | LeaseSpent | LeaseShrunk
)  # fmt: skip
