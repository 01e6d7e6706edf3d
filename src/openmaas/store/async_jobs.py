"""Async jobs in the database (table ``async_jobs``, migration 0006): any process serving
the database answers for a job, whichever process runs it, and a restart keeps them.

An organization has at most a bounded number of jobs unfinished (``PROCESSING``) at once,
whichever processes run them: :meth:`AsyncJobStore.create` counts them in the transaction
that stores the new job and refuses it over the bound (exact on SQLite, whose writers take
turns, and on PostgreSQL, where the transaction first locks the organization's row).

A job is written when it is submitted, by the process that runs it (its *owner*: this
process's instance, ``store/instance.py``), and written again once when it finishes. The
owner alone finishes its jobs; a job whose owner died is failed by the recovery of that
instance (``Accountant.sweep`` calls :meth:`AsyncJobStore.recover` under the dead
instance's lock, so exactly one process does it). A job is read only with its
organization: another organization's job does not exist for the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.jobs import Job, JobStatus, TooManyJobs
from openmaas.store.schema import async_jobs, organizations

ORPHANED = "The server process running this job ended before the job finished; submit it again."
"""The error of a job failed because its owner died (the generation's usage, up to its
last checkpoint, is recorded and billed as ``gateway_killed``)."""


class AsyncJobStore:
    """The jobs of one database, written by this process's instance (``instance_id``)."""

    def __init__(self, database: AsyncEngine, now_ms: Callable[[], int], instance_id: str):
        self._database = database
        self._now_ms = now_ms
        self.instance_id = instance_id

    async def unfinished(self, org_id: str) -> int:
        """How many of ``org_id``'s jobs are still running, in every process."""
        c = async_jobs.c
        query = select(func.count()).where(
            c.org_id == org_id, c.status == JobStatus.PROCESSING.value
        )
        async with self._database.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def create(self, job: Job, limit: int | None = None) -> None:
        """Store a new job, owned by this instance; committed when this returns. With a
        ``limit``, raise :class:`TooManyJobs` (storing nothing) when its organization
        would then have more than ``limit`` jobs unfinished."""
        c = async_jobs.c
        async with self._database.begin() as conn:
            if limit is not None and conn.dialect.name != "sqlite":
                # Submits of one organization take turns (SQLite's writers always do; a
                # read before the insert there would only risk a stale snapshot).
                await conn.execute(
                    select(organizations.c.id)
                    .where(organizations.c.id == job.org_id)
                    .with_for_update()
                )
            await conn.execute(
                insert(async_jobs).values(
                    id=job.id,
                    org_id=job.org_id,
                    model=job.model,
                    client_request_id=job.client_request_id,
                    status=job.status.value,
                    result=_dump(job.result) if job.result else None,
                    created_at_ms=job.created_at_ms,
                    updated_at_ms=job.created_at_ms,
                    instance_id=self.instance_id,
                )
            )
            if limit is not None:
                count = select(func.count()).where(
                    c.org_id == job.org_id, c.status == JobStatus.PROCESSING.value
                )
                if int((await conn.execute(count)).scalar_one()) > limit:
                    raise TooManyJobs(limit, job.org_id)  # rolls the insert back

    async def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool:
        """Record how a job ended, once: False when it had ended already."""
        c = async_jobs.c
        async with self._database.begin() as conn:
            done = await conn.execute(
                update(async_jobs)
                .where(c.id == job_id, c.status == JobStatus.PROCESSING.value)
                .values(status=status.value, result=_dump(result), updated_at_ms=self._now_ms())
            )
        return done.rowcount == 1

    async def get(self, org_id: str, job_id: str) -> Job | None:
        """The job if it exists and belongs to ``org_id``; else None (no leak across orgs)."""
        c = async_jobs.c
        async with self._database.connect() as conn:
            row = (
                await conn.execute(select(async_jobs).where(c.id == job_id, c.org_id == org_id))
            ).first()
        return None if row is None else _job(row)

    # -- recovery: the jobs of dead instances ------------------------------------------

    async def owners(self) -> set[str]:
        """The instances with jobs still running, this one's included."""
        c = async_jobs.c
        async with self._database.connect() as conn:
            rows = await conn.execute(
                select(c.instance_id).where(c.status == JobStatus.PROCESSING.value).distinct()
            )
        return {str(row.instance_id) for row in rows}

    async def recover(self, instance_id: str) -> int:
        """Fail the running jobs of ``instance_id``, which died (call it holding that
        instance's lock: ``Accountant.sweep``); how many."""
        c = async_jobs.c
        result = _dump({"error": {"code": "500", "message": ORPHANED}})
        async with self._database.begin() as conn:
            failed = await conn.execute(
                update(async_jobs)
                .where(c.instance_id == instance_id, c.status == JobStatus.PROCESSING.value)
                .values(status=JobStatus.FAIL.value, result=result, updated_at_ms=self._now_ms())
            )
        return int(failed.rowcount)


def _dump(result: dict[str, Any]) -> str:
    return orjson.dumps(result).decode()


def _job(row: Row[Any]) -> Job:
    return Job(
        id=row.id,
        org_id=row.org_id,
        model=row.model,
        client_request_id=row.client_request_id,
        created_at_ms=row.created_at_ms,
        status=JobStatus(row.status),
        result=orjson.loads(row.result) if row.result else {},
    )
