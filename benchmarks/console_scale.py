"""How long the console's roll-up pages take with a year of usage for a thousand organizations.

Issue 13 asks that "pages stay fast with a year of usage for a thousand organizations". This
seeds the daily roll-ups directly in the database (``usage_rollups``, their latency and
time-to-first-token buckets, ``usage_rollup_upstream`` for the models an external upstream
serves, and the overview's sums of them, ``platform_rollups``): ``--days`` days up to today
× ``--orgs`` organizations × ``--models`` models × one key, with ``--buckets`` histogram
buckets per row (half latency, half time to first token). The rows are made by ``INSERT ...
SELECT`` over small helper tables (the days, the organizations, the models), so seeding a
million rows takes seconds, not minutes.

Then, through the ASGI app in-process (its lifespan run as the server runs it, requests
over ``httpx.ASGITransport``: no sockets), it times:

- ``overview``: the operator's platform overview (``GET /console/operator``), an operator
  signed in through the sign-in form;
- ``org usage``: an organization's usage page (``GET /console/orgs/{org}/usage``), the
  same operator;
- ``admin JSON``: ``GET /admin/v1/usage`` with an admin key;

each over the last 30, 90 and 365 days, as the median of ``--repeat`` requests after one
warm-up, beside the same page over the same database before it was seeded (the baseline of
the same run: the app, the session and the queries without the rows) and ``GET /healthz``.

    .venv/bin/python benchmarks/console_scale.py                      # SQLite and PostgreSQL
    .venv/bin/python benchmarks/console_scale.py --database sqlite --orgs 100 --days 30
    .venv/bin/python benchmarks/console_scale.py --explain           # and the query plans

SQLite is a file in a temporary directory; PostgreSQL a throwaway cluster (``services.py``),
``ANALYZE``d after seeding, as autovacuum would. Each run checks that every page answered
200 and that the seeded figures are on the overview.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
from services import PostgresCluster, create_database, postgres_unavailable
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import PeopleAdmin
from openmaas.billing.rollups import Period
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from openmaas.store.schema import organizations

OPERATOR, PASSWORD = "ops@bench.example", "correct horse battery staple"
PERIODS = (30, 90, 365)
MODELS = (  # name, served by an external upstream charging in (None: our own engines)
    ("glm-4.6", None),
    ("glm-4.5-air", None),
    ("gpt-4.1-mini", "USD"),
    ("deepseek-v3", "CNY"),
    ("qwen3-32b", None),
)

bench = MetaData()
bench_days = Table("bench_days", bench, Column("i", Integer), Column("day", String(10)))
bench_orgs = Table("bench_orgs", bench, Column("n", Integer), Column("id", String(40)))
bench_models = Table(
    "bench_models", bench, Column("model", String(200)), Column("upstream", String(3))
)
bench_buckets = Table(
    "bench_buckets", bench, Column("metric", String(8)), Column("bucket", Integer)
)

# one row per organization × day × model: numbers that vary, in plain SQL both databases run
_REQUESTS = "(20 + (o.n * 7 + d.i * 3) % 200)"
SEED = (
    f"""INSERT INTO usage_rollups (org_id, day, model, key_id, requests, errors, input_tokens,
        cached_tokens, output_tokens, reasoning_tokens, cost_micros, currency)
    SELECT o.id, d.day, m.model, 'key_' || o.id, {_REQUESTS}, (o.n + d.i) % 3,
        {_REQUESTS} * 900, {_REQUESTS} * 100, {_REQUESTS} * 300, {_REQUESTS} * 20,
        {_REQUESTS} * 1500, 'CNY'
    FROM bench_orgs o CROSS JOIN bench_days d CROSS JOIN bench_models m""",
    """INSERT INTO usage_rollup_buckets (org_id, day, model, key_id, metric, bucket, requests)
    SELECT o.id, d.day, m.model, 'key_' || o.id, b.metric, b.bucket, 1 + (o.n + d.i) % 50
    FROM bench_orgs o CROSS JOIN bench_days d CROSS JOIN bench_models m
    CROSS JOIN bench_buckets b""",
    f"""INSERT INTO usage_rollup_upstream (org_id, day, model, currency, requests, cost_micros)
    SELECT o.id, d.day, m.model, m.upstream, {_REQUESTS}, {_REQUESTS} * 700
    FROM bench_orgs o CROSS JOIN bench_days d CROSS JOIN bench_models m
    WHERE m.upstream IS NOT NULL""",
)
# the overview's sums of those rows, as the roller keeps them (migration 0014 does the same)
PLATFORM = tuple(
    f"""INSERT INTO platform_rollups (span, start, dim, ident, kind, currency, requests, tokens,
        micros)
    SELECT '{span}', {start}, '{dim}', {ident}, {kind}
    GROUP BY {start}, {ident}, currency"""
    for span, start, dim, ident in (
        ("day", "day", "model", "model"),
        ("day", "day", "org", "org_id"),
        ("month", "substr(day, 1, 7)", "org", "org_id"),
    )
    for kind in (
        "'revenue', COALESCE(currency, ''), SUM(requests), SUM(input_tokens + output_tokens), "
        "SUM(cost_micros) FROM usage_rollups",
        "'upstream', currency, SUM(requests), 0, SUM(cost_micros) FROM usage_rollup_upstream",
    )
)


def seeded_requests(args: argparse.Namespace) -> int:
    """The requests of every seeded row, computed here as SEED's formula does."""
    per_model = sum(20 + (n * 7 + i * 3) % 200 for n in range(args.orgs) for i in range(args.days))
    return per_model * args.models


def today() -> date:
    return datetime.now(UTC).date()


async def prepare(settings: Settings) -> tuple[str, str]:
    """The first organization (made as an operator would), the operator and an admin key."""
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("bench")
        org = await accounts.create_org(NewOrganization(name="bench-org-0000"))
        admin = await accounts.issue_key(org.id, "bench-ops", "admin")
        people = PeopleAdmin(platform.changes("bench"), platform.clock, platform.master_key)
        await people.create_user(OPERATOR, PASSWORD, operator=True)
        return org.id, admin.token


async def seed(engine: AsyncEngine, first_org: str, args: argparse.Namespace) -> dict[str, int]:
    """The other organizations and every roll-up row, in one transaction; the rows made."""
    first_day = today() - timedelta(days=args.days - 1)
    days = [{"i": i, "day": (first_day + timedelta(days=i)).isoformat()} for i in range(args.days)]
    orgs = [{"n": 0, "id": first_org}] + [
        {"n": n, "id": f"org_bench_{n:04d}"} for n in range(1, args.orgs)
    ]
    models = [{"model": m, "upstream": u} for m, u in MODELS[: args.models]]
    half = args.buckets // 2
    buckets = [{"metric": "latency", "bucket": 30 + i} for i in range(args.buckets - half)]
    buckets += [{"metric": "ttft", "bucket": 20 + i} for i in range(half)]
    async with engine.begin() as conn:
        await conn.run_sync(bench.create_all)
        now_ms = int(time.time() * 1000)
        await conn.execute(
            insert(organizations),
            [{"id": o["id"], "name": f"bench-org-{o['n']:04d}", "created_at_ms": now_ms}
             for o in orgs[1:]],
        )  # fmt: skip
        for table, rows in (
            (bench_days, days),
            (bench_orgs, orgs),
            (bench_models, models),
            (bench_buckets, buckets),
        ):
            await conn.execute(insert(table), rows)
        made = {}
        for name, statement in zip(("rollups", "buckets", "upstream"), SEED, strict=True):
            made[name] = (await conn.execute(text(statement))).rowcount
        made["platform"] = 0
        for statement in PLATFORM:
            made["platform"] += (await conn.execute(text(statement))).rowcount
        await conn.run_sync(bench.drop_all)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("ANALYZE"))
    return made


def pages(org: str) -> list[tuple[str, str]]:
    return [
        ("overview", "/console/operator"),
        ("org usage", f"/console/orgs/{org}/usage"),
        ("admin JSON", "/admin/v1/usage"),
    ]


async def time_page(client: httpx.AsyncClient, url: str, repeat: int, **kw: object) -> float:
    """The median milliseconds of ``repeat`` requests after a warm-up (each must be 200)."""
    times = []
    for n in range(repeat + 1):
        started = time.perf_counter()
        answer = await client.get(url, **kw)  # type: ignore[arg-type]
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
        if n:
            times.append(elapsed)
    return statistics.median(times)


async def time_all(
    client: httpx.AsyncClient, org: str, admin: str, repeat: int
) -> dict[tuple[str, int], float]:
    found = {}
    headers = {"Authorization": f"Bearer {admin}"}
    for name, path in pages(org):
        for days in PERIODS:
            query = Period.last(days, today()).as_query()
            url = path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
            found[(name, days)] = await time_page(
                client, url, repeat, headers=headers if name == "admin JSON" else None
            )
    return found


async def sign_in(client: httpx.AsyncClient) -> None:
    form = await client.get("/console/sign-in")
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    signed = await client.post(
        "/console/sign-in", data={"email": OPERATOR, "password": PASSWORD, "csrf": csrf}
    )
    if signed.status_code != 303:
        raise SystemExit(f"sign-in failed: {signed.status_code}")


async def explain(engine: AsyncEngine, days: int) -> None:
    """The plans of the overview's queries over ``days``."""
    from openmaas.store.rollups.reads import platform_queries

    period = Period.last(days, today())
    since, until = period.since.isoformat(), period.until.isoformat()
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "
    for by in ("day", "org", "model"):
        for query in platform_queries(since, until, by):
            sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
            async with engine.connect() as conn:
                plan = [" ".join(map(str, row)) for row in await conn.exec_driver_sql(prefix + sql)]
            print(f"\nby {by}, {days} days:\n  " + "\n  ".join(plan))


async def measure(database: str, url: str, home: Path, args: argparse.Namespace) -> None:
    settings = Settings(home=home, database_url=url, embedded_models=False, rollup_seconds=3600)
    org, admin = await prepare(settings)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="https://testserver") as client,
    ):
        await sign_in(client)
        health = await time_page(client, "/healthz", args.repeat)
        empty = await time_all(client, org, admin, args.repeat)
        engine = app.state.openmaas.platform.database
        started = time.perf_counter()
        made = await seed(engine, org, args)
        seeded_s = time.perf_counter() - started
        period = Period.last(args.days, today()).as_query()
        overview = await client.get("/console/operator", params=period)
        if f'data-figure="requests">{seeded_requests(args):,}<' not in overview.text:
            raise SystemExit("the overview does not show the seeded requests")
        full = await time_all(client, org, admin, args.repeat)
        if args.explain:
            for days in PERIODS:
                await explain(engine, days)
    rows = ", ".join(f"{n:,} {name}" for name, n in made.items())
    print(f"\n{database}: seeded {rows} rows in {seeded_s:.1f} s; GET /healthz {health:.1f} ms")
    print("\n| database | page | period | empty database, ms | seeded, ms |")
    print("|---|---|---:|---:|---:|")
    for (name, days), ms in full.items():
        print(f"| {database} | {name} | {days} days | {empty[(name, days)]:.1f} | {ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="sqlite,postgres")
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--models", type=int, default=3, choices=range(1, len(MODELS) + 1))
    parser.add_argument("--buckets", type=int, default=4, help="histogram buckets per row")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print the overview's plans")
    args = parser.parse_args()
    print(
        f"{args.orgs} organizations × {args.days} days × {args.models} models; "
        f"median of {args.repeat} requests after a warm-up"
    )
    for database in args.database.split(","):
        directory = Path(tempfile.mkdtemp(prefix="openmaas-bench-console-"))
        try:
            if database == "sqlite":
                url = "sqlite+aiosqlite:///" + str(directory / "openmaas.db")
                asyncio.run(measure(database, url, directory / "home", args))
                continue
            reason = postgres_unavailable()
            if reason:
                print(f"\npostgres: skipped: {reason}")
                continue
            cluster = PostgresCluster().start()
            try:
                url = cluster.url("console")
                asyncio.run(create_database(url))
                asyncio.run(measure(database, url, directory / "home", args))
            finally:
                cluster.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
