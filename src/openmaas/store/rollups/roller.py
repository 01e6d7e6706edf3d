"""Folding usage records into daily roll-ups, exactly once each, behind a durable watermark.

The watermark (``rollup_marks``, row ``usage``) is a position in the order in which usage
records became visible, so that a record can never appear behind it later:

- **SQLite** has one writer at a time and gives each new row of ``usage_records`` (a rowid
  table) the rowid after the largest: rows commit in rowid order. The watermark is the last
  rowid folded. (A rowid is reused only when the largest row is deleted; usage records are
  never deleted. A migration that rebuilds ``usage_records`` on SQLite must reset the
  watermark and the roll-ups.)
- **PostgreSQL** transactions commit in any order, so a sequence would not do. Migration
  0011 gives each usage record the id of the transaction that inserted it
  (``roll_xid``, 64 bits, never wrapping); every transaction below the current snapshot's
  ``xmin`` has ended, so no record with a smaller ``roll_xid`` can still appear. A pass
  folds the records past the watermark and below that horizon, in ``(roll_xid,
  request_id)`` order.

A pass first looks, without a lock, for a record past the watermark; finding none, it
writes nothing (idle passes cost no write lock). Otherwise it is one transaction: it first
updates the watermark's row (so passes of several
processes take turns on its lock and each starts where the last one stopped), reads up to
``batch`` records past it, adds their sums to the roll-up rows (an upsert that adds), and
moves the watermark past them. A pass that fails or dies leaves nothing behind; two
processes never fold the same record. The writers of usage records do nothing for this.

The same pass adds the records' upstream cost (what an external upstream charged us) to
``usage_rollup_upstream``, a row per organization × day × model × the upstream's currency,
and both to ``platform_rollups``, the operator's overview's sums per day and model, day and
organization, month and organization (migration 0015, which summed the records folded
before it), and keeps each key's latest start in ``key_last_use`` (migration 0016): with
``unfolded``, the records past the watermark, that is each key's last use, read without a
scan of its records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    case,
    func,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.rollups import LATENCY, TTFT, Rollup
from openmaas.store.rollups.schema import (
    key_last_use,
    platform_rollups,
    rollup_marks,
    usage_rollup_buckets,
    usage_rollup_upstream,
    usage_rollups,
)
from openmaas.store.schema import usage_records

MARK = "usage"
BATCH = 5_000

GroupKey = tuple[str, str, str, str]  # org_id, day, model, key_id
UpstreamKey = tuple[str, str, str, str]  # org_id, day, model, the upstream's currency

_COLUMNS = (
    usage_records.c.request_id,
    usage_records.c.org_id,
    usage_records.c.day,
    usage_records.c.model,
    usage_records.c.key_id,
    usage_records.c.termination,
    usage_records.c.prompt_tokens,
    usage_records.c.cached_tokens,
    usage_records.c.completion_tokens,
    usage_records.c.reasoning_tokens,
    usage_records.c.cost_micros,
    usage_records.c.currency,
    usage_records.c.latency_ms,
    usage_records.c.ttft_ms,
    usage_records.c.upstream_cost_micros,
    usage_records.c.upstream_currency,
    usage_records.c.started_at_ms,
)
_SUMMED = (
    "requests",
    "errors",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_micros",
)


@dataclass(frozen=True, slots=True)
class Pass:
    folded: int  # usage records folded by this pass
    done: bool  # True: nothing visible was left past the watermark


class UsageRoller:
    """Folds usage records into ``usage_rollups`` and ``usage_rollup_buckets``."""

    def __init__(self, engine: AsyncEngine, now_ms: Callable[[], int], batch: int = BATCH):
        self._engine = engine
        self._now_ms = now_ms
        self._batch = batch
        self._postgres = engine.dialect.name == "postgresql"

    async def roll(self) -> int:
        """Fold every record visible now; answers how many."""
        folded = 0
        while True:
            step = await self.roll_once()
            folded += step.folded
            if step.done:
                return folded

    async def roll_once(self) -> Pass:
        """One pass: up to ``batch`` records, in one transaction; none (no write at all)
        when a look without a lock finds nothing past the watermark."""
        m = rollup_marks.c
        mark_query = select(m.position, m.position_key).where(m.name == MARK)
        async with self._engine.connect() as conn:
            position, key = (await conn.execute(mark_query)).one()
            if not (await self._after(conn, position, key, 1))[0]:
                return Pass(0, True)
        async with self._engine.begin() as conn:
            # the watermark's row first: passes of other processes wait here for this one
            await conn.execute(update(rollup_marks).where(m.name == MARK).values(name=MARK))
            position, key = (await conn.execute(mark_query)).one()
            rows, position, key = await self._after(conn, position, key, self._batch)
            done = len(rows) < self._batch
            if rows:
                await _fold(conn, rows, self._postgres)
            values: dict[str, object] = {"position": position, "position_key": key}
            if done:
                values["rolled_at_ms"] = self._now_ms()
            await conn.execute(update(rollup_marks).where(m.name == MARK).values(**values))
        return Pass(len(rows), done)

    async def _after(
        self, conn: AsyncConnection, position: int, key: str, limit: int
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        """Up to ``limit`` records past the watermark, and the watermark after them."""
        if self._postgres:
            return await self._after_postgres(conn, position, key, limit)
        return await self._after_sqlite(conn, position, limit)

    async def _after_sqlite(
        self, conn: AsyncConnection, position: int, limit: int
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        rowid: ColumnElement[int] = literal_column("usage_records.rowid")
        query = select(rowid, *_COLUMNS).where(rowid > position).order_by(rowid).limit(limit)
        rows = [tuple(r) for r in await conn.execute(query)]
        if not rows:
            return [], position, ""
        return [r[1:] for r in rows], int(rows[-1][0]), ""

    async def _after_postgres(
        self, conn: AsyncConnection, position: int, key: str, limit: int
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        horizon = (
            await conn.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
        ).scalar_one()
        xid: ColumnElement[int] = literal_column("usage_records.roll_xid")
        query = (
            select(xid, *_COLUMNS)
            .where(tuple_(xid, usage_records.c.request_id) > tuple_(position, key))
            .where(xid < int(horizon))
            .order_by(xid, usage_records.c.request_id)
            .limit(limit)
        )
        rows = [tuple(r) for r in await conn.execute(query)]
        if not rows:
            return [], position, key
        last = rows[-1]
        return [r[1:] for r in rows], int(last[0]), str(last[1])


def fold_records(rows: Iterable[tuple[Any, ...]]) -> dict[GroupKey, Rollup]:
    """Usage records (the columns of ``_COLUMNS``) summed per organization × day × model
    × key."""
    groups: dict[GroupKey, Rollup] = {}
    for r in rows:
        (_rid, org, day, model, key, termination, prompt, cached, completion, reasoning,
         cost, currency, latency, ttft, _upstream, _upstream_currency, _started) = r  # fmt: skip
        group = (str(org), str(day), str(model), str(key))
        rollup = groups.get(group)
        if rollup is None:
            rollup = groups[group] = Rollup()
        rollup.add_request(
            termination=str(termination),
            input_tokens=int(prompt),
            cached_tokens=int(cached),
            output_tokens=int(completion),
            reasoning_tokens=int(reasoning),
            cost_micros=None if cost is None else int(cost),
            currency=None if currency is None else str(currency),
            latency_ms=int(latency),
            ttft_ms=None if ttft is None else int(ttft),
        )
    return groups


def fold_upstream(rows: Iterable[tuple[Any, ...]]) -> dict[UpstreamKey, tuple[int, int]]:
    """The records' upstream costs (the columns of ``_COLUMNS``) summed per organization ×
    day × model × the upstream's currency: (records, micros); a record without one adds
    nothing."""
    groups: dict[UpstreamKey, tuple[int, int]] = {}
    for r in rows:
        org, day, model, micros, currency = r[1], r[2], r[3], r[14], r[15]
        if micros is None or currency is None:
            continue
        group = (str(org), str(day), str(model), str(currency))
        requests, summed = groups.get(group, (0, 0))
        groups[group] = (requests + 1, summed + int(micros))
    return groups


async def _fold(conn: AsyncConnection, rows: list[tuple[Any, ...]], postgres: bool) -> None:
    groups = fold_records(rows)
    sums = []
    buckets = []
    for (org, day, model, key), r in groups.items():
        where = {"org_id": org, "day": day, "model": model, "key_id": key}
        sums.append(
            {
                **where,
                "requests": r.requests,
                "errors": r.errors,
                "input_tokens": r.input_tokens,
                "cached_tokens": r.cached_tokens,
                "output_tokens": r.output_tokens,
                "reasoning_tokens": r.reasoning_tokens,
                "cost_micros": r.cost_micros,
                "currency": r.currency,
            }
        )
        for metric, histogram in ((LATENCY, r.latency), (TTFT, r.ttft)):
            buckets += [
                {**where, "metric": metric, "bucket": b, "requests": n}
                for b, n in sorted(histogram.items())
            ]
    await _add(conn, usage_rollups, sums, _SUMMED, postgres)
    if buckets:
        await _add(conn, usage_rollup_buckets, buckets, ("requests",), postgres)
    upstream = [
        {"org_id": org, "day": day, "model": model, "currency": currency,
         "requests": requests, "cost_micros": micros}
        for (org, day, model, currency), (requests, micros) in fold_upstream(rows).items()
    ]  # fmt: skip
    if upstream:
        await _add(conn, usage_rollup_upstream, upstream, ("requests", "cost_micros"), postgres)
    await _add(conn, platform_rollups, platform_rows(sums, upstream), _PLATFORM, postgres)
    await _last_use(conn, rows, postgres)


async def _last_use(conn: AsyncConnection, rows: list[tuple[Any, ...]], postgres: bool) -> None:
    """Each key's latest start among ``rows``, kept in ``key_last_use`` where later."""
    latest: dict[str, int] = {}
    for r in rows:
        key, started = str(r[4]), int(r[16])
        if started > latest.get(key, -1):
            latest[key] = started
    statement = (postgresql if postgres else sqlite).insert(key_last_use)
    later = statement.excluded.last_at_ms
    current = key_last_use.c.last_at_ms
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["key_id"],
            set_={"last_at_ms": case((later > current, later), else_=current)},
        ),
        [{"key_id": key, "last_at_ms": at} for key, at in latest.items()],
    )


def unfolded(postgres: bool) -> ColumnElement[bool]:
    """The usage records past the roller's watermark (not yet folded), as a condition on
    ``usage_records`` that reads the watermark in the same statement (one snapshot)."""
    m = rollup_marks.c
    position = select(m.position).where(m.name == MARK).scalar_subquery()
    if not postgres:
        rowid: ColumnElement[int] = literal_column("usage_records.rowid")
        return rowid > position
    xid: ColumnElement[int] = literal_column("usage_records.roll_xid")
    key = select(m.position_key).where(m.name == MARK).scalar_subquery()
    return and_(xid >= position, tuple_(xid, usage_records.c.request_id) > tuple_(position, key))


_PLATFORM = ("requests", "tokens", "micros")
# where each roll-up row also counts: (span, the start of the span from the day, dimension)
_SPANS = (
    ("day", lambda day: day, "model"),
    ("day", lambda day: day, "org_id"),
    ("month", lambda day: day[:7], "org_id"),
)


def platform_rows(
    sums: Iterable[Mapping[str, Any]], upstream: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``platform_rollups``' rows for the rows added to ``usage_rollups`` (``sums``) and
    ``usage_rollup_upstream`` (``upstream``), summed per span, dimension and currency."""
    found: dict[tuple[str, str, str, str, str, str], list[int]] = {}

    def count(kind: str, row: Mapping[str, Any], currency: str, values: tuple[int, ...]) -> None:
        for span, start, dim in _SPANS:
            key = (span, start(row["day"]), dim.removesuffix("_id"), row[dim], kind, currency)
            summed = found.setdefault(key, [0, 0, 0])
            for i, value in enumerate(values):
                summed[i] += value

    for row in sums:
        tokens = row["input_tokens"] + row["output_tokens"]
        count("revenue", row, row["currency"] or "", (row["requests"], tokens, row["cost_micros"]))
    for row in upstream:
        count("upstream", row, row["currency"], (row["requests"], 0, row["cost_micros"]))
    names = ("span", "start", "dim", "ident", "kind", "currency")
    return [
        dict(zip(names, key, strict=True)) | dict(zip(_PLATFORM, values, strict=True))
        for key, values in found.items()
    ]


async def _add(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    summed: tuple[str, ...],
    postgres: bool,
) -> None:
    """Insert ``rows``; where one exists, add the ``summed`` columns to it."""
    dialect = postgresql if postgres else sqlite
    statement = dialect.insert(table)
    changes: dict[str, object] = {name: table.c[name] + statement.excluded[name] for name in summed}
    if "currency" in table.c and not table.c.currency.primary_key:
        changes["currency"] = func.coalesce(table.c.currency, statement.excluded.currency)
    keys = [c.name for c in table.primary_key.columns]
    await conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes), rows)
