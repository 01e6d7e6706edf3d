"""Async chat jobs (``/async/chat/completions`` + ``/async-result/{id}``): the board that runs
this process's jobs in the background, and the jobs' wire JSON.

A job runs on the server whatever its client does afterwards. It is stored before it
starts, and its result (choices and usage, or the error as Zhipu renders it) once it ends,
in a :class:`JobStore` (``store/async_jobs.py``: the database), so every process serving
the database answers for it and a restart keeps it; the board itself holds no job and does
no I/O of its own, only the tasks it runs.

Jobs share engines and limits with synchronous requests (issue 12): an organization has at
most ``per_org`` jobs unfinished, counted by the store across every process, and a submit
over that is refused (:class:`TooManyJobs`, 429) before anything is stored. A job is
admitted (rate limits, worst-case charge) at submit by its caller, then waits here for its
turn: at most ``room(model)`` of this board's jobs are in a model's engine at once (the
server gives half of the engine's slots), so that jobs never fill the engine's slots and
queue and synchronous requests of others still find room; among the jobs waiting for a
model, the organization with the fewest running goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

import anyio

from openmaas.core.errors import OpenMaaSError
from openmaas.core.jobs import Job, JobStatus, TooManyJobs

__all__ = [
    "Job",
    "JobBoard",
    "JobStatus",
    "JobStore",
    "TooManyJobs",
    "create_json",
    "result_json",
]

log = logging.getLogger("openmaas.zhipu.jobs")

CANCELLED = {"error": {"code": "500", "message": "The job was cancelled."}}
INTERNAL = {"error": {"code": "500", "message": "Internal error."}}

ErrorRenderer = Callable[[OpenMaaSError], dict[str, Any]]
Work = Coroutine[Any, Any, dict[str, Any]]  # resolves to the result's wire fields
Abandon = Callable[[], Awaitable[None]]  # what a job that never starts gives back


class JobStore(Protocol):
    async def unfinished(self, org_id: str) -> int: ...

    async def create(self, job: Job, limit: int | None = None) -> None: ...

    async def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool: ...

    async def get(self, org_id: str, job_id: str) -> Job | None: ...


class JobBoard:
    def __init__(
        self,
        store: JobStore,
        render_error: ErrorRenderer,
        *,
        per_org: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> None:
        self._store = store
        self._render_error = render_error
        self._per_org = per_org
        self._turns = Turns(room or (lambda _model: 1 << 30))
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[str, tuple[Job, Abandon | None]] = {}  # not started yet

    async def check(self, org_id: str) -> None:
        """Raise :class:`TooManyJobs` when ``org_id`` has its most jobs unfinished already
        (before the caller admits a new one; :meth:`submit` checks again, exactly)."""
        if self._per_org is not None and await self._store.unfinished(org_id) >= self._per_org:
            raise TooManyJobs(self._per_org, org_id)

    async def submit(
        self, job: Job, work: Callable[[], Work], abandon: Abandon | None = None
    ) -> Job:
        """Store ``job`` (refused over ``per_org``), then run ``work()`` in the background
        when its turn comes, and store how it ends. ``abandon`` is awaited, instead of
        ``work``, when the job is refused or cancelled before it starts."""
        try:
            await self._store.create(job, self._per_org)
        except BaseException:
            if abandon is not None:
                with anyio.CancelScope(shield=True):
                    await abandon()
            raise
        self._waiting[job.id] = (job, abandon)
        task = asyncio.ensure_future(self._run(job, work))
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))
        return job

    async def _run(self, job: Job, work: Callable[[], Work]) -> None:
        try:
            async with self._turns.turn(job.model, job.org_id):
                del self._waiting[job.id]
                result, status = await work(), JobStatus.SUCCESS
        except OpenMaaSError as exc:
            result, status = self._render_error(exc), JobStatus.FAIL
        except asyncio.CancelledError:
            await self._abandon(job.id)
            await self._finish(job, JobStatus.FAIL, CANCELLED)
            raise
        except Exception:
            log.exception("async job %s failed", job.id)
            result, status = INTERNAL, JobStatus.FAIL
        await self._finish(job, status, result)

    async def _abandon(self, job_id: str) -> None:
        """Give back what a job that never started holds (once)."""
        _, abandon = self._waiting.pop(job_id, (None, None))
        if abandon is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await abandon()
                except Exception:
                    log.exception("async job %s: what it held could not be given back", job_id)

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
        for job, _ in list(self._waiting.values()):  # cancelled before their first step
            await self._abandon(job.id)
            await self._finish(job, JobStatus.FAIL, CANCELLED)


class Turns:
    """Whose job runs next, per model: at most ``room(model)`` jobs run at once; a job over
    that waits, and a freed place goes to the waiting job whose organization has the fewest
    running, then whose organization's last job started longest ago (organizations take
    turns), then the earliest."""

    def __init__(self, room: Callable[[str], int]) -> None:
        self._room = room
        self._running: dict[str, Counter[str]] = {}  # model -> organization -> jobs running
        self._waiting: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        self._started = 0  # jobs started, to order the organizations' last starts
        self._last: dict[tuple[str, str], int] = {}  # (model, organization) -> its last start

    def running(self, model: str) -> int:
        return sum(self._running.get(model, Counter()).values())

    @contextlib.asynccontextmanager
    async def turn(self, model: str, org_id: str) -> AsyncIterator[None]:
        await self._enter(model, org_id)
        try:
            yield
        finally:
            self._leave(model, org_id)

    async def _enter(self, model: str, org_id: str) -> None:
        waiting = self._waiting.setdefault(model, [])
        if not waiting and self.running(model) < self._room(model):
            self._start(model, org_id)
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append((org_id, place))
        self._grant(model)  # the room may have grown (a catalog reload)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():  # given a place, then cancelled
                self._leave(model, org_id)
            elif (org_id, place) in waiting:
                waiting.remove((org_id, place))
            raise

    def _leave(self, model: str, org_id: str) -> None:
        running = self._running[model]
        running[org_id] -= 1
        if running[org_id] <= 0:
            del running[org_id]
        self._grant(model)

    def _grant(self, model: str) -> None:
        waiting = self._waiting.get(model, [])
        running = self._running.setdefault(model, Counter())

        def order(entry: tuple[str, asyncio.Future[None]]) -> tuple[int, int]:
            return running[entry[0]], self._last.get((model, entry[0]), -1)

        while waiting and self.running(model) < self._room(model):
            org_id, place = min(waiting, key=order)  # the earliest among equals
            waiting.remove((org_id, place))
            if place.done():  # cancelled while waiting
                continue
            self._start(model, org_id)
            place.set_result(None)

    def _start(self, model: str, org_id: str) -> None:
        self._running.setdefault(model, Counter())[org_id] += 1
        self._started += 1
        self._last[model, org_id] = self._started


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
