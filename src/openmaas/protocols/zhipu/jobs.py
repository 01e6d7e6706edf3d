"""Async chat jobs (``/async/chat/completions`` + ``/async-result/{id}``): a small board of
background tasks, one per job, owned by the organization that created it.

A job runs on the server whatever its client does afterwards. Its finished result (a wire
dict) is kept until it is evicted: at most ``max_finished`` finished jobs are kept, oldest
first out. The board lives on ``app.state``; it holds no I/O of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from openmaas.core.errors import OpenMaaSError

log = logging.getLogger("openmaas.zhipu.jobs")


class TaskStatus(StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"


@dataclass
class Job:
    id: str
    org_id: str
    model: str
    client_request_id: str | None
    created: int
    status: TaskStatus = TaskStatus.PROCESSING
    result: dict[str, Any] = field(default_factory=dict)  # choices/usage, or error


ErrorRenderer = Callable[[OpenMaaSError], dict[str, Any]]


class JobBoard:
    def __init__(self, render_error: ErrorRenderer, max_finished: int = 10_000) -> None:
        self._render_error = render_error
        self._max_finished = max_finished
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def submit(self, job: Job, work: Awaitable[dict[str, Any]]) -> Job:
        """Start ``work`` (resolving to the result fields) in the background."""
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.ensure_future(self._run(job, work))
        return job

    async def _run(self, job: Job, work: Awaitable[dict[str, Any]]) -> None:
        try:
            job.result = await work
            job.status = TaskStatus.SUCCESS
        except OpenMaaSError as exc:
            job.result = self._render_error(exc)
            job.status = TaskStatus.FAIL
        except asyncio.CancelledError:
            job.status = TaskStatus.FAIL
            job.result = {"error": {"code": "500", "message": "The job was cancelled."}}
            raise
        except Exception:
            log.exception("async job %s failed", job.id)
            job.status = TaskStatus.FAIL
            job.result = {"error": {"code": "500", "message": "Internal error."}}
        finally:
            self._tasks.pop(job.id, None)
            self._finished[job.id] = None
            while len(self._finished) > self._max_finished:
                old, _ = self._finished.popitem(last=False)
                self._jobs.pop(old, None)

    def get(self, org_id: str, job_id: str) -> Job | None:
        """The job, if it exists and belongs to ``org_id`` (else None: no leak across orgs)."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.org_id == org_id else None

    async def wait(self, job_id: str) -> None:
        """Wait for one job (tests, shutdown)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Cancel running jobs (their generations record usage as they close)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def create_json(self, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "request_id": job.client_request_id or job.id,
            "model": job.model,
            "task_status": job.status.value,
        }

    def result_json(self, job: Job) -> dict[str, Any]:
        return {**self.create_json(job), "created": job.created, **job.result}
