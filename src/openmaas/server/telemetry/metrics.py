"""``GET /metrics``: the process's metrics in the Prometheus text format (docs/metrics.md).

Requests, tokens, revenue and upstream cost are counted in one place, where the usage record
is made (``Gateway.finish`` calls :meth:`Metrics.recorded` with the record as written, its
charge filled in), so the counters agree exactly with the usage records and the ledger.
Refusals (nothing reached an engine, no record) are counted where the gateway refuses.
Per request that is a dictionary lookup of the labelled children (cached by the record's
labels, no string built) and a few increments.

What is a state rather than a count (requests in flight and queued per deployment,
deployment health, circuit state, holds and money held, the usage writer's backlog) is
sampled: every ``SAMPLE_SECONDS`` by each process, and by the process that answers a scrape
before it answers.

With several gateway processes (``openmaas serve --workers N``) the supervisor gives every
worker ``PROMETHEUS_MULTIPROC_DIR`` (``metrics/<supervisor pid>`` in the data directory, new
at each start, removed at its end): prometheus_client keeps each process's values in files
there, and a scrape of any worker sums the counters and histograms of all of them, alive or
dead; a worker that died is marked dead (:func:`worker_died`), so its gauges leave the live
sums.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.requests import Request

from openmaas.core.errors import OpenMaaSError
from openmaas.core.routing import BreakerState
from openmaas.core.usage import UsageRecord
from openmaas.engines.base import Engine, EngineState
from openmaas.routing.router import RoutedEngine

if TYPE_CHECKING:
    from openmaas.server.state import AppState

log = logging.getLogger("openmaas.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
SAMPLE_SECONDS = 5.0
REFUSED = "refused"  # the termination label of a request refused before any engine ran

# Seconds; the last finite bucket of each is a timeout one sets, not a typical value.
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_CIRCUIT = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


def protocol_of(endpoint: str) -> str:
    """The protocol a usage record's endpoint belongs to (``zhipu.*``, ``messages``, the
    rest OpenAI's: chat.completions, completions, embeddings, responses)."""
    if endpoint.startswith("zhipu."):
        return "zhipu"
    if endpoint == "messages":
        return "anthropic"
    return "openai"


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class _Children:
    """The labelled children one kind of usage record increments (cached per labels)."""

    __slots__ = (
        "requests",
        "input",
        "cached",
        "output",
        "reasoning",
        "ttft",
        "tpot",
        "latency",
        "revenue",
    )

    def __init__(self, metrics: Metrics, record: UsageRecord, currency: str) -> None:
        protocol, model, org = protocol_of(record.endpoint), record.model, record.org_id
        self.requests = metrics.requests.labels(protocol, model, record.termination.value)
        tokens = metrics.tokens
        self.input = tokens.labels(model, org, "input")
        self.cached = tokens.labels(model, org, "cached")
        self.output = tokens.labels(model, org, "output")
        self.reasoning = tokens.labels(model, org, "reasoning")
        self.ttft = metrics.ttft.labels(model)
        self.tpot = metrics.tpot.labels(model)
        self.latency = metrics.latency.labels(protocol, model)
        self.revenue = metrics.revenue.labels(model, org, currency) if currency else None


class Metrics:
    """The counters, histograms and gauges of one process, and the gateway's meter."""

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # Our metrics live in a registry of their own (never prometheus_client's global
        # one): each application has its own counts. With several processes the values
        # are in the directory's files, and a scrape reads those instead.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "openmaas_requests",
            "Requests by how they ended: one per usage record, or refused before any engine.",
            ["protocol", "model", "termination"],
            registry=registry,
        )
        self.refusals = Counter(
            "openmaas_requests_refused",
            "Requests refused before any engine ran (no usage record), by reason.",
            ["protocol", "model", "reason"],
            registry=registry,
        )
        self.tokens = Counter(
            "openmaas_tokens",
            "Tokens of the usage records: input (prompt), cached (of the input), output, "
            "reasoning (of the output).",
            ["model", "organization", "kind"],
            registry=registry,
        )
        self.revenue = Counter(
            "openmaas_revenue_micros",
            "What priced requests were charged, in micros of the currency.",
            ["model", "organization", "currency"],
            registry=registry,
        )
        self.upstream_cost = Counter(
            "openmaas_upstream_cost_micros",
            "What external upstreams charge for the requests they served, in micros.",
            ["model", "deployment", "currency"],
            registry=registry,
        )
        self.ttft = Histogram(
            "openmaas_time_to_first_token_seconds",
            "From admission to the first token of any kind.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "openmaas_time_per_output_token_seconds",
            "After the first token, the time per further output token (requests of 2+).",
            ["model"],
            buckets=_TPOT_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "openmaas_request_duration_seconds",
            "From admission to the usage record, of requests that reached an engine.",
            ["protocol", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "openmaas_deployment_requests_in_flight",
            "Requests a deployment is serving or has queued (summed over the processes).",
            ["model", "deployment"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "openmaas_deployment_queue_depth",
            "Requests waiting for a slot of a deployment (summed over the processes).",
            ["model", "deployment"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.up = Gauge(
            "openmaas_deployment_up",
            "1 when a deployment is ready to serve, else 0 (loading, failed, stopped).",
            ["model", "deployment"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.circuit = Gauge(
            "openmaas_deployment_circuit_state",
            "A deployment's circuit breaker: 0 closed, 1 half-open, 2 open (the worst "
            "of the processes).",
            ["model", "deployment"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.generations = Gauge(
            "openmaas_generations_open",
            "Generations admitted whose usage record is not yet written.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.holds = Gauge(
            "openmaas_holds_open",
            "Holds on the ledger not yet settled or released.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.held = Gauge(
            "openmaas_money_held_micros",
            "Money the open holds keep from balances, in micros of the currency.",
            ["currency"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.backlog = Gauge(
            "openmaas_usage_writer_backlog",
            "Ledger and usage writes queued, not yet committed (summed over the processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._children: dict[tuple[str, str, str, str, str], _Children] = {}
        self._upstream: dict[tuple[str, str, str], Counter] = {}
        self._reasons: dict[type[BaseException], str] = {}
        self._held_currencies: set[str] = set()
        self._deployments: set[tuple[str, str]] = set()  # the gauges' label sets, last sampled

    # -- the gateway's meter (serving/gateway.py's Meter) -----------------------------

    def recorded(self, record: UsageRecord) -> None:
        """One usage record, as written (its charge filled in)."""
        cost = record.cost
        currency = cost.currency.value if cost is not None else ""
        key = (record.endpoint, record.model, record.org_id, record.termination, currency)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = _Children(self, record, currency)
        children.requests.inc()
        usage = record.usage
        if usage.prompt_tokens:
            children.input.inc(usage.prompt_tokens)
        if usage.cached_tokens:
            children.cached.inc(usage.cached_tokens)
        if usage.completion_tokens:
            children.output.inc(usage.completion_tokens)
        if usage.reasoning_tokens:
            children.reasoning.inc(usage.reasoning_tokens)
        if cost is not None and children.revenue is not None and cost.micros:
            children.revenue.inc(cost.micros)
        latency = record.latency_ms
        children.latency.observe(latency / 1000)
        ttft = record.ttft_ms
        if ttft is not None:
            children.ttft.observe(ttft / 1000)
            if usage.completion_tokens > 1:
                children.tpot.observe((latency - ttft) / 1000 / (usage.completion_tokens - 1))
        upstream = record.upstream_cost
        if upstream is not None and upstream.micros:
            self._upstream_child(record, upstream.currency.value).inc(upstream.micros)

    def refused(self, endpoint: str, model: str, exc: BaseException) -> None:
        """A request refused before any engine ran; ``model`` is "" when the catalog does
        not serve the name asked for (a client's name is never a label)."""
        reason = self._reasons.get(type(exc))
        if reason is None:
            name = type(exc).__name__ if isinstance(exc, OpenMaaSError) else "error"
            reason = self._reasons[type(exc)] = _snake(name)
        protocol = protocol_of(endpoint)
        self.requests.labels(protocol, model, REFUSED).inc()
        self.refusals.labels(protocol, model, reason).inc()

    def _upstream_child(self, record: UsageRecord, currency: str) -> Counter:
        key = (record.model, record.deployment or "", currency)
        child = self._upstream.get(key)
        if child is None:
            child = self._upstream[key] = self.upstream_cost.labels(*key)
        return child

    # -- states, sampled -------------------------------------------------------------

    def sample(self, state: AppState) -> None:
        """Set the gauges from this process's state (off the request path)."""
        deployments: set[tuple[str, str]] = set()
        for model in state.catalog.list():
            engine = model.engine
            if isinstance(engine, RoutedEngine):
                now = engine.now()
                for member in engine.members:
                    self._deployment(model.name, member.id, member.engine)
                    state_ = member.breaker.state(now)
                    self.circuit.labels(model.name, member.id).set(_CIRCUIT[state_])
                    deployments.add((model.name, member.id))
            else:
                self._deployment(model.name, model.name, engine)
                self.circuit.labels(model.name, model.name).set(0)
                deployments.add((model.name, model.name))
        for gone in self._deployments - deployments:  # a catalog change removed it
            if self.multiprocess_dir is None:
                for gauge in (self.in_flight, self.queued, self.up, self.circuit):
                    gauge.remove(*gone)
            else:  # a series stays in the files for the run: nothing in flight, closed
                for gauge in (self.in_flight, self.queued, self.circuit):
                    gauge.labels(*gone).set(0)
        self._deployments = deployments
        self.generations.set(state.gateway.open_generations)
        ledger_store = state.accountant.ledger
        holds = ledger_store.ledger.holds
        self.holds.set(len(holds))
        held: dict[str, int] = {}
        for hold in holds.values():
            currency = hold.applied.currency.value
            held[currency] = held.get(currency, 0) + hold.money
        self._held_currencies |= held.keys()
        for currency in self._held_currencies:  # one with no hold left goes to 0
            self.held.labels(currency).set(held.get(currency, 0))
        self.backlog.set(ledger_store.backlog)

    def _deployment(self, model: str, deployment: str, engine: Engine) -> None:
        capacity = engine.capacity()
        self.in_flight.labels(model, deployment).set(capacity.in_flight)
        self.queued.labels(model, deployment).set(max(0, capacity.in_flight - capacity.slots))
        ready = engine.health().state is EngineState.READY
        self.up.labels(model, deployment).set(1 if ready else 0)

    async def sample_every(self, state: AppState, seconds: float = SAMPLE_SECONDS) -> None:
        while True:
            try:
                self.sample(state)
            except Exception:  # the next round tries again
                log.exception("sampling the metrics failed")
            await asyncio.sleep(seconds)

    # -- the scrape ------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the text format: this process's, or with several processes
        the sum over the directory's files."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry, str(self.multiprocess_dir))
        return generate_latest(registry)


def metrics_from_environment() -> Metrics:
    """This process's metrics: across processes when the supervisor named a directory."""
    directory = os.environ.get(MULTIPROC_ENV)
    return Metrics(multiprocess_dir=Path(directory) if directory else None)


def multiprocess_directory(home: Path, run: int | None = None) -> Path:
    """Where the workers of this run of ``serve --workers N`` keep their metrics: a new,
    empty ``metrics/<run>`` in the data directory (``run``: the supervisor's pid; counts of
    an earlier run are not this run's). Directories of runs that are over (no process has
    their pid) are removed; another supervisor's on the same data directory is left alone."""
    base = home.resolve() / "metrics"
    run = os.getpid() if run is None else run
    if base.is_dir():
        for entry in base.iterdir():
            if not entry.name.isdigit() or int(entry.name) == run or not _alive(int(entry.name)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    directory = base / str(run)
    directory.mkdir(parents=True)
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def worker_died(directory: Path, pid: int) -> None:
    """A worker died: its gauges leave the live sums (its counts stay in the totals)."""
    prometheus_multiprocess.mark_process_dead(pid, str(directory))


def authorized(request: Request, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
