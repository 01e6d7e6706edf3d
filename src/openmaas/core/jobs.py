"""Async jobs: a request run in the background, whose result its organization fetches later
(Zhipu's ``/async/chat/completions`` and ``/async-result/{id}``). The job is stored
(``store/async_jobs.py``), so any process serving the database answers for it; the process
that runs it is its *owner* (``store/instance.py``'s instance), and a job whose owner died
is failed by the recovery of dead instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
