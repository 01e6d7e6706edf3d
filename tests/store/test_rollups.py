"""Daily roll-ups (store/rollups/): after a mixed run, with records written while two
rollers race and a roller restarts, the roll-ups (upstream costs among them, each in its
own currency) equal the usage records they came from, on SQLite and PostgreSQL; migration
0015 adds the upstream cost of the records folded before it, once."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.billing.rollups import Period, Totals, platform_report
from openmaas.core.money import Currency, Money
from openmaas.core.rollups import BOUNDS_MS, Rollup, bucket_of, percentile
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord
from openmaas.platform import open_platform
from openmaas.settings import Settings
from openmaas.store.database import MIGRATIONS_DIR, migrate, open_database
from openmaas.store.repositories import UsageRepository, insert_usage, utc_day
from openmaas.store.rollups.reads import org_rollups, platform_queries
from openmaas.store.rollups.roller import UsageRoller
from openmaas.store.rollups.schema import (
    usage_rollup_buckets,
    usage_rollup_upstream,
    usage_rollups,
)
from openmaas.store.schema import usage_records
from tests.support.clock import NOW_MS
from tests.support.waiting import eventually

DAY_MS = 86_400_000
ORGS = ("org_a", "org_b")
MODELS = ("glm-4", "tiny")
KEYS = ("k1", "k2", "k3")
TERMINATIONS = tuple(Termination)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path_factory.mktemp("rollups") / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


def make_record(n: int, rng: random.Random) -> UsageRecord:
    priced = rng.random() < 0.8
    started = rng.random() < 0.9
    upstream = rng.choice((None, Currency.USD, Currency.CNY))
    return UsageRecord(
        request_id=f"req_{rng.randrange(10**12):012d}_{n:05d}",  # not in writing order
        key_id=rng.choice(KEYS),
        org_id=rng.choice(ORGS),
        model=rng.choice(MODELS),
        endpoint="/v1/chat/completions",
        usage=Usage(
            rng.randrange(2000),
            rng.randrange(50),
            rng.randrange(900),
            reasoning_tokens=rng.randrange(30),
        ),
        termination=rng.choice(TERMINATIONS),
        started_at_ms=NOW_MS - rng.randrange(4) * DAY_MS - rng.randrange(DAY_MS),
        ttft_ms=rng.randrange(5_000) if started else None,
        latency_ms=rng.randrange(60_000),
        cost=Money(rng.randrange(10**9), Currency.CNY) if priced else None,
        upstream_cost=None if upstream is None else Money(rng.randrange(10**8), upstream),
    )


UpstreamRollups = dict[tuple[str, str, str, str], tuple[int, int]]


def expected_upstream(records: list[UsageRecord]) -> UpstreamRollups:
    """The upstream costs per organization × day × model × currency, from the records."""
    groups: UpstreamRollups = {}
    for r in records:
        if r.upstream_cost is not None:
            group = (r.org_id, utc_day(r.started_at_ms), r.model, r.upstream_cost.currency.value)
            n, micros = groups.get(group, (0, 0))
            groups[group] = (n + 1, micros + r.upstream_cost.micros)
    return groups


async def stored_upstream(engine: AsyncEngine) -> UpstreamRollups:
    u = usage_rollup_upstream.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(u.org_id, u.day, u.model, u.currency, u.requests, u.cost_micros)
        )
        return {(o, d, m, c): (int(n), int(micros)) for o, d, m, c, n, micros in rows}


def expected_from(records: list[UsageRecord]) -> dict[tuple[str, str, str, str], Rollup]:
    """The roll-ups computed straight from the records, independently of the roller."""
    groups: dict[tuple[str, str, str, str], Rollup] = {}
    for r in records:
        group = (r.org_id, utc_day(r.started_at_ms), r.model, r.key_id)
        rollup = groups.setdefault(group, Rollup())
        rollup.requests += 1
        rollup.errors += r.termination in {
            Termination.ENGINE_ERROR, Termination.REJECTED, Termination.TIMEOUT,
            Termination.GATEWAY_SHUTDOWN, Termination.GATEWAY_KILLED,
        }  # fmt: skip
        rollup.input_tokens += r.usage.prompt_tokens
        rollup.cached_tokens += r.usage.cached_tokens
        rollup.output_tokens += r.usage.completion_tokens
        rollup.reasoning_tokens += r.usage.reasoning_tokens
        if r.cost is not None:
            rollup.cost_micros += r.cost.micros
            rollup.currency = "CNY"
        b = bucket_of(r.latency_ms)
        rollup.latency[b] = rollup.latency.get(b, 0) + 1
        if r.ttft_ms is not None:
            t = bucket_of(r.ttft_ms)
            rollup.ttft[t] = rollup.ttft.get(t, 0) + 1
    return groups


async def stored_rollups(engine: AsyncEngine) -> dict[tuple[str, str, str, str], Rollup]:
    found: dict[tuple[str, str, str, str], Rollup] = {}
    for org in ORGS:
        for row in await org_rollups(engine, org, "2000-01-01", "2100-01-01"):
            found[(org, row.day, row.model, row.key_id)] = row.sums
    return found


async def test_rollups_equal_the_records_after_racing_rollers_and_a_restart(
    database_url: str,
) -> None:
    rng = random.Random(13)
    records = [make_record(n, rng) for n in range(600)]
    writer = open_database(database_url)
    await migrate(writer)
    first, second = open_database(database_url), open_database(database_url)
    try:
        roller_a = UsageRoller(first, lambda: NOW_MS, batch=37)
        roller_b = UsageRoller(second, lambda: NOW_MS, batch=53)
        repo = UsageRepository(writer)
        writing = asyncio.Event()

        async def write() -> None:
            for start in range(0, 400, 20):  # records arrive while both rollers run
                for r in records[start : start + 20]:  # as one writer writes them
                    await repo.append(r)
                await asyncio.sleep(0)
            writing.set()

        async def keep_rolling(roller: UsageRoller) -> int:
            folded = 0
            while not writing.is_set():
                folded += (await roller.roll_once()).folded
                await asyncio.sleep(0)
            return folded + await roller.roll()

        _, folded_a, folded_b = await asyncio.gather(
            write(), keep_rolling(roller_a), keep_rolling(roller_b)
        )
        assert folded_a > 0 and folded_b > 0  # both took part
        assert folded_a + folded_b == 400  # and no record was folded twice
        # a restart: a new roller in a new process carries on from the watermark
        for r in records[400:]:
            await repo.append(r)
        restarted = open_database(database_url)
        try:
            assert await UsageRoller(restarted, lambda: NOW_MS).roll() == 200
            assert await roller_a.roll() == 0  # nothing is folded twice
        finally:
            await restarted.dispose()
        assert await stored_rollups(writer) == expected_from(records)
        upstream = expected_upstream(records)
        assert {c for (_o, _d, _m, c) in upstream} == {"USD", "CNY"}  # apart, never added
        assert await stored_upstream(writer) == upstream
    finally:
        for engine in (writer, first, second):
            await engine.dispose()


async def test_a_record_committed_late_is_not_skipped(database_url: str) -> None:
    """A record whose transaction is still open when later ones commit holds the watermark
    back (PostgreSQL: a pass stops below the oldest open transaction); once it commits, the
    next pass folds them all."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: a record commits before the next one is written")
    rng = random.Random(7)
    early, later = make_record(1, rng), make_record(2, rng)
    engine = open_database(database_url)
    await migrate(engine)
    try:
        roller = UsageRoller(engine, lambda: NOW_MS)
        async with engine.connect() as slow:
            transaction = await slow.begin()
            await insert_usage(slow, early)  # not committed yet
            await UsageRepository(engine).append(later)
            assert await roller.roll() == 0  # not past the open transaction
            await transaction.commit()
        assert await roller.roll() == 2
        assert await stored_rollups(engine) == expected_from([early, later])
    finally:
        await engine.dispose()


async def test_the_rollups_outlive_the_records(database_url: str) -> None:
    """Once rolled, the roll-ups are read without the records (the console reads no
    record)."""
    rng = random.Random(3)
    records = [make_record(n, rng) for n in range(50)]
    engine = open_database(database_url)
    await migrate(engine)
    try:
        for r in records:
            await UsageRepository(engine).append(r)
        await UsageRoller(engine, lambda: NOW_MS).roll()
        async with engine.begin() as conn:
            await conn.execute(delete(usage_records))
        assert await stored_rollups(engine) == expected_from(records)
        assert await stored_upstream(engine) == expected_upstream(records)
        async with engine.connect() as conn:
            assert (await conn.execute(select(usage_rollups))).all()
            assert (await conn.execute(select(usage_rollup_buckets))).all()
    finally:
        await engine.dispose()


async def _migrate_to(engine: AsyncEngine, revision: str, *, down: bool = False) -> None:
    def move(sync_connection) -> None:  # type: ignore[no-untyped-def]
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = sync_connection
        (command.downgrade if down else command.upgrade)(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(move)


async def test_migration_0015_adds_the_upstream_cost_of_records_folded_before_it_once(
    database_url: str,
) -> None:
    """Records folded before migration 0015 (whose roll-ups had no upstream cost) get it
    from the migration; those written after the last pass get it from the roller; none
    twice, however often the roller runs again."""
    rng = random.Random(14)
    records = [make_record(n, rng) for n in range(80)]
    engine = open_database(database_url)
    await migrate(engine)
    try:
        repo, roller = UsageRepository(engine), UsageRoller(engine, lambda: NOW_MS)
        for r in records[:50]:
            await repo.append(r)
        assert await roller.roll() == 50
        await _migrate_to(engine, "0014", down=True)  # as before 0015: folded, no upstream
        for r in records[50:]:
            await repo.append(r)  # written, not folded yet
        await _migrate_to(engine, "head")
        assert await stored_upstream(engine) == expected_upstream(records[:50])
        assert await roller.roll() == 30
        assert await roller.roll() == 0
        assert await stored_upstream(engine) == expected_upstream(records)
        assert await stored_rollups(engine) == expected_from(records)
        # the overview's sums: those before 0015 summed by it, the others by the roller
        year = Period.last(365, date.fromisoformat(utc_day(NOW_MS)))
        assert (await platform_report(engine, year)).total == totals_of(records)
    finally:
        await engine.dispose()


def test_percentiles_read_the_bucket_upper_bound_within_a_fifth() -> None:
    rng = random.Random(1)
    values = sorted(rng.randrange(1, 100_000) for _ in range(1001))
    histogram: dict[int, int] = {}
    for v in values:
        histogram[bucket_of(v)] = histogram.get(bucket_of(v), 0) + 1
    for fraction, true in ((0.5, values[500]), (0.95, values[950])):
        read = percentile(histogram, fraction)
        assert read is not None and true < read <= true * 1.2 + 1
    assert percentile({}, 0.5) is None
    assert bucket_of(0) == 0 and bucket_of(BOUNDS_MS[-1] * 10) == len(BOUNDS_MS)


async def test_a_serving_process_rolls_up_in_the_background(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A server's own connections (liveness lock, change feed, ledger) never hold the
    watermark back: records appear in the roll-ups with nobody calling the roller."""
    settings = Settings(
        home=tmp_path_factory.mktemp("serving") / "home",
        database_url=database_url,
        embedded_models=False,
        rollup_seconds=0.05,
    )
    rng = random.Random(11)
    records = [make_record(n, rng) for n in range(30)]
    async with open_platform(settings, serve=True) as platform:
        for r in records:
            await UsageRepository(platform.database).append(r)

        async def rolled() -> bool:
            return await stored_rollups(platform.database) == expected_from(records)

        await eventually(rolled, what="the records in the roll-ups")


async def test_the_platforms_sums_equal_the_records_over_any_period(database_url: str) -> None:
    """The overview's sums (``platform_rollups``: per day and model, per day and organization,
    per month and organization) equal the records of the period, however it falls on the
    months: whole months, a period inside one month, one that starts or ends on a month's
    first or last day, a year."""
    rng = random.Random(21)
    records = []
    for n in range(400):
        record = make_record(n, rng)
        started = NOW_MS - rng.randrange(400) * DAY_MS - rng.randrange(DAY_MS)
        records.append(dataclasses.replace(record, started_at_ms=started))
    engine = open_database(database_url)
    await migrate(engine)
    try:
        for r in records:
            await UsageRepository(engine).append(r)
        await UsageRoller(engine, lambda: NOW_MS).roll()
        today = date.fromisoformat(utc_day(NOW_MS))
        month = today.replace(day=1)
        periods = [
            Period.last(365, today),
            Period.last(30, today),
            Period(month - timedelta(days=1), today),  # a month's last day, then a month
            Period(month - timedelta(days=90), month - timedelta(days=1)),  # ends a month
            Period(month, today),  # from a month's first day
            Period(today - timedelta(days=3), today - timedelta(days=1)),
        ]
        for period in periods:
            report = await platform_report(engine, period, top=1000)
            inside = [
                r for r in records
                if period.since.isoformat() <= utc_day(r.started_at_ms) <= period.until.isoformat()
            ]  # fmt: skip
            orgs = {org: totals for org, totals in report.top_orgs}
            models = {model: totals for model, totals in report.top_models}
            for name, found, key in (("org", orgs, "org_id"), ("model", models, "model")):
                for ident in {getattr(r, key) for r in inside}:
                    mine = [r for r in inside if getattr(r, key) == ident]
                    assert found[ident] == totals_of(mine), (period, name, ident)
            assert report.total == totals_of(inside), period
            for day, totals in report.by_day.items():
                assert totals == totals_of(
                    [r for r in inside if utc_day(r.started_at_ms) == day]
                ), (period, day)
    finally:
        await engine.dispose()


def totals_of(records: list[UsageRecord]) -> Totals:
    """What the overview shows of ``records``, computed from them."""
    totals = Totals()
    for r in records:
        totals.requests += 1
        totals.tokens += r.usage.prompt_tokens + r.usage.completion_tokens
        if r.cost is not None:
            c = r.cost.currency.value
            totals.revenue[c] = totals.revenue.get(c, 0) + r.cost.micros
        if r.upstream_cost is not None:
            c = r.upstream_cost.currency.value
            totals.upstream[c] = totals.upstream.get(c, 0) + r.upstream_cost.micros
    return totals


async def test_the_platforms_period_is_read_from_its_sums_by_their_key(tmp_path: Path) -> None:
    """The overview sums a period across every organization (a year of a thousand is a
    million roll-up rows): it reads ``platform_rollups`` by its primary key's span and
    start, never by scanning the table."""
    engine = open_database("sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db"))
    try:
        await migrate(engine)
        for by in ("day", "org", "model"):
            for query in platform_queries("2026-01-15", "2026-04-20", by):
                sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
                async with engine.connect() as conn:
                    plan = " ".join(str(row[-1]) for row in await conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + sql
                    ))  # fmt: skip
                assert "SEARCH platform_rollups USING INDEX" in plan, (by, plan)
                assert "span=? AND dim=? AND start>" in plan, (by, plan)
    finally:
        await engine.dispose()
