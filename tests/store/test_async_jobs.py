"""Async jobs in the database (store/async_jobs.py), on SQLite and PostgreSQL: stored by the
process that runs them and read by any process, only with their organization; ended once;
and the jobs of an instance killed with ``kill -9`` failed, with a clear error, by the
sweep of a survivor (``Accountant.sweep``), never the jobs of a live one."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter
from openmaas.core.clock import SystemClock
from openmaas.core.ids import new_request_id
from openmaas.core.jobs import Job, JobStatus, TooManyJobs
from openmaas.store.async_jobs import ORPHANED, AsyncJobStore
from openmaas.store.instance import Liveness
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.schema import async_jobs, organizations
from tests.store.test_instances import Holder, await_dead

# The instance tests' fixtures: each database (SQLite, PostgreSQL), and another process.
from tests.store.test_instances import database as database
from tests.store.test_instances import db_url as db_url
from tests.store.test_instances import holder as holder

NOW_MS = 1_790_000_000_123


def job(org: str = "org_a", client_request_id: str | None = "mine-1") -> Job:
    return Job(new_request_id(), org, "glm-4.7", client_request_id, NOW_MS)


def store(database: AsyncEngine, instance_id: str) -> AsyncJobStore:
    return AsyncJobStore(database, lambda: NOW_MS + 5_000, instance_id)


async def test_a_job_is_read_by_any_process_and_only_by_its_organization(
    database: AsyncEngine,
) -> None:
    runner, reader = store(database, new_request_id()), store(database, new_request_id())
    submitted = job()
    await runner.create(submitted)
    seen = await reader.get("org_a", submitted.id)
    assert seen == submitted and seen.status is JobStatus.PROCESSING and seen.result == {}
    assert await reader.get("org_b", submitted.id) is None
    assert await reader.get("org_a", "no-such-job") is None

    result = {"choices": [{"index": 0, "message": {"content": "你好"}}], "usage": {"n": 1}}
    assert await runner.finish(submitted.id, JobStatus.SUCCESS, result)
    done = await reader.get("org_a", submitted.id)
    assert done is not None and done.status is JobStatus.SUCCESS and done.result == result
    assert done.created_at_ms == NOW_MS and done.client_request_id == "mine-1"
    # Ended once: a second end changes nothing.
    assert not await runner.finish(submitted.id, JobStatus.FAIL, {"error": {}})
    assert (await reader.get("org_a", submitted.id)) == done
    async with database.connect() as conn:
        row = (await conn.execute(select(async_jobs))).one()
    assert row.instance_id == runner.instance_id and row.updated_at_ms == NOW_MS + 5_000


async def test_the_jobs_of_a_killed_instance_fail_in_a_survivors_sweep(
    database: AsyncEngine,
    holder: Holder,
) -> None:
    dead_runner = store(database, holder.instance_id)
    orphan, finished = job(), job(client_request_id=None)
    await dead_runner.create(orphan)
    await dead_runner.create(finished)
    await dead_runner.finish(finished.id, JobStatus.SUCCESS, {"choices": []})
    survivor = await Liveness.start(database)
    own = store(database, survivor.instance_id)
    running = job(org="org_b")
    await own.create(running)
    clock = SystemClock()
    accountant = Accountant(
        database, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock,
        liveness=survivor, recoveries=(own,),
    )  # fmt: skip
    try:
        assert await own.owners() == {holder.instance_id, survivor.instance_id}
        await accountant.sweep()  # the holder is alive: nothing changes
        assert (await own.get("org_a", orphan.id)).status is JobStatus.PROCESSING  # type: ignore[union-attr]
        holder.kill()
        await await_dead(survivor, holder.instance_id)
        await accountant.sweep()
        failed = await own.get("org_a", orphan.id)
        assert failed is not None and failed.status is JobStatus.FAIL
        assert failed.result == {"error": {"code": "500", "message": ORPHANED}}
        assert (await own.get("org_a", finished.id)).status is JobStatus.SUCCESS  # type: ignore[union-attr]
        # Its own running job is never another's to recover.
        assert (await own.get("org_b", running.id)).status is JobStatus.PROCESSING  # type: ignore[union-attr]
        assert await own.owners() == {survivor.instance_id}
    finally:
        await survivor.stop()


async def test_an_org_never_has_more_unfinished_jobs_than_its_limit_even_submitting_at_once(
    database: AsyncEngine,
) -> None:
    async with database.begin() as conn:
        await conn.execute(insert(organizations).values(id="org_a", name="a", created_at_ms=0))
    first, second = store(database, new_request_id()), store(database, new_request_id())
    submits = [(first if i % 2 else second).create(job(), limit=3) for i in range(8)]
    outcomes = await asyncio.gather(*submits, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, TooManyJobs)]
    assert len(refused) == 5 and outcomes.count(None) == 3, outcomes
    assert await first.unfinished("org_a") == 3 and await first.unfinished("org_b") == 0
    await second.create(job("org_b"), limit=3)  # another organization is unaffected
    async with database.connect() as conn:
        running = (await conn.execute(select(async_jobs.c.id, async_jobs.c.org_id))).all()
    assert sorted(org for _, org in running) == ["org_a"] * 3 + ["org_b"]
    finished = next(job_id for job_id, org in running if org == "org_a")
    assert await first.finish(finished, JobStatus.SUCCESS, {})  # a finished job frees its place
    await first.create(job(), limit=3)
    with pytest.raises(TooManyJobs):
        await second.create(job(), limit=3)
