"""The board of async chat jobs (protocols/zhipu/jobs.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from openmaas.core.errors import EngineFailure, OpenMaaSError
from openmaas.protocols.zhipu.jobs import Job, JobBoard, TaskStatus


def render(exc: OpenMaaSError) -> dict[str, Any]:
    return {"error": {"code": "500", "message": exc.message}}


def job(id_: str, org: str = "org_a") -> Job:
    return Job(id=id_, org_id=org, model="m", client_request_id=None, created=1)


async def test_job_runs_in_the_background_and_only_its_org_sees_it() -> None:
    board = JobBoard(render)
    gate = asyncio.Event()

    async def work() -> dict[str, Any]:
        await gate.wait()
        return {"choices": [1]}

    j = board.submit(job("j1"), work())
    assert board.create_json(j) == {
        "id": "j1",
        "request_id": "j1",
        "model": "m",
        "task_status": "PROCESSING",
    }
    assert board.get("org_b", "j1") is None
    assert board.get("org_a", "nope") is None
    assert board.get("org_a", "j1").status is TaskStatus.PROCESSING  # type: ignore[union-attr]
    gate.set()
    await board.wait("j1")
    done = board.get("org_a", "j1")
    assert done is not None and done.status is TaskStatus.SUCCESS
    assert board.result_json(done)["choices"] == [1]
    assert board.result_json(done)["task_status"] == "SUCCESS"


async def test_failed_job_is_fail_with_the_error() -> None:
    board = JobBoard(render)

    async def work() -> dict[str, Any]:
        raise EngineFailure("boom")

    board.submit(job("j1"), work())
    await board.wait("j1")
    failed = board.get("org_a", "j1")
    assert failed is not None and failed.status is TaskStatus.FAIL
    assert board.result_json(failed)["error"] == {"code": "500", "message": "boom"}


async def test_oldest_finished_jobs_are_evicted() -> None:
    board = JobBoard(render, max_finished=2)

    async def work() -> dict[str, Any]:
        return {}

    for i in range(3):
        board.submit(job(f"j{i}"), work())
        await board.wait(f"j{i}")
    assert board.get("org_a", "j0") is None
    assert board.get("org_a", "j2") is not None


async def test_close_cancels_running_jobs() -> None:
    board = JobBoard(render)

    async def work() -> dict[str, Any]:
        await asyncio.sleep(3600)  # a job still running when the board closes
        return {}

    board.submit(job("j1"), work())
    await asyncio.sleep(0)  # one turn of the loop: the job has started
    await board.close()
    cancelled = board.get("org_a", "j1")
    assert cancelled is not None and cancelled.status is TaskStatus.FAIL
