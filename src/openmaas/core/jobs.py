"""Async jobs: a request run in the background, whose result its organization fetches later
(Zhipu's ``/async/chat/completions`` and ``/async-result/{id}``). The job is stored
(``store/async_jobs.py``), so any process serving the database answers for it; the process
that runs it is its *owner* (``store/instance.py``'s instance), and a job whose owner died
is failed by the recovery of dead instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from openmaas.core.errors import RateLimited


class JobStatus(StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"


@dataclass
class Job:
    id: str  # the request id of the job's generation
    org_id: str  # the only organization that may see it
    model: str
    client_request_id: str | None  # the id the client gave, if any
    created_at_ms: int
    status: JobStatus = JobStatus.PROCESSING
    # Once finished: the wire fields of its result (choices and usage, or error), as the
    # protocol rendered them.
    result: dict[str, Any] = field(default_factory=dict)


class TooManyJobs(RateLimited):
    """An organization already has its most async jobs unfinished (``async_jobs_per_org``):
    the submit is refused (HTTP 429; Zhipu code 1302), nothing stored or charged."""

    def __init__(self, limit: int, org_id: str) -> None:
        super().__init__(
            f"Your organization already has {limit} async jobs unfinished, the most it may "
            f"have at once (OPENMAAS_ASYNC_JOBS_PER_ORG={limit}). Wait for one to finish "
            "(poll /async-result/{id}), then submit again.",
            limit="async_jobs",
            scope=f"org:{org_id}",
            retry_after_seconds=1.0,
        )
        self.jobs_limit = limit
