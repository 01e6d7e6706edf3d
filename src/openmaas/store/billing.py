"""Billing tables besides the ledger: prices, tiers, organization terms and the checkpoints
of requests in flight. Each writer takes an ``AsyncConnection`` where its row must commit
together with something else (an audit row with the change it describes, ``store/audit.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, not_, or_, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import InvalidRequest
from openmaas.core.money import Currency
from openmaas.core.prices import ModelPrice, PriceCatalog
from openmaas.core.tiers import Limits, Tier
from openmaas.core.types import DataPolicy, Usage
from openmaas.store.rows import Insert
from openmaas.store.schema import (
    api_keys,
    inflight,
    ledger_entries,
    ledger_events,
    organizations,
    prices,
    tiers,
)

# -- prices ---------------------------------------------------------------------------


def price_row(price: ModelPrice) -> dict[str, Any]:
    return {
        "model": price.model,
        "currency": price.currency.value,
        "effective_from_ms": price.effective_from_ms,
        "input_per_million": price.input_per_million,
        "cached_input_per_million": price.cached_input_per_million,
        "output_per_million": price.output_per_million,
        "reasoning_per_million": price.reasoning_per_million,
    }


def _price(row: Any) -> ModelPrice:
    return ModelPrice(
        row.model,
        row.input_per_million,
        row.cached_input_per_million,
        row.output_per_million,
        row.reasoning_per_million,
        Currency(row.currency),
        row.effective_from_ms,
    )


async def load_price_catalog(conn: AsyncConnection) -> PriceCatalog:
    """Every price ever set, and each organization's discount."""
    found = [_price(r) for r in await conn.execute(select(prices))]
    discounts = {
        r.id: r.discount_bp
        for r in await conn.execute(
            select(organizations.c.id, organizations.c.discount_bp).where(
                organizations.c.discount_bp != 0
            )
        )
    }
    return PriceCatalog(tuple(found), discounts)


async def set_price(conn: AsyncConnection, price: ModelPrice) -> ModelPrice | None:
    """Insert or replace the price of (model, currency, effective from); returns the old one."""
    key = (
        (prices.c.model == price.model)
        & (prices.c.currency == price.currency.value)
        & (prices.c.effective_from_ms == price.effective_from_ms)
    )
    old = (await conn.execute(select(prices).where(key))).first()
    if old is not None:
        await conn.execute(delete(prices).where(key))
    await conn.execute(insert(prices).values(**price_row(price)))
    return None if old is None else _price(old)


# -- tiers ----------------------------------------------------------------------------


def _limits_json(limits: Limits) -> dict[str, int | None]:
    return {"rpm": limits.rpm, "tpm": limits.tpm, "concurrency": limits.concurrency}


def tier_json(tier: Tier) -> dict[str, Any]:
    body: dict[str, Any] = _limits_json(tier.limits)
    body["weight"] = tier.weight
    if tier.models:
        body["models"] = {model: _limits_json(lim) for model, lim in sorted(tier.models.items())}
    return body


def tier_from_json(name: str, body: dict[str, Any]) -> Tier:
    def limits(part: dict[str, Any]) -> Limits:
        return Limits(part.get("rpm"), part.get("tpm"), part.get("concurrency"))

    models = {model: limits(part) for model, part in (body.get("models") or {}).items()}
    return Tier(name, limits(body), models, int(body.get("weight", 1)))  # stored before: 1


async def load_tiers(conn: AsyncConnection) -> dict[str, Tier]:
    return {
        r.name: tier_from_json(r.name, json.loads(r.body))
        for r in await conn.execute(select(tiers).order_by(tiers.c.name))
    }


async def set_tier(conn: AsyncConnection, tier: Tier) -> dict[str, Any] | None:
    """Insert or replace a tier; returns the old definition."""
    old = (await conn.execute(select(tiers.c.body).where(tiers.c.name == tier.name))).first()
    body = json.dumps(tier_json(tier))
    if old is None:
        await conn.execute(insert(tiers).values(name=tier.name, body=body))
        return None
    await conn.execute(update(tiers).where(tiers.c.name == tier.name).values(body=body))
    previous: dict[str, Any] = json.loads(old.body)
    return previous


# -- organization and key terms -------------------------------------------------------


async def check_tier(database: AsyncEngine, tier: str | None, name: str = "tier") -> str | None:
    """``tier`` if it exists (None stays None), else ``InvalidRequest`` naming ``name``."""
    if tier is None:
        return None
    async with database.connect() as conn:
        known = set(await load_tiers(conn))
    if tier not in known:
        raise InvalidRequest(
            f"Unknown tier {tier!r}; the tiers are: {', '.join(sorted(known))}.", name
        )
    return tier


async def update_org(conn: AsyncConnection, org_id: str, **values: Any) -> dict[str, Any]:
    """Change an organization's columns (``tier``, ``discount_bp``, ``data_policy``,
    ``prompt_logging``); returns the old values."""
    columns = [getattr(organizations.c, name) for name in values]
    old = (await conn.execute(select(*columns).where(organizations.c.id == org_id))).first()
    if old is None:
        raise LookupError(org_id)
    await conn.execute(update(organizations).where(organizations.c.id == org_id).values(**values))
    return dict(old._mapping)


async def update_key_tier(conn: AsyncConnection, key_id: str, tier: str | None) -> str | None:
    old = (await conn.execute(select(api_keys.c.tier).where(api_keys.c.id == key_id))).first()
    if old is None:
        raise LookupError(key_id)
    await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(tier=tier))
    previous: str | None = old.tier
    return previous


@dataclass(frozen=True, slots=True)
class OrgTerms:
    """What admission needs to know about an organization."""

    currency: Currency = Currency.CNY
    tier: str | None = None  # None: no rate limits
    data_policy: DataPolicy = DataPolicy.BURST
    name: str = ""  # what people call it (refusals name it)
    prompt_logging: bool = False  # its generations are logged, prompt and answer


async def load_org_terms(conn: AsyncConnection) -> dict[str, OrgTerms]:
    """Each organization's currency, tier, data policy and prompt logging."""
    o = organizations.c
    rows = await conn.execute(
        select(o.id, o.name, o.currency, o.tier, o.data_policy, o.prompt_logging)
    )
    return {
        r.id: OrgTerms(
            Currency(r.currency), r.tier, DataPolicy(r.data_policy), r.name, r.prompt_logging
        )
        for r in rows
    }


# -- requests in flight ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request admitted but not yet recorded, with the engine's count at its last
    checkpoint (``None`` before the first); what crash recovery bills. ``instance_id``: the
    serving process that owns it (``store/instance.py``; None: written before instances).
    A ``frozen`` dataclass: ``dataclasses.replace`` makes the leased variant."""

    request_id: str
    key_id: str
    org_id: str
    model: str
    endpoint: str
    started_at_ms: int
    checkpoint: Usage | None
    instance_id: str | None = None
    lease_id: str | None = None  # admitted against this lease (``core/leases.py``)
    reserved_micros: int | None = None  # what it reserved there


async def admit_inflight(conn: AsyncConnection, request: InFlight) -> None:
    """The request's row, as it is admitted: nothing counted yet, owned by its instance."""
    await conn.execute(insert(inflight), [inflight_row(request).row])


def inflight_row(request: InFlight) -> Insert:
    """The request's row, as it is admitted, for a group-committed batch."""
    return Insert(
        inflight,
        dict(
            request_id=request.request_id,
            key_id=request.key_id,
            org_id=request.org_id,
            model=request.model,
            endpoint=request.endpoint,
            started_at_ms=request.started_at_ms,
            prompt_tokens=0,
            cached_tokens=0,
            completion_tokens=0,
            reasoning_tokens=0,
            checkpoint_at_ms=None,
            instance_id=request.instance_id,
            lease_id=request.lease_id,
            reserved_micros=request.reserved_micros,
        ),
    )


async def checkpoint(conn: AsyncConnection, request_id: str, usage: Usage, at_ms: int) -> None:
    """The engine's running count, as of ``at_ms``, on the request's row (no row: it ended)."""
    await conn.execute(
        update(inflight)
        .where(inflight.c.request_id == request_id)
        .values(
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            checkpoint_at_ms=at_ms,
        )
    )


async def forget_inflight(conn: AsyncConnection, request_id: str) -> bool:
    """Delete the request's row; True if there was one (so that whoever deletes it, in a
    transaction that commits, is the one who recorded the request)."""
    result = await conn.execute(delete(inflight).where(inflight.c.request_id == request_id))
    return bool(result.rowcount)


async def forget_recovered(conn: AsyncConnection, request_ids: list[str]) -> int:
    """Delete what is left of the rows a recovery read (a row whose hold was resolved
    already, so its settlement wrote nothing); returns how many."""
    result = await conn.execute(delete(inflight).where(inflight.c.request_id.in_(request_ids)))
    return int(result.rowcount or 0)


async def inflight_owners(conn: AsyncConnection) -> list[str]:
    """The instances that have requests in flight (rows without an owner not counted)."""
    rows = await conn.execute(
        select(inflight.c.instance_id).where(inflight.c.instance_id.is_not(None)).distinct()
    )
    return sorted(str(r.instance_id) for r in rows)


async def load_inflight(conn: AsyncConnection) -> list[InFlight]:
    """Every request in flight, whoever owns it, oldest first."""
    return await _load_inflight(conn, None)


async def load_owned_inflight(conn: AsyncConnection, owner: str | None) -> list[InFlight]:
    """The requests in flight of instance ``owner`` (None: the rows written before
    instances existed), oldest first."""
    owned = inflight.c.instance_id
    return await _load_inflight(conn, owned.is_(None) if owner is None else owned == owner)


async def _load_inflight(conn: AsyncConnection, where: Any) -> list[InFlight]:
    query = select(inflight).order_by(inflight.c.started_at_ms, inflight.c.request_id)
    rows = await conn.execute(query if where is None else query.where(where))
    return [
        InFlight(
            r.request_id,
            r.key_id,
            r.org_id,
            r.model,
            r.endpoint,
            r.started_at_ms,
            None
            if r.checkpoint_at_ms is None
            else Usage(
                prompt_tokens=r.prompt_tokens,
                cached_tokens=r.cached_tokens,
                completion_tokens=r.completion_tokens,
                reasoning_tokens=r.reasoning_tokens,
            ),
            r.instance_id,
            r.lease_id,
            r.reserved_micros,
        )
        for r in rows
    ]


# -- the event log, read on a command's own connection ---------------------------------


async def event_seq(conn: AsyncConnection, key: str) -> int | None:
    """The sequence number of the event with idempotency key ``key`` (None: no such event)."""
    row = (
        await conn.execute(
            select(ledger_events.c.seq).where(ledger_events.c.idempotency_key == key)
        )
    ).first()
    return None if row is None else int(row.seq)


async def account_balance(conn: AsyncConnection, account: str, through_seq: int) -> int:
    """``account``'s balance as of event ``through_seq``, from the entries (the log is the
    truth): what came in less what went out."""
    e = ledger_entries.c
    upto = e.event_seq <= through_seq
    credits = select(func.coalesce(func.sum(e.amount), 0)).where(e.credit == account, upto)
    debits = select(func.coalesce(func.sum(e.amount), 0)).where(e.debit == account, upto)
    return int((await conn.execute(credits)).scalar_one()) - int(
        (await conn.execute(debits)).scalar_one()
    )


# -- statements -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatementLine:
    at_ms: int
    event_seq: int
    account: str  # the organization's account that moved
    counterparty: str
    amount: int  # signed: positive into the account, negative out of it
    unit: str
    request_id: str | None


async def statement(
    engine: AsyncEngine, accounts: list[str], since_ms: int, until_ms: int
) -> list[StatementLine]:
    """Every ledger entry touching ``accounts`` in ``[since_ms, until_ms)``, oldest first."""
    e = ledger_entries.c
    query = (
        select(ledger_entries)
        .where((e.debit.in_(accounts)) | (e.credit.in_(accounts)))
        .where(e.at_ms >= since_ms, e.at_ms < until_ms)
        .order_by(e.id)
    )
    lines: list[StatementLine] = []
    async with engine.connect() as conn:
        for r in await conn.execute(query):
            if r.credit in accounts:
                lines.append(
                    StatementLine(r.at_ms, r.event_seq, r.credit, r.debit, r.amount, r.unit,
                                  r.request_id)
                )  # fmt: skip
            if r.debit in accounts:
                lines.append(
                    StatementLine(r.at_ms, r.event_seq, r.debit, r.credit, -r.amount, r.unit,
                                  r.request_id)
                )  # fmt: skip
    return lines


async def statement_page(
    engine: AsyncEngine,
    accounts: list[str],
    hidden: list[tuple[str, str]],
    since_ms: int,
    until_ms: int,
    offset: int,
    limit: int,
) -> tuple[list[StatementLine], int]:
    """One page of ``statement``'s lines, newest first, and how many lines there are in
    all, counted and cut by the database (a month of a busy organization is never read
    whole). Entries between the two accounts of a pair in ``hidden`` (either way round)
    make no line."""
    e = ledger_entries.c
    shown = [
        e.at_ms >= since_ms,
        e.at_ms < until_ms,
        *(
            not_(or_(and_(e.debit == a, e.credit == b), and_(e.debit == b, e.credit == a)))
            for a, b in hidden
        ),
    ]
    common = (e.id, e.at_ms, e.event_seq, e.unit, e.request_id)
    credited = select(
        *common, e.credit.label("account"), e.debit.label("counterparty"),
        e.amount.label("amount"), literal(0).label("side"),
    ).where(e.credit.in_(accounts), *shown)  # fmt: skip
    debited = select(
        *common, e.debit.label("account"), e.credit.label("counterparty"),
        (-e.amount).label("amount"), literal(1).label("side"),
    ).where(e.debit.in_(accounts), *shown)  # fmt: skip
    sides = union_all(credited, debited).subquery()
    u = sides.c
    page = select(sides).order_by(u.id.desc(), u.side.desc()).offset(offset).limit(limit)
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(sides))).scalar_one()
        rows = await conn.execute(page)
        lines = [
            StatementLine(r.at_ms, r.event_seq, r.account, r.counterparty, r.amount, r.unit,
                          r.request_id)
            for r in rows
        ]  # fmt: skip
    return lines, total
