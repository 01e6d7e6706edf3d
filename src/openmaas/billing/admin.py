"""Billing administration: organizations' terms, funds, packs, budgets, prices and tiers.

Shared by the ``openmaas`` CLI and the admin HTTP API. Every operation that changes
something writes one ``audit_log`` row (who, what, target, before, after) in the same
transaction as the change: a ledger command carries it in ``LedgerStore.execute(also=)``,
a change of prices, tiers or terms runs on one ``engine.begin()`` connection. A refused
operation raises (``InvalidRequest`` naming the field, ``NotFound``) having written
nothing. After a change of configuration ``on_change`` is called, so a server process
drops the terms it caches.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.core.ledger_events import (
    TOKENS,
    BudgetPeriod,
    Event,
    GrantPack,
    GrantPromo,
    OpenOrg,
    SetBudget,
    SetCreditLimit,
    TopUp,
    cash,
    held,
    held_tokens,
    pack,
    period_key,
    promo,
)
from openmaas.core.money import Currency, format_micros, parse_micros
from openmaas.core.prices import ModelPrice
from openmaas.core.tiers import Limits, Tier
from openmaas.core.types import DataPolicy
from openmaas.core.usage import UsageTotal
from openmaas.accounts.admin import ensure_home
from openmaas.settings import Settings
from openmaas.store import billing as store
from openmaas.store.database import migrate, open_database
from openmaas.store.ledger import LedgerStore, idempotency_key
from openmaas.store.repositories import (
    ApiKeyRepository,
    Organization,
    OrganizationRepository,
    UsageRepository,
)

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
BASIS_POINTS = 10_000
UNSET: Any = object()
"""``set_org(tier=UNSET)`` leaves the tier as it is; ``tier=None`` removes it."""


# -- parsing --------------------------------------------------------------------------


def parse_amount(value: object, name: str, *, allow_zero: bool = False) -> int:
    """A decimal string (``"12.5"``) as exact micros; numbers (a float is inexact, an int
    ambiguous: units or micros?) and negatives are refused."""
    if not isinstance(value, str | Decimal):
        raise InvalidRequest(
            f"'{name}' must be a decimal string such as \"12.50\", not {type(value).__name__}.",
            name,
        )
    try:
        micros = parse_micros(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"'{name}' is not a valid amount: {exc}", name) from None
    if micros < 0 or (micros == 0 and not allow_zero):
        floor = "zero or more" if allow_zero else "more than zero"
        raise InvalidRequest(f"'{name}' must be {floor}.", name)
    return micros


def parse_currency(value: object, name: str = "currency") -> Currency:
    try:
        return Currency(str(value).upper()) if isinstance(value, str) else Currency(value)
    except ValueError:
        allowed = ", ".join(c.value for c in Currency)
        raise InvalidRequest(f"'{name}' must be one of {allowed}.", name) from None


def parse_time(value: object, name: str) -> int:
    """``2026-11-27`` (midnight UTC) or an ISO 8601 time (UTC unless it says otherwise) as
    epoch milliseconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRequest(f"'{name}' must be a date (YYYY-MM-DD) or an ISO 8601 time.", name)
    if isinstance(value, int):
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
        raise InvalidRequest(
            f"'{name}' must be a date (YYYY-MM-DD) or an ISO 8601 time, not {value!r}.", name
        ) from None
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def iso_ms(at_ms: int) -> str:
    """Epoch milliseconds as ``2026-11-27T07:40:00.123Z``."""
    moment = datetime.fromtimestamp(at_ms // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{at_ms % 1000:03d}Z"


def format_amount(amount: int, unit: str) -> str:
    """Micros of a currency as a decimal string; tokens as an integer."""
    return str(amount) if unit == TOKENS else format_micros(amount)


def _count(value: object, name: str, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        floor = "a positive" if positive else "a non-negative"
        raise InvalidRequest(f"'{name}' must be {floor} integer.", name)
    return value


def _cap(value: object, name: str) -> int | None:
    return None if value is None else _count(value, name)


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


def org_json(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.name,
        "currency": org.currency,
        "tier": org.tier,
        "discount_bp": org.discount_bp,
        "data_policy": org.data_policy,
        "created_at": iso_ms(org.created_at_ms),
    }


# -- reports --------------------------------------------------------------------------


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


# -- the service ----------------------------------------------------------------------


@dataclass
class BillingAdmin:
    """Billing administration acting as ``actor`` (``cli:<user>`` or ``key:<key id>``)."""

    database: AsyncEngine
    ledger: LedgerStore
    clock: Clock
    actor: str
    on_change: Callable[[], None] | None = None
    _orgs: OrganizationRepository = field(init=False)
    _keys: ApiKeyRepository = field(init=False)

    def __post_init__(self) -> None:
        self._orgs = OrganizationRepository(self.database)
        self._keys = ApiKeyRepository(self.database)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _audit(
        self, conn: AsyncConnection, action: str, target: str, before: Any, after: Any
    ) -> None:
        await store.audit(conn, self.clock.now_ms(), self.actor, action, target, before, after)

    async def _tier_names(self) -> set[str]:
        async with self.database.connect() as conn:
            return set(await store.load_tiers(conn))

    async def _check_tier(self, tier: object, name: str = "tier") -> str | None:
        if tier is None:
            return None
        if not isinstance(tier, str) or tier not in await self._tier_names():
            known = ", ".join(sorted(await self._tier_names()))
            raise InvalidRequest(f"Unknown tier {tier!r}; the tiers are: {known}.", name)
        return tier

    # -- organizations --

    async def org(self, id_or_name: str) -> Organization:
        return await self._orgs.find(id_or_name)

    async def list_orgs(self) -> list[Organization]:
        return await self._orgs.list()

    async def create_org(
        self,
        name: str,
        currency: object = Currency.CNY,
        tier: object = None,
        credit_limit: object = None,
    ) -> Organization:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidRequest(
                "'name' must be a non-empty string of at most 200 characters.", "name"
            )
        unit = parse_currency(currency)
        checked_tier = await self._check_tier(tier)
        limit = (
            0
            if credit_limit is None
            else parse_amount(credit_limit, "credit_limit", allow_zero=True)
        )
        now = self.clock.now_ms()
        org = Organization("org_" + secrets.token_hex(8), name, now, unit.value, checked_tier)

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
            await store.insert_organization(conn, org.id, name, now, unit, checked_tier)
            after = {**org_json(org), "credit_limit": format_micros(limit)}
            await self._audit(conn, "org.create", org.id, None, after)

        await self.ledger.execute(OpenOrg(org.id, unit, limit), also=write)
        self._changed()
        return org

    async def set_org(
        self,
        org: str,
        *,
        tier: object = UNSET,
        discount_bp: object = None,
        credit_limit: object = None,
        data_policy: object = None,
    ) -> Organization:
        """Change an organization's tier (None removes it), discount, credit limit or data
        policy (``local_only``: never an external deployment; ``burst``)."""
        found = await self._orgs.find(org)
        values: dict[str, Any] = {}
        if tier is not UNSET:
            values["tier"] = await self._check_tier(tier)
        if discount_bp is not None:
            values["discount_bp"] = _count(discount_bp, "discount_bp")
            if values["discount_bp"] > BASIS_POINTS:
                raise InvalidRequest("'discount_bp' must be within 0..10000.", "discount_bp")
        if data_policy is not None:
            try:
                values["data_policy"] = DataPolicy(data_policy).value
            except ValueError:
                allowed = ", ".join(p.value for p in DataPolicy)
                raise InvalidRequest(
                    f"'data_policy' must be one of {allowed}.", "data_policy"
                ) from None
        limit = (
            None
            if credit_limit is None
            else parse_amount(credit_limit, "credit_limit", allow_zero=True)
        )
        if not values and limit is None:
            raise InvalidRequest(
                "Nothing to change: give a tier, discount_bp, credit_limit or data_policy."
            )

        # Read before the change: admins' changes of one organization are rare enough that
        # another landing in between is not worth a lock.
        known = (await self.ledger.refresh()).orgs.get(found.id)
        old_limit = known.credit_limit if known is not None else 0

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
            before = await store.update_org(conn, found.id, **values) if values else {}
            after = dict(values)
            if limit is not None:
                before["credit_limit"] = format_micros(old_limit)
                after["credit_limit"] = format_micros(limit)
            await self._audit(conn, "org.update", found.id, before, after)

        if limit is not None:
            await self.ledger.execute(SetCreditLimit(found.id, limit), also=write)
        else:
            async with self.database.begin() as conn:
                await write(conn, ())
        self._changed()
        return await self._orgs.find(found.id)

    async def set_key_tier(self, key_id: str, tier: object) -> str | None:
        """Give a key a tier narrowing its organization's (None: the organization's)."""
        checked = await self._check_tier(tier)
        async with self.database.begin() as conn:
            try:
                old = await store.update_key_tier(conn, key_id, checked)
            except LookupError:
                raise NotFound(f"No API key with id '{key_id}'.") from None
            await self._audit(conn, "key.update", key_id, {"tier": old}, {"tier": checked})
        self._changed()
        return checked

    # -- money and packs --

    async def _fund(
        self, org: str, amount: object, funding_id: str | None, *, promotional: bool
    ) -> Funding:
        found = await self._orgs.find(org)
        micros = parse_amount(amount, "amount")
        prefix = "promo_" if promotional else "topup_"
        fid = funding_id or prefix + secrets.token_hex(8)
        if not isinstance(fid, str) or not fid.strip() or len(fid) > 120:
            raise InvalidRequest("'id' must be a non-empty string of at most 120 characters.", "id")
        account = promo(found.id) if promotional else cash(found.id)
        action = "billing.promo" if promotional else "billing.topup"

        async def write(conn: AsyncConnection, events: tuple[Event, ...]) -> None:
            if not events:
                return  # a repeated id changes nothing, so there is nothing to audit
            # The balance as the log has it just after this event (requests settle meanwhile).
            seq = await store.event_seq(conn, idempotency_key(events[-1]) or "")
            before = await store.account_balance(conn, account, seq or 0) - micros
            await self._audit(
                conn,
                action,
                found.id,
                {"balance": format_micros(before), "currency": found.currency},
                {
                    "balance": format_micros(before + micros),
                    "currency": found.currency,
                    "id": fid,
                    "amount": format_micros(micros),
                },
            )

        command = GrantPromo(fid, found.id, micros) if promotional else TopUp(fid, found.id, micros)
        events = await self.ledger.execute(command, also=write)
        return Funding(fid, bool(events), await self.balance(found.id))

    async def top_up(self, org: str, amount: object, topup_id: str | None = None) -> Funding:
        """Add prepaid money; ``topup_id`` makes a retry harmless (generated if not given)."""
        return await self._fund(org, amount, topup_id, promotional=False)

    async def grant_promo(self, org: str, amount: object, grant_id: str | None = None) -> Funding:
        """Add promotional credit (spent before cash)."""
        return await self._fund(org, amount, grant_id, promotional=True)

    async def grant_pack(
        self,
        org: str,
        models: object,
        tokens: object,
        expires: object,
        pack_id: str | None = None,
    ) -> PackReport:
        """A resource pack: ``tokens`` for ``models`` until ``expires`` (a time string or
        epoch ms)."""
        found = await self._orgs.find(org)
        if (
            isinstance(models, str)
            or not isinstance(models, Sequence | set | frozenset)
            or not models
            or not all(isinstance(m, str) and m.strip() for m in models)
        ):
            raise InvalidRequest("'models' must be a non-empty list of model names.", "models")
        count = _count(tokens, "tokens", positive=True)
        expires_at = parse_time(expires, "expires_at")
        if expires_at <= self.clock.now_ms():
            raise InvalidRequest("'expires_at' must be in the future.", "expires_at")
        pid = pack_id or "pack_" + secrets.token_hex(8)
        names = tuple(sorted(set(models)))

        async def write(conn: AsyncConnection, events: tuple[Event, ...]) -> None:
            if events:
                after = {
                    "org": found.id,
                    "models": list(names),
                    "tokens": count,
                    "expires_at": iso_ms(expires_at),
                }
                await self._audit(conn, "billing.pack_grant", pid, None, after)

        await self.ledger.execute(
            GrantPack(pid, found.id, frozenset(names), count, expires_at), also=write
        )
        state = self.ledger.ledger.packs[pid]
        return PackReport(
            pid,
            tuple(sorted(state.models)),
            self.ledger.ledger.balance(pack(pid)),
            state.expires_at_ms,
            state.expired,
        )

    async def packs(self, org: str) -> list[PackReport]:
        return list((await self.balance(org)).packs)

    async def _scope(self, scope: object) -> tuple[str, Organization]:
        """``org:<id or name>`` or ``key:<id>``, resolved, with the organization it bills."""
        kind, _, ident = scope.partition(":") if isinstance(scope, str) else ("", "", "")
        if kind == "org" and ident:
            found = await self._orgs.find(ident)
            return f"org:{found.id}", found
        if kind == "key" and ident:
            key = await self._keys.get(ident.partition(".")[0])
            if key is None:
                raise NotFound(f"No API key with id '{ident}'.")
            return f"key:{key.id}", await self._orgs.find(key.org_id)
        raise InvalidRequest("'scope' must be 'org:<id or name>' or 'key:<key id>'.", "scope")

    async def set_budget(self, scope: object, period: object, limit: object) -> BudgetReport:
        """A spending cap per UTC day or month on a key or an organization."""
        resolved, _org = await self._scope(scope)
        span = _period(period)
        micros = parse_amount(limit, "limit", allow_zero=True)
        await self._budget(resolved, span, micros)
        return next(b for b in self._budgets({resolved}) if b.period is span)

    async def clear_budget(self, scope: object, period: object) -> None:
        resolved, _org = await self._scope(scope)
        span = _period(period)
        if (resolved, span) not in (await self.ledger.refresh()).budgets:
            raise NotFound(f"No {span.value} budget on {resolved}.")
        await self._budget(resolved, span, None)

    async def _budget(self, scope: str, period: BudgetPeriod, limit: int | None) -> None:
        old = (await self.ledger.refresh()).budgets.get((scope, period))

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
            await self._audit(
                conn,
                "billing.budget_set" if limit is not None else "billing.budget_clear",
                f"{scope}/{period.value}",
                None if old is None else {"limit": format_micros(old)},
                None if limit is None else {"limit": format_micros(limit)},
            )

        await self.ledger.execute(SetBudget(scope, period, limit), also=write)

    def _budgets(self, scopes: set[str]) -> list[BudgetReport]:
        ledger = self.ledger.ledger
        now = self.clock.now_ms()
        reports = []
        for (scope, period), limit in sorted(ledger.budgets.items()):
            if scope in scopes:
                key = (scope, f"{period.value}:{period_key(period, now)}")
                used = ledger.budget_spent.get(key, 0) + ledger.budget_held.get(key, 0)
                reports.append(BudgetReport(scope, period, limit, used))
        return reports

    # -- reports --

    async def balance(self, org: str) -> BalanceReport:
        found = await self._orgs.find(org)
        ledger = await self.ledger.refresh()
        opened = ledger.orgs.get(found.id)
        credit_limit = opened.credit_limit if opened is not None else 0
        packs = tuple(
            PackReport(
                pid,
                tuple(sorted(state.models)),
                ledger.balance(pack(pid)),
                state.expires_at_ms,
                state.expired,
            )
            for pid, state in sorted(ledger.packs.items(), key=lambda i: (i[1].expires_at_ms, i[0]))
            if state.org == found.id
        )
        keys = {f"key:{k.id}" for k in await self._keys.list(found.id)}
        promo_balance = ledger.balance(promo(found.id))
        return BalanceReport(
            found.id,
            found.name,
            Currency(found.currency),
            ledger.balance(cash(found.id)),
            ledger.balance(cash(found.id)) + credit_limit + promo_balance,
            promo_balance,
            ledger.balance(held(found.id)),
            credit_limit,
            packs,
            tuple(self._budgets({f"org:{found.id}", *keys})),
        )

    async def usage(
        self, org: str, since_day: str | None = None, until_day: str | None = None
    ) -> list[UsageTotal]:
        """An organization's usage per UTC day and model, with what it was charged and what
        external upstreams charged us for it."""
        found = await self._orgs.find(org)
        for name, day in (("since", since_day), ("until", until_day)):
            if day is not None:
                try:
                    date.fromisoformat(day)
                except ValueError:
                    raise InvalidRequest(f"'{name}' must be a date as YYYY-MM-DD.", name) from None
        return await UsageRepository(self.database).totals(found.id, since_day, until_day)

    async def statement(
        self, org: str, since_ms: int = 0, until_ms: int | None = None
    ) -> list[store.StatementLine]:
        """Every ledger line of the organization's accounts in ``[since_ms, until_ms)``."""
        found = await self._orgs.find(org)
        until = self.clock.now_ms() + 1 if until_ms is None else until_ms
        if until <= since_ms:
            raise InvalidRequest("'until' must be later than 'since'.", "until")
        ledger = await self.ledger.refresh()
        accounts = [cash(found.id), promo(found.id), held(found.id), held_tokens(found.id)]
        accounts += [
            pack(pid) for pid, state in sorted(ledger.packs.items()) if state.org == found.id
        ]
        return await store.statement(self.database, accounts, since_ms, until)

    async def audit_log(self, limit: object = 100) -> list[store.AuditEntry]:
        count = _count(limit, "limit", positive=True)
        return await store.read_audit(self.database, min(count, 10_000))

    # -- prices and tiers --

    async def set_price(
        self,
        model: str,
        *,
        input: object,
        cached_input: object,
        output: object,
        reasoning: object = None,
        currency: object = Currency.CNY,
        effective_from: object = None,
    ) -> ModelPrice:
        """Prices per 1M tokens, as decimal strings; from ``effective_from`` (default now)."""
        if not isinstance(model, str) or not model.strip() or len(model) > 200:
            raise InvalidRequest("'model' must be a non-empty model name.", "model")
        price = ModelPrice(
            model,
            parse_amount(input, "input", allow_zero=True),
            parse_amount(cached_input, "cached_input", allow_zero=True),
            parse_amount(output, "output", allow_zero=True),
            None if reasoning is None else parse_amount(reasoning, "reasoning", allow_zero=True),
            parse_currency(currency),
            self.clock.now_ms()
            if effective_from is None
            else parse_time(effective_from, "effective_from"),
        )
        async with self.database.begin() as conn:
            old = await store.set_price(conn, price)
            before = None if old is None else price_json(old)
            target = f"{model}/{price.currency.value}"
            await self._audit(conn, "price.set", target, before, price_json(price))
        self._changed()
        return price

    async def list_prices(self) -> list[ModelPrice]:
        async with self.database.connect() as conn:
            catalog = await store.load_price_catalog(conn)
        return sorted(
            catalog.prices, key=lambda p: (p.model, p.currency.value, p.effective_from_ms)
        )

    async def set_tier(
        self,
        name: object,
        *,
        rpm: object = None,
        tpm: object = None,
        concurrency: object = None,
        models: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Tier:
        """Define or replace a tier; a cap left out (None) is unlimited."""
        if not isinstance(name, str) or not TIER_NAME.match(name):
            raise InvalidRequest("'name' must be 1 to 40 letters, digits, '_', '.' or '-'.", "name")
        per_model: dict[str, Limits] = {}
        for model, caps in (models or {}).items():
            if not isinstance(caps, Mapping) or not model or model == "*":
                raise InvalidRequest(f"'models.{model}' must be an object of caps.", "models")
            per_model[model] = Limits(
                *(
                    _cap(caps.get(dim), f"models.{model}.{dim}")
                    for dim in ("rpm", "tpm", "concurrency")
                )
            )
        tier = Tier(
            name,
            Limits(_cap(rpm, "rpm"), _cap(tpm, "tpm"), _cap(concurrency, "concurrency")),
            per_model,
        )
        async with self.database.begin() as conn:
            old = await store.set_tier(conn, tier)
            await self._audit(conn, "tier.set", name, old, store.tier_json(tier))
        self._changed()
        return tier

    async def list_tiers(self) -> list[Tier]:
        async with self.database.connect() as conn:
            return list((await store.load_tiers(conn)).values())


def tier_json(tier: Tier) -> dict[str, Any]:
    return {"name": tier.name, **store.tier_json(tier)}


def _period(value: object) -> BudgetPeriod:
    try:
        return BudgetPeriod(value)
    except ValueError:
        raise InvalidRequest("'period' must be 'day' or 'month'.", "period") from None


@asynccontextmanager
async def open_billing_admin(
    settings: Settings, actor: str, clock: Clock | None = None
) -> AsyncIterator[BillingAdmin]:
    """The data directory's database, migrated, administered as ``actor`` (the CLI)."""
    ensure_home(settings)
    database = open_database(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    try:
        await migrate(database)
        clock = clock or SystemClock()
        yield BillingAdmin(database, LedgerStore(database, clock.now_ms), clock, actor)
    finally:
        await database.dispose()
