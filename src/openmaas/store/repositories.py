"""Repositories: the only code that speaks SQL. They take and return core types."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.core.keys import NewKey
from openmaas.core.money import Currency, Money
from openmaas.core.usage import UsageRecord, UsageTotal
from openmaas.store.rows import Delete, Insert
from openmaas.store.schema import api_keys, inflight, organizations, usage_records


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    created_at_ms: int
    currency: str = "CNY"
    tier: str | None = None  # None: no rate limits
    discount_bp: int = 0
    data_policy: str = "burst"  # core.types.DataPolicy
    prompt_logging: bool = False  # its generations logged, prompt and answer (an operator's)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    org_id: str
    name: str
    role: str
    secret_hash: str
    created_at_ms: int
    revoked_at_ms: int | None
    tier: str | None = None  # narrows the organization's tier
    models: frozenset[str] | None = None  # the only models it may use; None: every model
    expires_at_ms: int | None = None  # refused from then on; None: never expires

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms is not None

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and self.expires_at_ms <= now_ms


def models_json(models: frozenset[str] | None) -> str | None:
    """A key's model restriction as stored: a sorted JSON array, or NULL for every model."""
    return None if models is None else orjson.dumps(sorted(models)).decode()


def _api_key(row: Any) -> ApiKey:
    values = dict(row._mapping)
    stored = values.pop("models", None)
    models = None if stored is None else frozenset(orjson.loads(stored))
    return ApiKey(**values, models=models)


def _money(micros: int | None, currency: str | None) -> Money | None:
    return None if currency is None else Money(int(micros or 0), Currency(currency))


def utc_day(epoch_ms: int) -> str:
    """The UTC date of ``epoch_ms`` (``YYYY-MM-DD``), as every usage record stores it."""
    return _utc_date(epoch_ms // _MS_PER_DAY)


_MS_PER_DAY = 86_400_000


@functools.lru_cache(maxsize=4)  # a pure function of the day: one per usage record otherwise
def _utc_date(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def new_organization(
    name: str, now_ms: int, *, currency: str = "CNY", tier: str | None = None
) -> Organization:
    """An organization not yet stored, with a fresh id."""
    return Organization("org_" + secrets.token_hex(8), name, now_ms, currency, tier)


async def insert_organization(conn: AsyncConnection, org: Organization) -> None:
    """Insert an organization's row in the caller's transaction (the one way organizations
    are created); a taken name is refused naming ``name``."""
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(organizations).values(
                    id=org.id,
                    name=org.name,
                    created_at_ms=org.created_at_ms,
                    currency=org.currency,
                    tier=org.tier,
                )
            )
    except IntegrityError as exc:
        raise InvalidRequest(f"An organization named '{org.name}' already exists.", "name") from exc


async def insert_key(
    conn: AsyncConnection,
    org_id: str,
    name: str,
    role: str,
    key: NewKey,
    now_ms: int,
    *,
    models: frozenset[str] | None = None,
    expires_at_ms: int | None = None,
) -> ApiKey:
    """Insert a key's row (its secret's hash only) in the caller's transaction; ``models``
    and ``expires_at_ms`` restrict it (``None``: every model, never expires)."""
    row = ApiKey(
        key.key_id,
        org_id,
        name,
        role,
        key.secret_hash,
        now_ms,
        None,
        models=models,
        expires_at_ms=expires_at_ms,
    )
    await conn.execute(
        insert(api_keys).values(
            id=row.id,
            org_id=org_id,
            name=name,
            role=role,
            secret_hash=row.secret_hash,
            created_at_ms=now_ms,
            models=models_json(models),
            expires_at_ms=expires_at_ms,
        )
    )
    return row


async def revoke_key(conn: AsyncConnection, key_id: str, now_ms: int) -> int | None:
    """Revoke a key in the caller's transaction; returns when it was revoked before (None:
    it was live until now). Raises ``NotFound`` for an unknown key."""
    old = (
        await conn.execute(select(api_keys.c.revoked_at_ms).where(api_keys.c.id == key_id))
    ).first()
    if old is None:
        raise NotFound(f"No API key with id '{key_id}'.")
    if old.revoked_at_ms is None:
        await conn.execute(
            update(api_keys).where(api_keys.c.id == key_id).values(revoked_at_ms=now_ms)
        )
    return old.revoked_at_ms  # type: ignore[no-any-return]


class OrganizationRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, name: str, now_ms: int, *, currency: str = "CNY", tier: str | None = None
    ) -> Organization:
        """An organization with no audit row (tests and benchmarks; administration goes
        through ``accounts.admin.AccountsAdmin.create_org``)."""
        org = new_organization(name, now_ms, currency=currency, tier=tier)
        async with self._engine.begin() as conn:
            await insert_organization(conn, org)
        return org

    async def list(self) -> list[Organization]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(organizations).order_by(organizations.c.created_at_ms))
            return [Organization(**row._mapping) for row in rows]

    async def find(self, id_or_name: str) -> Organization:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(organizations).where(
                        (organizations.c.id == id_or_name) | (organizations.c.name == id_or_name)
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"No organization with id or name '{id_or_name}'.")
        return Organization(**row._mapping)

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(organizations))).scalar_one()
            )


class ApiKeyRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, org_id: str, name: str, role: str, key: NewKey, now_ms: int) -> ApiKey:
        """A key with no audit row (tests; administration goes through ``AccountsAdmin``)."""
        async with self._engine.begin() as conn:
            return await insert_key(conn, org_id, name, role, key, now_ms)

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _api_key(row) if row is not None else None

    async def list(self, org_id: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at_ms)
        if org_id is not None:
            query = query.where(api_keys.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return [_api_key(row) for row in await conn.execute(query)]

    async def revoke(self, key_id: str, now_ms: int) -> None:
        """Revoke with no audit row (tests; administration goes through ``AccountsAdmin``)."""
        async with self._engine.begin() as conn:
            await revoke_key(conn, key_id, now_ms)


def usage_row(record: UsageRecord) -> dict[str, object]:
    upstream = record.upstream_cost
    return {
        "request_id": record.request_id,
        "key_id": record.key_id,
        "org_id": record.org_id,
        "model": record.model,
        "endpoint": record.endpoint,
        "prompt_tokens": record.usage.prompt_tokens,
        "cached_tokens": record.usage.cached_tokens,
        "completion_tokens": record.usage.completion_tokens,
        "reasoning_tokens": record.usage.reasoning_tokens,
        "estimated": int(record.usage.estimated),
        "termination": record.termination.value,
        "started_at_ms": record.started_at_ms,
        "day": utc_day(record.started_at_ms),
        "ttft_ms": record.ttft_ms,
        "latency_ms": record.latency_ms,
        "error": record.error,
        "cost_micros": record.cost.micros if record.cost is not None else None,
        "currency": record.cost.currency.value if record.cost is not None else None,
        "deployment": record.deployment,
        "data_class": record.data_class,
        "route": record.route,
        "attempts": record.attempts,
        "upstream_cost_micros": None if upstream is None else upstream.micros,
        "upstream_currency": None if upstream is None else upstream.currency.value,
    }


def usage_rows(record: UsageRecord, *, forget: bool = True) -> tuple[Insert | Delete, ...]:
    """The usage record, and the deletion of the request's in-flight checkpoint (the record
    now says how it ended; ``forget=False``: it has none), for a group-committed batch
    (``store/rows.py``)."""
    usage = Insert(usage_records, usage_row(record))
    return (usage, Delete(inflight.c.request_id, record.request_id)) if forget else (usage,)


# Built once: a statement built per call (``.values(**row)``, ``== request_id``) costs more
# CPU in SQLAlchemy than executing it (docs/benchmarks.md); with bound parameters the
# compiled form is reused.
_INSERT_USAGE = insert(usage_records)
_FORGET_INFLIGHT = delete(inflight).where(inflight.c.request_id == bindparam("request_id"))


async def insert_usage(conn: AsyncConnection, record: UsageRecord) -> None:
    """Insert one usage record on ``conn`` (in the caller's transaction) and forget the
    request's in-flight checkpoint: the record now says how it ended."""
    await conn.execute(_INSERT_USAGE, usage_row(record))
    await conn.execute(_FORGET_INFLIGHT, {"request_id": record.request_id})


class UsageRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(self, record: UsageRecord) -> None:
        """Append one record; committed (durable) when this returns. Idempotent by request id."""
        try:
            async with self._engine.begin() as conn:
                await insert_usage(conn, record)
        except IntegrityError:
            return  # already recorded under this request id: recording twice changes nothing

    async def get(self, request_id: str) -> dict[str, object] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(usage_records).where(usage_records.c.request_id == request_id)
                )
            ).first()
        return dict(row._mapping) if row is not None else None

    async def totals(
        self, org_id: str | None = None, since_day: str | None = None, until_day: str | None = None
    ) -> list[UsageTotal]:
        """Per UTC day, model and the organizations' currency (one row a day and model for
        one organization): requests, tokens, the charge, and the upstreams' costs per their
        currency. Money is summed only within a currency: across organizations the rows
        are split by each organization's currency, and upstream costs stay apart by theirs."""
        u, o = usage_records.c, organizations.c
        # the organization's currency (a record of one the table does not know: its own)
        currency = func.coalesce(o.currency, u.currency).label("currency")
        query = (
            select(
                u.day,
                u.model,
                currency,
                u.upstream_currency,
                func.count().label("requests"),
                func.sum(u.prompt_tokens).label("prompt_tokens"),
                func.sum(u.cached_tokens).label("cached_tokens"),
                func.sum(u.completion_tokens).label("completion_tokens"),
                func.count(u.cost_micros).label("priced"),
                func.sum(u.cost_micros).label("cost_micros"),
                func.sum(u.upstream_cost_micros).label("upstream_cost_micros"),
            )
            .select_from(usage_records.outerjoin(organizations, o.id == u.org_id))
            .group_by(u.day, u.model, currency, u.upstream_currency)
            .order_by(u.day, u.model, currency)
        )
        if org_id is not None:
            query = query.where(u.org_id == org_id)
        if since_day is not None:
            query = query.where(u.day >= since_day)
        if until_day is not None:
            query = query.where(u.day <= until_day)
        totals: dict[tuple[str, str, str], UsageTotal] = {}
        async with self._engine.connect() as conn:
            for r in await conn.execute(query):
                key = (r.day, r.model, r.currency)
                upstream = _money(r.upstream_cost_micros, r.upstream_currency)
                found = totals.get(key)
                priced = r.priced and r.currency is not None
                cost = Money(int(r.cost_micros or 0), Currency(r.currency)) if priced else None
                if found is not None:
                    if found.cost is not None:
                        cost = found.cost if cost is None else found.cost + cost
                    found = replace(
                        found,
                        requests=found.requests + int(r.requests),
                        prompt_tokens=found.prompt_tokens + int(r.prompt_tokens or 0),
                        cached_tokens=found.cached_tokens + int(r.cached_tokens or 0),
                        completion_tokens=found.completion_tokens + int(r.completion_tokens or 0),
                        cost=cost,
                    )
                else:
                    found = UsageTotal(
                        day=r.day,
                        model=r.model,
                        requests=int(r.requests),
                        prompt_tokens=int(r.prompt_tokens or 0),
                        cached_tokens=int(r.cached_tokens or 0),
                        completion_tokens=int(r.completion_tokens or 0),
                        cost=cost,
                    )
                if upstream is not None:
                    costs = sorted((*found.upstream_costs, upstream), key=lambda m: m.currency)
                    found = replace(found, upstream_costs=tuple(costs))
                totals[key] = found
        return list(totals.values())
