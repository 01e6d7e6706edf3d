"""Billing administration: organizations' terms, funds, packs, budgets, prices and tiers.

Shared by the ``openmaas`` CLI and the admin HTTP API, which validate their input into the
bodies of ``billing/admin_bodies.py`` first; the answers are in ``billing/reports.py``.
Every change goes through the unit of work (``store/audit.py``): its audit row (who, what,
target, before, after) commits in the same transaction as the change, the ledger's own for
a ledger command. A refused operation raises (``InvalidRequest`` naming the field,
``NotFound``) having written nothing. After a change of configuration ``on_change`` is
called, so a server process drops the terms it caches.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.billing.admin_bodies import (
    BudgetLimit,
    NewFunds,
    NewPack,
    NewPrice,
    TermsChange,
    TierLimits,
)
from openmaas.billing.reports import (
    BalanceReport,
    BudgetReport,
    Funding,
    PackReport,
    price_json,
)
from openmaas.core.admin_fields import iso_ms
from openmaas.core.clock import Clock
from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.core.ledger_events import (
    BudgetPeriod,
    Event,
    GrantPack,
    GrantPromo,
    SetBudget,
    SetCreditLimit,
    TopUp,
    cash,
    held,
    held_tokens,
    leased,
    leased_promo,
    pack,
    period_key,
    promo,
)
from openmaas.core.money import Currency, format_micros
from openmaas.core.prices import ModelPrice
from openmaas.core.tiers import Limits, Tier
from openmaas.core.usage import UsageTotal
from openmaas.core.validation import checked_day
from openmaas.store import billing as store
from openmaas.store.audit import AuditedChanges, AuditEntry, AuditRecord, read_audit
from openmaas.store.ledger.batch import idempotency_key
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import (
    ApiKeyRepository,
    Organization,
    OrganizationRepository,
    UsageRepository,
)

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


def parse_period(value: str) -> BudgetPeriod:
    try:
        return BudgetPeriod(value)
    except ValueError:
        raise InvalidRequest("'period' must be 'day' or 'month'.", "period") from None


@dataclass
class BillingAdmin:
    """Billing administration; ``changes`` writes as its actor (``cli:<user>``,
    ``key:<key id>``)."""

    changes: AuditedChanges
    clock: Clock
    on_change: Callable[[], None] | None = None
    _orgs: OrganizationRepository = field(init=False)
    _keys: ApiKeyRepository = field(init=False)

    def __post_init__(self) -> None:
        self._orgs = OrganizationRepository(self.database)
        self._keys = ApiKeyRepository(self.database)

    @property
    def database(self) -> AsyncEngine:
        return self.changes.database

    @property
    def ledger(self) -> LedgerStore:
        return self.changes.ledger

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- organizations --

    async def org(self, id_or_name: str) -> Organization:
        return await self._orgs.find(id_or_name)

    async def list_orgs(self) -> list[Organization]:
        return await self._orgs.list()

    async def set_org(self, org: str, change: TermsChange) -> Organization:
        """Change an organization's tier (None removes it), discount, credit limit, data
        policy (``local_only``: never an external deployment; ``burst``) or prompt logging
        (its generations logged, prompt and answer: ``docs/metrics.md``)."""
        found = await self._orgs.find(org)
        values: dict[str, Any] = {}
        if change.sets_tier:
            values["tier"] = await store.check_tier(self.database, change.tier)
        if change.discount_bp is not None:
            values["discount_bp"] = change.discount_bp
        if change.data_policy is not None:
            values["data_policy"] = change.data_policy.value
        if change.prompt_logging is not None:
            values["prompt_logging"] = change.prompt_logging
        limit = change.credit_limit
        if not values and limit is None:
            raise InvalidRequest(
                "Nothing to change: give a tier, discount_bp, credit_limit, data_policy or "
                "prompt_logging."
            )

        # Read before the change: admins' changes of one organization are rare enough that
        # another landing in between is not worth a lock.
        known = (await self.ledger.refresh()).orgs.get(found.id)
        old_limit = known.credit_limit if known is not None else 0

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            before = await store.update_org(conn, found.id, **values) if values else {}
            after = dict(values)
            if limit is not None:
                before["credit_limit"] = format_micros(old_limit)
                after["credit_limit"] = format_micros(limit)
            return AuditRecord("org.update", found.id, before, after)

        command = None if limit is None else SetCreditLimit(found.id, limit)
        await self.changes.commit(write, command)
        self._changed()
        return await self._orgs.find(found.id)

    async def set_key_tier(self, key_id: str, tier: str | None) -> str | None:
        """Give a key a tier narrowing its organization's (None: the organization's)."""
        checked = await store.check_tier(self.database, tier)

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            try:
                old = await store.update_key_tier(conn, key_id, checked)
            except LookupError:
                raise NotFound(f"No API key with id '{key_id}'.") from None
            return AuditRecord("key.update", key_id, {"tier": old}, {"tier": checked})

        await self.changes.commit(write)
        self._changed()
        return checked

    # -- money and packs --

    async def _fund(self, org: str, funds: NewFunds, *, promotional: bool) -> Funding:
        found = await self._orgs.find(org)
        micros = funds.amount
        fid = funds.id or ("promo_" if promotional else "topup_") + secrets.token_hex(8)
        account = promo(found.id) if promotional else cash(found.id)
        action = "billing.promo" if promotional else "billing.topup"

        async def write(conn: AsyncConnection, events: tuple[Event, ...]) -> AuditRecord | None:
            if not events:
                return None  # a repeated id changes nothing, so there is nothing to audit
            # The balance as the log has it just after this event (requests settle meanwhile).
            seq = await store.event_seq(conn, idempotency_key(events[-1]) or "")
            before = await store.account_balance(conn, account, seq or 0) - micros
            return AuditRecord(
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
        events = await self.changes.commit(write, command)
        return Funding(fid, bool(events), await self.balance(found.id))

    async def top_up(self, org: str, funds: NewFunds) -> Funding:
        """Add prepaid money; ``funds.id`` makes a retry harmless (generated if not given)."""
        return await self._fund(org, funds, promotional=False)

    async def grant_promo(self, org: str, funds: NewFunds) -> Funding:
        """Add promotional credit (spent before cash)."""
        return await self._fund(org, funds, promotional=True)

    async def grant_pack(self, org: str, grant: NewPack) -> PackReport:
        """A resource pack: ``tokens`` for ``models`` until ``expires_at``."""
        found = await self._orgs.find(org)
        if grant.expires_at <= self.clock.now_ms():
            raise InvalidRequest("'expires_at' must be in the future.", "expires_at")
        pid = grant.id or "pack_" + secrets.token_hex(8)
        names = tuple(sorted(set(grant.models)))

        async def write(conn: AsyncConnection, events: tuple[Event, ...]) -> AuditRecord | None:
            if not events:
                return None  # a repeated pack id changes nothing
            after = {
                "org": found.id,
                "models": list(names),
                "tokens": grant.tokens,
                "expires_at": iso_ms(grant.expires_at),
            }
            return AuditRecord("billing.pack_grant", pid, None, after)

        command = GrantPack(pid, found.id, frozenset(names), grant.tokens, grant.expires_at)
        await self.changes.commit(write, command)
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

    async def _scope(self, scope: str) -> tuple[str, Organization]:
        """``org:<id or name>`` or ``key:<id>``, resolved, with the organization it bills."""
        kind, _, ident = scope.partition(":")
        if kind == "org" and ident:
            found = await self._orgs.find(ident)
            return f"org:{found.id}", found
        if kind == "key" and ident:
            key = await self._keys.get(ident.partition(".")[0])
            if key is None:
                raise NotFound(f"No API key with id '{ident}'.")
            return f"key:{key.id}", await self._orgs.find(key.org_id)
        raise InvalidRequest("'scope' must be 'org:<id or name>' or 'key:<key id>'.", "scope")

    async def set_budget(self, scope: str, period: str, budget: BudgetLimit) -> BudgetReport:
        """A spending cap per UTC day or month on a key or an organization."""
        resolved, _org = await self._scope(scope)
        span = parse_period(period)
        await self._budget(resolved, span, budget.limit)
        return next(b for b in self._budgets({resolved}) if b.period is span)

    async def clear_budget(self, scope: str, period: str) -> None:
        resolved, _org = await self._scope(scope)
        span = parse_period(period)
        if (resolved, span) not in (await self.ledger.refresh()).budgets:
            raise NotFound(f"No {span.value} budget on {resolved}.")
        await self._budget(resolved, span, None)

    async def _budget(self, scope: str, period: BudgetPeriod, limit: int | None) -> None:
        old = (await self.ledger.refresh()).budgets.get((scope, period))

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            return AuditRecord(
                "billing.budget_set" if limit is not None else "billing.budget_clear",
                f"{scope}/{period.value}",
                None if old is None else {"limit": format_micros(old)},
                None if limit is None else {"limit": format_micros(limit)},
            )

        await self.changes.commit(write, SetBudget(scope, period, limit))

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
        # Money leased to gateway processes is still the organization's: shown in its cash
        # and promotional credit, and on its own line.
        leased_promo, leased_cash = ledger.leased_parts(found.id)
        promo_balance = ledger.balance(promo(found.id)) + leased_promo
        cash_balance = ledger.balance(cash(found.id)) + leased_cash
        return BalanceReport(
            found.id,
            found.name,
            Currency(found.currency),
            cash_balance,
            cash_balance + credit_limit + promo_balance,
            promo_balance,
            ledger.balance(held(found.id)),
            credit_limit,
            packs,
            tuple(self._budgets({f"org:{found.id}", *keys})),
            leased_promo + leased_cash,
        )

    async def balances(self) -> dict[str, tuple[int, int]]:
        """Every organization's available money and credit limit, as ``balance`` reports
        them, from one read of the ledger (the operators' list of organizations)."""
        ledger = await self.ledger.refresh()
        found = {}
        for org in await self._orgs.list():
            opened = ledger.orgs.get(org.id)
            credit_limit = opened.credit_limit if opened is not None else 0
            leased_promo, leased_cash = ledger.leased_parts(org.id)
            available = (
                ledger.balance(cash(org.id)) + leased_cash
                + ledger.balance(promo(org.id)) + leased_promo
                + credit_limit
            )  # fmt: skip
            found[org.id] = (available, credit_limit)
        return found

    async def usage(
        self, org: str, since_day: str | None = None, until_day: str | None = None
    ) -> list[UsageTotal]:
        """An organization's usage per UTC day and model, with what it was charged and what
        external upstreams charged us for it."""
        found = await self._orgs.find(org)
        since = None if since_day is None else checked_day(since_day, "since")
        until = None if until_day is None else checked_day(until_day, "until")
        return await UsageRepository(self.database).totals(found.id, since, until)

    async def statement(
        self, org: str, since_ms: int = 0, until_ms: int | None = None
    ) -> list[store.StatementLine]:
        """Every ledger line of the organization's accounts in ``[since_ms, until_ms)``.
        Money leased to gateway processes is still the organization's, so a lease's lines
        show as cash (or promo) and the moves between cash and a lease are left out: the
        cash lines add up to the cash of the balance report."""
        accounts, as_own, until = await self._statement_accounts(org, since_ms, until_ms)
        lines = []
        for line in await store.statement(self.database, accounts, since_ms, until):
            account = as_own.get(line.account, line.account)
            counterparty = as_own.get(line.counterparty, line.counterparty)
            if account != counterparty:  # a move into or out of a lease is no line
                lines.append(replace(line, account=account, counterparty=counterparty))
        return lines

    async def statement_page(
        self, org: str, since_ms: int, until_ms: int, offset: int, limit: int
    ) -> tuple[list[store.StatementLine], int]:
        """``statement``'s lines newest first, ``limit`` of them after ``offset``, and
        how many there are in all: the console's paged statement, cut by the database."""
        accounts, as_own, until = await self._statement_accounts(org, since_ms, until_ms)
        hidden = list(as_own.items())  # a lease and the account it draws on
        page, total = await store.statement_page(
            self.database, accounts, hidden, since_ms, until, offset, limit
        )
        lines = [
            replace(line, account=as_own.get(line.account, line.account),
                    counterparty=as_own.get(line.counterparty, line.counterparty))
            for line in page
        ]  # fmt: skip
        return lines, total

    async def _statement_accounts(
        self, org: str, since_ms: int, until_ms: int | None
    ) -> tuple[list[str], dict[str, str], int]:
        """The organization's accounts, its leases mapped to the accounts they draw on,
        and the end of the period (now when ``until_ms`` is None)."""
        found = await self._orgs.find(org)
        until = self.clock.now_ms() + 1 if until_ms is None else until_ms
        if until <= since_ms:
            raise InvalidRequest("'until' must be later than 'since'.", "until")
        ledger = await self.ledger.refresh()
        as_own = {leased(found.id): cash(found.id), leased_promo(found.id): promo(found.id)}
        accounts = [cash(found.id), promo(found.id), held(found.id), held_tokens(found.id),
                    *as_own]  # fmt: skip
        accounts += [
            pack(pid) for pid, state in sorted(ledger.packs.items()) if state.org == found.id
        ]
        return accounts, as_own, until

    async def audit_log(
        self, limit: int = 100, action: str = "", actor: str = ""
    ) -> list[AuditEntry]:
        """The newest ``limit`` entries (at most 10,000), newest first, whose action starts
        with ``action`` and whose actor contains ``actor``."""
        if limit < 1:
            raise InvalidRequest("'limit' must be a positive integer.", "limit")
        for name, value, most in (("action", action, 60), ("actor", actor, 80)):
            if len(value) > most:
                raise InvalidRequest(f"'{name}' is at most {most} characters.", name)
        return await read_audit(self.database, min(limit, 10_000), action, actor)

    # -- prices and tiers --

    async def set_price(self, new: NewPrice) -> ModelPrice:
        """Prices per 1M tokens; from ``new.effective_from`` (default now)."""
        price = ModelPrice(
            new.model,
            new.input,
            new.cached_input,
            new.output,
            new.reasoning,
            new.currency,
            self.clock.now_ms() if new.effective_from is None else new.effective_from,
        )

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            old = await store.set_price(conn, price)
            before = None if old is None else price_json(old)
            target = f"{price.model}/{price.currency.value}"
            return AuditRecord("price.set", target, before, price_json(price))

        await self.changes.commit(write)
        self._changed()
        return price

    async def list_prices(self) -> list[ModelPrice]:
        async with self.database.connect() as conn:
            catalog = await store.load_price_catalog(conn)
        return sorted(
            catalog.prices, key=lambda p: (p.model, p.currency.value, p.effective_from_ms)
        )

    async def set_tier(self, name: str, limits: TierLimits) -> Tier:
        """Define or replace a tier; a cap left out (None) is unlimited."""
        if not TIER_NAME.match(name):
            raise InvalidRequest("'name' must be 1 to 40 letters, digits, '_', '.' or '-'.", "name")
        tier = Tier(
            name,
            Limits(limits.rpm, limits.tpm, limits.concurrency),
            {
                model: Limits(caps.rpm, caps.tpm, caps.concurrency)
                for model, caps in (limits.models or {}).items()
            },
            limits.weight,
        )

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            old = await store.set_tier(conn, tier)
            return AuditRecord("tier.set", name, old, store.tier_json(tier))

        await self.changes.commit(write)
        self._changed()
        return tier

    async def list_tiers(self) -> list[Tier]:
        async with self.database.connect() as conn:
            return list((await store.load_tiers(conn)).values())
