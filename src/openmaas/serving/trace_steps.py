"""What the gateway reports of a traced request's steps (``core/tracing.py``, ``docs/traces.md``):
the ``routing`` step and an engine's one attempt when no router reports its own, and the
attributes of admission, routing and settlement. Used only when a request carries a trace."""

from __future__ import annotations

from openmaas.billing.accountant import Ticket
from openmaas.core.tracing import Attributes, RequestTrace, TraceSpan
from openmaas.core.usage import UsageRecord
from openmaas.engines.base import Route
from openmaas.routing.router import RoutedEngine


def trace_routing(
    trace: RequestTrace, engine: object, model: str
) -> tuple[TraceSpan, TraceSpan | None]:
    """A traced start's ``routing`` step, and the one attempt of an engine served directly
    (a router reports its attempts itself)."""
    routing = trace.step("routing")
    attempt = None if isinstance(engine, RoutedEngine) else trace.attempt(model, "direct")
    return routing, attempt


def end_spans(exc: BaseException, *spans: TraceSpan | None) -> None:
    for span in spans:
        if span is not None:
            span.end(None, exc)


def admission_attributes(ticket: Ticket) -> Attributes:
    how = "leased" if ticket.leased else "held" if ticket.held else "unpriced"
    attributes: dict[str, str | int | float | bool] = {
        "openmaas.admission": how,
        "openmaas.data_policy": ticket.data_policy.value,
    }
    reserved = ticket.request.reserved_micros
    if reserved is not None:
        attributes["openmaas.reserved_micros"] = reserved
    return attributes


def route_attributes(route: Route) -> Attributes:
    attributes: dict[str, str | int | float | bool] = {"openmaas.route.attempts": route.attempts}
    if route.deployment is not None:
        attributes["openmaas.deployment"] = route.deployment
    if route.decision is not None:
        attributes["openmaas.route.decision"] = route.decision
    if route.data_class is not None:
        attributes["openmaas.data_class"] = route.data_class
    return attributes


def settlement_attributes(record: UsageRecord) -> Attributes:
    attributes: dict[str, str | int | float | bool] = {
        "openmaas.termination": record.termination.value
    }
    if record.cost is not None:
        attributes["openmaas.cost.micros"] = record.cost.micros
        attributes["openmaas.cost.currency"] = record.cost.currency.value
    return attributes
