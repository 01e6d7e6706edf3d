"""Daily roll-ups of usage for the console's usage page: the background pass that folds new
usage records into them (``store/rollups/roller.py``, run by every serving process every
``OPENMAAS_ROLLUP_SECONDS``; passes of several processes take turns), and the report of an
organization's period read from them alone: per day, per model, per key, and in total;
and the platform's (the operator's overview): every organization's tokens and revenue per
day, the top organizations and models, and beside the revenue what external upstreams
charged us (each in its own currency), summed by the database from the roll-ups alone."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.errors import InvalidRequest
from openmaas.core.rollups import Rollup
from openmaas.store.rollups.reads import (
    PlatformSums,
    RollupRow,
    org_rollups,
    platform_sums,
    rolled_at_ms,
)
from openmaas.store.rollups.roller import UsageRoller

log = logging.getLogger("openmaas.rollups")

MAX_DAYS = 366  # the longest period one report reads


async def keep_rolling(roller: UsageRoller, every_seconds: float) -> None:
    """Fold new usage records into the roll-ups every ``every_seconds``, until cancelled."""
    while True:
        try:
            await roller.roll()
        except Exception:  # the next round tries again
            log.exception("rolling usage records up failed")
        await asyncio.sleep(every_seconds)


@dataclass(frozen=True)
class Period:
    """The UTC days ``since`` to ``until``, both included."""

    since: date
    until: date

    @classmethod
    def last(cls, days: int, today: date) -> Period:
        return cls(today - timedelta(days=days - 1), today)

    @classmethod
    def parse(cls, since: str, until: str, default: Period) -> Period:
        try:
            first = date.fromisoformat(since) if since else default.since
            last = date.fromisoformat(until) if until else default.until
        except ValueError:
            raise InvalidRequest("A day is written YYYY-MM-DD.", "since") from None
        if last < first:
            raise InvalidRequest("'until' must not be before 'since'.", "until")
        if (last - first).days >= MAX_DAYS:
            raise InvalidRequest(f"A period is at most {MAX_DAYS} days.", "since")
        return cls(first, last)

    def as_query(self) -> dict[str, str]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}

    def days(self) -> list[str]:
        count = (self.until - self.since).days + 1
        return [(self.since + timedelta(days=i)).isoformat() for i in range(count)]


@dataclass
class UsageReport:
    """An organization's usage over a period, from the roll-ups only."""

    period: Period
    rows: list[RollupRow]
    rolled_at_ms: int | None  # when new records were last folded (None: never yet)
    by_day: dict[str, Rollup] = field(default_factory=dict)  # every day of the period
    by_model: dict[str, Rollup] = field(default_factory=dict)
    by_day_model: dict[tuple[str, str], Rollup] = field(default_factory=dict)
    total: Rollup = field(default_factory=Rollup)

    def __post_init__(self) -> None:
        self.by_day = {day: Rollup() for day in self.period.days()}
        for row in self.rows:
            self.by_day.setdefault(row.day, Rollup()).add(row.sums)
            self.by_model.setdefault(row.model, Rollup()).add(row.sums)
            self.by_day_model.setdefault((row.day, row.model), Rollup()).add(row.sums)
            self.total.add(row.sums)

    @property
    def models(self) -> list[str]:
        return sorted(self.by_model)

    def only_model(self, model: str) -> UsageReport:
        """The same report for one model's rows."""
        rows = [row for row in self.rows if row.model == model]
        return UsageReport(self.period, rows, self.rolled_at_ms)


async def usage_report(
    engine: AsyncEngine,
    org_id: str,
    period: Period,
    *,
    key_id: str | None = None,
) -> UsageReport:
    """The organization's report over ``period`` (of one key's requests when ``key_id``)."""
    rows = await org_rollups(
        engine, org_id, period.since.isoformat(), period.until.isoformat(), key_id=key_id
    )
    return UsageReport(period, rows, await rolled_at_ms(engine))


@dataclass
class Totals:
    """Sums of a day, an organization or a model: revenue per currency (the charged cost of
    priced requests; organizations pay in their own currency, so sums stay apart), and the
    upstream cost per currency (what external upstreams charged us, in theirs)."""

    requests: int = 0
    tokens: int = 0
    revenue: dict[str, int] = field(default_factory=dict)  # currency -> micros
    upstream: dict[str, int] = field(default_factory=dict)  # currency -> micros

    def add(self, sums: PlatformSums) -> None:
        if sums.kind == "upstream":  # requests counted once, with their revenue
            if sums.currency is not None:
                self.upstream[sums.currency] = self.upstream.get(sums.currency, 0) + sums.micros
            return
        self.requests += sums.requests
        self.tokens += sums.tokens
        if sums.currency is not None:
            self.revenue[sums.currency] = self.revenue.get(sums.currency, 0) + sums.micros

    def merge(self, other: Totals) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        for mine, theirs in ((self.revenue, other.revenue), (self.upstream, other.upstream)):
            for currency, micros in theirs.items():
                mine[currency] = mine.get(currency, 0) + micros

    def margins(self) -> dict[str, int]:
        """Revenue less upstream cost, per currency that has both (amounts in two currencies
        are never subtracted either)."""
        return {c: self.revenue[c] - self.upstream[c] for c in self.revenue if c in self.upstream}


@dataclass
class PlatformReport:
    """Every organization's usage over a period, from the roll-ups only."""

    period: Period
    rolled_at_ms: int | None
    by_day: dict[str, Totals]  # every day of the period
    top_orgs: list[tuple[str, Totals]]  # organization id, by tokens, most first
    top_models: list[tuple[str, Totals]]
    total: Totals

    @property
    def currencies(self) -> list[str]:
        """Every currency of the revenue and of the upstream cost."""
        return sorted(set(self.total.revenue) | set(self.total.upstream))


def _grouped(rows: list[PlatformSums]) -> dict[str, Totals]:
    found: dict[str, Totals] = {}
    for row in rows:
        found.setdefault(row.group, Totals()).add(row)
    return found


def _top(found: dict[str, Totals], count: int) -> list[tuple[str, Totals]]:
    return sorted(found.items(), key=lambda item: (-item[1].tokens, item[0]))[:count]


async def platform_report(engine: AsyncEngine, period: Period, *, top: int = 10) -> PlatformReport:
    """Tokens, revenue and upstream cost per day, and the ``top`` organizations and models
    by tokens (``platform_rollups``: a few thousand rows, whatever the organizations)."""
    since, until = period.since.isoformat(), period.until.isoformat()

    async def grouped(by: str) -> dict[str, Totals]:
        return _grouped(await platform_sums(engine, since, until, by))

    days = await grouped("day")
    by_day = {day: days.get(day, Totals()) for day in period.days()}
    orgs = await grouped("org")
    total = Totals()
    for totals in orgs.values():
        total.merge(totals)
    models = await grouped("model")
    return PlatformReport(
        period, await rolled_at_ms(engine), by_day, _top(orgs, top), _top(models, top), total
    )
