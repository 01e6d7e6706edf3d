"""What the console reads of the roll-ups: an organization's rows over a period, filtered
by key and model, with their latency histograms; the platform's sums per day, organization
or model, revenue and what external upstreams charged us (the operator's overview, summed
by the database from ``platform_rollups``); never the usage records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.rollups import LATENCY, Rollup
from openmaas.store.rollups.roller import MARK
from openmaas.store.rollups.schema import (
    platform_rollups,
    rollup_marks,
    usage_rollup_buckets,
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
    """Every organization's roll-ups of one day, organization or model, of one kind in one
    currency: ``revenue``, what organizations were charged in theirs (None: requests that
    had no price), with the requests and tokens; ``upstream``, what external upstreams
    charged us in theirs (no tokens)."""

    group: str  # the day, the organization id or the model
    kind: str  # "revenue" | "upstream"
    currency: str | None
    requests: int
    tokens: int  # input + output
    micros: int


def _month_after(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def platform_queries(since_day: str, until_day: str, by: str) -> list[Select[Any]]:
    """The queries that sum ``platform_rollups`` over the days ``[since_day, until_day]``
    per ``by`` (``day``, ``org`` or ``model``), kind and currency: days and models from
    the rows per day and model; organizations from the rows per month for the whole months
    of the period and per day for the days around them."""
    p = platform_rollups.c
    group = p.ident if by in ("org", "model") else p.start
    columns = (group, p.kind, p.currency, func.sum(p.requests), func.sum(p.tokens),
               func.sum(p.micros))  # fmt: skip

    def summed(span: str, dim: str, *where: ColumnElement[bool]) -> Select[Any]:
        keys = (group, p.kind, p.currency)
        return select(*columns).where(p.span == span, p.dim == dim, *where).group_by(*keys)

    if by != "org":
        return [summed("day", "model", p.start >= since_day, p.start <= until_day)]
    first, last = date.fromisoformat(since_day), date.fromisoformat(until_day)
    months_from = first if first.day == 1 else _month_after(first)
    whole_last = _month_after(last) - timedelta(days=1) == last  # the period ends a month
    months_until = last if whole_last else last.replace(day=1) - timedelta(days=1)
    if months_from > months_until:  # no whole month: every day from the rows per day
        return [summed("day", "org", p.start >= since_day, p.start <= until_day)]
    days = or_(
        and_(p.start >= since_day, p.start < months_from.isoformat()),
        and_(p.start > months_until.isoformat(), p.start <= until_day),
    )
    return [
        summed("month", "org", p.start >= months_from.isoformat()[:7],
               p.start <= months_until.isoformat()[:7]),
        summed("day", "org", days),
    ]  # fmt: skip


async def platform_sums(
    engine: AsyncEngine, since_day: str, until_day: str, by: str
) -> list[PlatformSums]:
    """The platform's sums of the days ``[since_day, until_day]`` per ``by`` (``day``,
    ``org`` or ``model``), kind and currency, by the database (a group may come in two
    rows: one of whole months, one of days)."""
    found = []
    async with engine.connect() as conn:
        for query in platform_queries(since_day, until_day, by):
            for g, kind, currency, n, tokens, micros in await conn.execute(query):
                found.append(
                    PlatformSums(str(g), str(kind), currency or None, int(n or 0),
                                 int(tokens or 0), int(micros or 0))
                )  # fmt: skip
    return found


async def rolled_at_ms(engine: AsyncEngine) -> int | None:
    """When a pass last folded records and left none visible behind it (None: never)."""
    m = rollup_marks.c
    async with engine.connect() as conn:
        return (await conn.execute(select(m.rolled_at_ms).where(m.name == MARK))).scalar()
