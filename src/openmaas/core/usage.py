"""The usage record: one per request that reached an engine."""

from __future__ import annotations

from dataclasses import dataclass

from openmaas.core.money import Money
from openmaas.core.termination import Termination
from openmaas.core.types import Usage


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    key_id: str
    org_id: str
    model: str
    endpoint: str
    usage: Usage
    termination: Termination
    started_at_ms: int
    ttft_ms: int | None
    latency_ms: int
    error: str | None = None
    cost: Money | None = None  # what the request was charged; None when its model is unpriced
    deployment: str | None = None  # the deployment that served it, when a router chose
    data_class: str | None = None  # "local" | "external"
    route: str | None = None  # the router's decision (least_loaded, affinity, burst, ...)
    attempts: int = 0  # deployments tried before the first token
    upstream_cost: Money | None = None  # what an external upstream charges us for it


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Totals for one model on one UTC day."""

    day: str
    model: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: Money | None = None  # what the priced requests among them were charged
    # what external upstreams charged us for them, one amount per upstream currency (an
    # upstream's currency is not the organization's, and two are never added)
    upstream_costs: tuple[Money, ...] = ()
