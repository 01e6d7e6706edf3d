"""The board of async chat jobs (protocols/zhipu/jobs.py): it runs this process's jobs and
keeps them in its store (the database in a server: tests/store/test_async_jobs.py; a dict
here), and writes their wire JSON."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openmaas.core.errors import EngineFailure, OpenMaaSError
from openmaas.protocols.zhipu.jobs import Job, JobBoard, JobStatus, create_json, result_json


class MemoryJobs:
    """A store of jobs in a dict: what the board needs of the database."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.fail_writes = False

    async def create(self, job: Job) -> None:
        if self.fail_writes:
            raise OSError("the database is gone")
        self.jobs[job.id] = Job(**vars(job))

    async def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool:
        stored = self.jobs[job_id]
        if stored.status is not JobStatus.PROCESSING:
            return False
        stored.status, stored.result = status, result
        return True

    async def get(self, org_id: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.org_id == org_id else None


def render(exc: OpenMaaSError) -> dict[str, Any]:
    return {"error": {"code": "500", "message": exc.message}}


def job(id_: str, org: str = "org_a") -> Job:
    return Job(id=id_, org_id=org, model="m", client_request_id=None, created_at_ms=1_500)


async def test_job_runs_in_the_background_and_only_its_org_sees_it() -> None:
    store = MemoryJobs()
    board = JobBoard(store, render)
    gate = asyncio.Event()

    async def work() -> dict[str, Any]:
        await gate.wait()
        return {"choices": [1]}

    j = await board.submit(job("j1"), work())
    assert create_json(j) == {
        "id": "j1",
        "request_id": "j1",
        "model": "m",
        "task_status": "PROCESSING",
    }
    assert store.jobs["j1"].status is JobStatus.PROCESSING  # stored before it runs
    assert await board.get("org_b", "j1") is None
    assert await board.get("org_a", "nope") is None
    assert (await board.get("org_a", "j1")).status is JobStatus.PROCESSING  # type: ignore[union-attr]
    gate.set()
    await board.wait("j1")
    done = await board.get("org_a", "j1")
    assert done is not None and done.status is JobStatus.SUCCESS
    assert result_json(done) == {
        "id": "j1",
        "request_id": "j1",
        "model": "m",
        "task_status": "SUCCESS",
        "created": 1,
        "choices": [1],
    }


async def test_failed_job_is_fail_with_the_error() -> None:
    board = JobBoard(MemoryJobs(), render)

    async def work() -> dict[str, Any]:
        raise EngineFailure("boom")

    await board.submit(job("j1"), work())
    await board.wait("j1")
    failed = await board.get("org_a", "j1")
    assert failed is not None and failed.status is JobStatus.FAIL
    assert result_json(failed)["error"] == {"code": "500", "message": "boom"}


async def test_a_job_that_cannot_be_stored_is_refused_and_never_runs() -> None:
    store = MemoryJobs()
    store.fail_writes = True
    ran = False

    async def work() -> dict[str, Any]:
        nonlocal ran
        ran = True
        return {}

    with pytest.raises(OSError):
        await JobBoard(store, render).submit(job("j1"), work())
    assert not ran and store.jobs == {}


async def test_close_cancels_running_jobs() -> None:
    board = JobBoard(MemoryJobs(), render)
    started = asyncio.Event()

    async def work() -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()  # a job still running when the board closes
        return {}

    await board.submit(job("j1"), work())
    await started.wait()
    await board.close()
    cancelled = await board.get("org_a", "j1")
    assert cancelled is not None and cancelled.status is JobStatus.FAIL
    assert cancelled.result["error"]["message"] == "The job was cancelled."
