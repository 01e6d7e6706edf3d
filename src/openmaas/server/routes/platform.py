"""OpenMaaS's own endpoints: the base URL's ``HEAD /``, health, readiness, metrics and
usage."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from openmaas.core.errors import AuthenticationFailed, NotFound
from openmaas.core.money import format_micros
from openmaas.core.validation import checked_day
from openmaas.server.responses import json_response
from openmaas.server.routes.common import authenticate
from openmaas.server.state import app_state
from openmaas.server.telemetry.metrics import authorized
from openmaas.store.database import ping

router = APIRouter(tags=["Platform"])


@router.head("/", summary="The base URL answers (clients such as Claude Code check it)")
async def root() -> Response:
    """200 with no body, no key needed: Claude Code sends ``HEAD /`` to its
    ``ANTHROPIC_BASE_URL`` to see that the server is there."""
    return Response(status_code=200)


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus text format (docs/metrics.md), behind ``OPENMAAS_METRICS_TOKEN``: 404
    while it is unset (nothing is counted then), 401 without ``Authorization: Bearer``."""
    state = app_state(request)
    token, meter = state.settings.metrics_token, state.metrics
    if token is None or meter is None:
        raise NotFound("Not Found")
    if not authorized(request, token):
        raise AuthenticationFailed("A valid metrics token is required.")
    meter.sample(state)
    return Response(meter.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    summary="Readiness: no engine still loading, database reachable, rate limits checkable",
)
async def readyz(request: Request) -> Response:
    """Not ready (503) while an engine loads, the database cannot be reached, the process
    drains, or the rate limiter's Redis is unreachable and it fails closed. Failing open, it
    stays ready and ``limiter.enforcing`` is false."""
    state = app_state(request)
    models = state.catalog.list()
    engines = {m.name: m.engine.health().state.value for m in models}
    database = await ping(state.database)
    limiter = await state.platform.limiter.health()
    ready = (
        database and limiter.ready and state.catalog.all_settled() and not state.lifecycle.draining
    )
    body = {
        "status": "ready" if ready else "not_ready",
        "database": "ok" if database else "unreachable",
        "limiter": limiter.as_json(),
        "engines": engines,
        "in_flight": {m.name: m.engine.capacity().in_flight for m in models},
        "draining": state.lifecycle.draining,
    }
    return json_response(body, 200 if ready else 503)


@router.get("/v1/usage", summary="Usage of the calling key's organization, per model and day")
async def usage(
    request: Request,
    start_date: str | None = Query(None, description="First UTC day, YYYY-MM-DD"),
    end_date: str | None = Query(None, description="Last UTC day, YYYY-MM-DD"),
) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    since = None if start_date is None else checked_day(start_date, "start_date")
    until = None if end_date is None else checked_day(end_date, "end_date")
    totals = await state.usage.totals(principal.org_id, since, until)
    return json_response(
        {
            "object": "list",
            "organization": principal.org_id,
            "data": [
                {
                    "date": t.day,
                    "model": t.model,
                    "requests": t.requests,
                    "prompt_tokens": t.prompt_tokens,
                    "cached_tokens": t.cached_tokens,
                    "completion_tokens": t.completion_tokens,
                    "total_tokens": t.prompt_tokens + t.completion_tokens,
                    # decimal string, exact; null when none of these requests was priced
                    "cost": None if t.cost is None else format_micros(t.cost.micros),
                    "currency": None if t.cost is None else t.cost.currency.value,
                }
                for t in totals
            ],
        }
    )
