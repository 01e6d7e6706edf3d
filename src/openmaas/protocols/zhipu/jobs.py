"""Async chat jobs (``/async/chat/completions`` + ``/async-result/{id}``): the board that runs
this process's jobs in the background, and the jobs' wire JSON.

A job runs on the server whatever its client does afterwards. It is stored before it
starts, and its result (choices and usage, or the error as Zhipu renders it) once it ends,
in a :class:`JobStore` (``store/async_jobs.py``: the database), so every process serving
the database answers for it and a restart keeps it; the board itself holds no job and does
no I/O of its own, only the tasks it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from openmaas.core.errors import OpenMaaSError
from openmaas.core.jobs import Job, JobStatus

__all__ = ["Job", "JobBoard", "JobStatus", "JobStore", "create_json", "result_json"]

log = logging.getLogger("openmaas.zhipu.jobs")

CANCELLED = {"error": {"code": "500", "message": "The job was cancelled."}}
INTERNAL = {"error": {"code": "500", "message": "Internal error."}}

ErrorRenderer = Callable[[OpenMaaSError], dict[str, Any]]
Work = Coroutine[Any, Any, dict[str, Any]]  # resolves to the result's wire fields


class JobStore(Protocol):
    async def create(self, job: Job) -> None: ...

    async def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool: ...

    async def get(self, org_id: str, job_id: str) -> Job | None: ...


class JobBoard:
    def __init__(self, store: JobStore, render_error: ErrorRenderer) -> None:
        self._store = store
        self._render_error = render_error
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, job: Job, work: Work) -> Job:
        """Store ``job``, then run ``work`` in the background and store how it ends."""
        try:
            await self._store.create(job)
        except BaseException:
            work.close()  # never started
            raise
        task = asyncio.ensure_future(self._run(job, work))
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))
        return job

    async def _run(self, job: Job, work: Work) -> None:
        try:
            result, status = await work, JobStatus.SUCCESS
        except OpenMaaSError as exc:
            result, status = self._render_error(exc), JobStatus.FAIL
        except asyncio.CancelledError:
            await self._finish(job, JobStatus.FAIL, CANCELLED)
            raise
        except Exception:
            log.exception("async job %s failed", job.id)
            result, status = INTERNAL, JobStatus.FAIL
        await self._finish(job, status, result)

    async def _finish(self, job: Job, status: JobStatus, result: dict[str, Any]) -> None:
        try:
            await self._store.finish(job.id, status, result)
        except Exception:  # the job stays PROCESSING until this process's end fails it
            log.exception("async job %s: its end could not be stored", job.id)
        else:
            job.status, job.result = status, result

    async def get(self, org_id: str, job_id: str) -> Job | None:
        """The job, if it exists and belongs to ``org_id`` (else None: no leak across orgs),
        whichever process runs it."""
        return await self._store.get(org_id, job_id)

    async def wait(self, job_id: str) -> None:
        """Wait for one job of this board (tests, shutdown)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Cancel running jobs (their generations record usage as they close; each job is
        stored as failed)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def create_json(job: Job) -> dict[str, Any]:
    """The answer to a submitted job."""
    return {
        "id": job.id,
        "request_id": job.client_request_id or job.id,
        "model": job.model,
        "task_status": job.status.value,
    }


def result_json(job: Job) -> dict[str, Any]:
    """The answer to ``/async-result/{id}``: the job, and once finished its result."""
    return {**create_json(job), "created": job.created_at_ms // 1000, **job.result}
