"""The board of async chat jobs (protocols/zhipu/jobs.py): it runs this process's jobs and
keeps them in its store (the database in a server: tests/store/test_async_jobs.py; a dict
here), and writes their wire JSON."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openmaas.core.errors import EngineFailure, OpenMaaSError
from openmaas.protocols.zhipu.jobs import (
    Job,
    JobBoard,
    JobStatus,
    TooManyJobs,
    create_json,
    result_json,
)
from tests.support.waiting import eventually


class MemoryJobs:
    """A store of jobs in a dict: what the board needs of the database."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.fail_writes = False

    async def unfinished(self, org_id: str) -> int:
        return sum(
            1 for j in self.jobs.values() if j.org_id == org_id and j.status is JobStatus.PROCESSING
        )

    async def create(self, job: Job, limit: int | None = None) -> None:
        if self.fail_writes:
            raise OSError("the database is gone")
        if limit is not None and await self.unfinished(job.org_id) >= limit:
            raise TooManyJobs(limit, job.org_id)
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

    j = await board.submit(job("j1"), work)
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

    await board.submit(job("j1"), work)
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
        await JobBoard(store, render).submit(job("j1"), work)
    assert not ran and store.jobs == {}


async def test_close_cancels_running_jobs() -> None:
    board = JobBoard(MemoryJobs(), render)
    started = asyncio.Event()

    async def work() -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()  # a job still running when the board closes
        return {}

    await board.submit(job("j1"), work)
    await started.wait()
    await board.close()
    cancelled = await board.get("org_a", "j1")
    assert cancelled is not None and cancelled.status is JobStatus.FAIL
    assert cancelled.result["error"]["message"] == "The job was cancelled."


async def test_an_org_over_its_jobs_is_refused_and_a_finished_job_frees_its_place() -> None:
    store = MemoryJobs()
    board = JobBoard(store, render, per_org=2)
    gate = asyncio.Event()
    abandoned: list[str] = []

    async def work() -> dict[str, Any]:
        await gate.wait()
        return {}

    async def abandon() -> None:
        abandoned.append("j3")

    await board.submit(job("j1"), work)
    await board.submit(job("j2"), work)
    with pytest.raises(TooManyJobs) as refused:
        await board.check("org_a")
    assert "2 async jobs" in refused.value.message
    with pytest.raises(TooManyJobs):  # the store refuses too (a submit that raced the check)
        await board.submit(job("j3"), work, abandon)
    assert "j3" not in store.jobs and abandoned == ["j3"]  # nothing stored, nothing held
    await board.check("org_b")  # another organization is unaffected
    await board.submit(job("b1", org="org_b"), work)
    gate.set()
    await board.wait("j1")
    await board.check("org_a")  # a finished job frees its place
    await board.submit(job("j4"), work)
    await board.close()


async def test_jobs_wait_for_their_turn_and_the_org_with_fewest_running_goes_first() -> None:
    store = MemoryJobs()
    board = JobBoard(store, render, room=lambda model: 1)
    gates = {name: asyncio.Event() for name in ("a1", "a2", "b1")}
    started: list[str] = []

    def work(name: str) -> Any:
        async def run() -> dict[str, Any]:
            started.append(name)
            await gates[name].wait()
            return {}

        return run

    await board.submit(job("a1"), work("a1"))
    await board.submit(job("a2"), work("a2"))
    await board.submit(job("b1", org="org_b"), work("b1"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == ["a1"]  # one at a time: the others wait on the board
    gates["a1"].set()
    await board.wait("a1")
    await eventually(lambda: len(started) == 2, what="the next job to start")
    assert started == ["a1", "b1"]  # org_b has none running: it goes before org_a's second
    abandoned: list[str] = []

    async def abandon() -> None:
        abandoned.append("a3")

    await board.submit(job("a3"), work("a3"), abandon)
    await board.close()  # a job cancelled while waiting gives back what it held
    assert abandoned == ["a3"]
    assert store.jobs["a3"].status is JobStatus.FAIL and started == ["a1", "b1"]
