"""What the console reads of the roll-ups: an organization's rows over a period, filtered
by key and model, with their latency histograms; the platform's sums per day, organization
or model (the operator's overview, summed by the database), and what external upstreams
charged us per day, organization or model; never the usage records."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.rollups import LATENCY, Rollup
from openmaas.store.rollups.roller import MARK
from openmaas.store.rollups.schema import (
    rollup_marks,
    usage_rollup_buckets,
    usage_rollup_upstream,
    usage_rollups,
)


@dataclass(frozen=True, slots=True)
class RollupRow:
    day: str
    model: str
    key_id: str
    sums: Rollup


async def org_rollups(
    engine: AsyncEngine,
    org_id: str,
    since_day: str,
    until_day: str,
    *,
    key_id: str | None = None,
    model: str | None = None,
) -> list[RollupRow]:
    """The organization's roll-up rows of the days ``[since_day, until_day]`` (UTC dates),
    by day, model and key."""
    r, b = usage_rollups.c, usage_rollup_buckets.c
    rows = select(usage_rollups).where(r.org_id == org_id, r.day >= since_day, r.day <= until_day)
    buckets = select(b.day, b.model, b.key_id, b.metric, b.bucket, b.requests).where(
        b.org_id == org_id, b.day >= since_day, b.day <= until_day
    )
    if key_id is not None:
        rows, buckets = rows.where(r.key_id == key_id), buckets.where(b.key_id == key_id)
    if model is not None:
        rows, buckets = rows.where(r.model == model), buckets.where(b.model == model)
    found: dict[tuple[str, str, str], Rollup] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(rows.order_by(r.day, r.model, r.key_id)):
            found[(row.day, row.model, row.key_id)] = Rollup(
                requests=int(row.requests),
                errors=int(row.errors),
                input_tokens=int(row.input_tokens),
                cached_tokens=int(row.cached_tokens),
                output_tokens=int(row.output_tokens),
                reasoning_tokens=int(row.reasoning_tokens),
                cost_micros=int(row.cost_micros),
                currency=row.currency,
            )
        for day, model_name, key, metric, bucket, n in await conn.execute(buckets):
            rollup = found.get((day, model_name, key))
            if rollup is not None:
                histogram = rollup.latency if metric == LATENCY else rollup.ttft
                histogram[int(bucket)] = int(n)
    return [RollupRow(day, m, k, sums) for (day, m, k), sums in found.items()]


@dataclass(frozen=True, slots=True)
class PlatformSums:
    """Every organization's roll-ups of one day, organization or model, in one currency
    (None: requests that had no price)."""

    group: str  # the day, the organization id or the model
    currency: str | None
    requests: int
    tokens: int  # input + output
    cost_micros: int


PLATFORM_GROUPS = {"day": usage_rollups.c.day, "org": usage_rollups.c.org_id,
                   "model": usage_rollups.c.model}  # fmt: skip


async def platform_sums(
    engine: AsyncEngine, since_day: str, until_day: str, by: str
) -> list[PlatformSums]:
    """The roll-ups of the days ``[since_day, until_day]`` summed per ``by`` (``day``,
    ``org`` or ``model``) and currency, by the database: one row per group and currency."""
    r = usage_rollups.c
    group = PLATFORM_GROUPS[by]
    query = (
        select(
            group,
            r.currency,
            func.sum(r.requests),
            func.sum(r.input_tokens + r.output_tokens),
            func.sum(r.cost_micros),
        )
        .where(r.day >= since_day, r.day <= until_day)
        .group_by(group, r.currency)
    )
    async with engine.connect() as conn:
        return [
            PlatformSums(str(g), currency, int(n or 0), int(tokens or 0), int(cost or 0))
            for g, currency, n, tokens, cost in await conn.execute(query)
        ]


@dataclass(frozen=True, slots=True)
class UpstreamSums:
    """What external upstreams charged us for every organization's requests of one day,
    organization or model, in one of the upstreams' currencies."""

    group: str  # the day, the organization id or the model
    currency: str
    requests: int  # the requests that had an upstream cost
    cost_micros: int


UPSTREAM_GROUPS = {"day": usage_rollup_upstream.c.day, "org": usage_rollup_upstream.c.org_id,
                   "model": usage_rollup_upstream.c.model}  # fmt: skip


async def platform_upstream(
    engine: AsyncEngine, since_day: str, until_day: str, by: str
) -> list[UpstreamSums]:
    """The upstream costs of the days ``[since_day, until_day]`` summed per ``by`` (``day``,
    ``org`` or ``model``) and currency, by the database."""
    u = usage_rollup_upstream.c
    group = UPSTREAM_GROUPS[by]
    query = (
        select(group, u.currency, func.sum(u.requests), func.sum(u.cost_micros))
        .where(u.day >= since_day, u.day <= until_day)
        .group_by(group, u.currency)
    )
    async with engine.connect() as conn:
        return [
            UpstreamSums(str(g), str(currency), int(n or 0), int(cost or 0))
            for g, currency, n, cost in await conn.execute(query)
        ]


async def rolled_at_ms(engine: AsyncEngine) -> int | None:
    """When a pass last folded records and left none visible behind it (None: never)."""
    m = rollup_marks.c
    async with engine.connect() as conn:
        return (await conn.execute(select(m.rolled_at_ms).where(m.name == MARK))).scalar()
