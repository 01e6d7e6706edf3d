"""OpenTelemetry traces of the API's requests (``OPENMAAS_TRACES``, docs/traces.md).

Imported only when traces are on (``server/app.py``'s ``build_tracing``), and only then is
OpenTelemetry (the ``otel`` extra) loaded. Each request the server dispatches gets a span
of kind SERVER that continues the caller's trace when it sends a W3C ``traceparent``
(:meth:`Tracing.begin`), ended when the response is over: for a stream, when its last
frame is sent or the client leaves (:meth:`Tracing.end`). A generation renames it per the
GenAI semantic conventions (``chat glm-4``) and reports its steps through
``core/tracing.py``'s seam: ``admission``, ``routing``, one ``engine attempt`` per
deployment tried, ``settlement``, each a child of the request's span.

Attributes are ids, names, counts and classes only: the organization and key ids, never a
key's secret, a prompt or a completion.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import Token
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.exceptions import HTTPException
from starlette.types import Scope

from openmaas import __version__
from openmaas.core.errors import OpenMaaSError
from openmaas.core.termination import Termination
from openmaas.core.tracing import Attributes
from openmaas.core.types import GenerationRequest
from openmaas.core.usage import UsageRecord
from openmaas.server.telemetry.logs import trace_ids_var
from openmaas.server.telemetry.metrics import protocol_of
from openmaas.settings import Settings

log = logging.getLogger("openmaas.traces")

PROVIDER = "openmaas"  # gen_ai.provider.name: the gateway serves the request itself
# How a request ended that makes its span an error, though its HTTP status may be 200 (a
# stream that failed after its first frame).
_FAILED = frozenset({Termination.ENGINE_ERROR, Termination.TIMEOUT, Termination.REJECTED})


class _ScopeHeaders(Getter[Scope]):
    """The W3C trace context headers of an ASGI scope (names arrive in lower case)."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.lower().encode()
        values = [v.decode("latin-1") for k, v in carrier.get("headers", ()) if k == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.get("headers", ())]


class _Step:
    """A child span of a traced request (``core/tracing.py``'s ``TraceSpan``)."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(
        self, attributes: Attributes | None = None, error: BaseException | str | None = None
    ) -> None:
        span = self._span
        if attributes:
            span.set_attributes(attributes)
        if error is not None:
            _set_error(span, error)
        span.end()


class RequestSpan:
    """One request's span, and what the gateway and the router report of it
    (``core/tracing.py``'s ``RequestTrace``)."""

    __slots__ = ("span", "_context", "_tracer", "_token", "_failed")

    def __init__(self, tracer: Any, span: Span, token: Token[tuple[str, str] | None]) -> None:
        self.span = span
        self._context = set_span_in_context(span)  # the parent of its steps
        self._tracer = tracer
        self._token = token
        self._failed = False

    def generation(self, request: GenerationRequest, endpoint: str, org_id: str) -> None:
        operation = "chat" if request.is_chat else "text_completion"
        self.span.update_name(f"{operation} {request.model}")
        sampling = request.sampling
        attributes: dict[str, str | int | float | bool] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": request.model,
            "openmaas.protocol": protocol_of(endpoint),
            "openmaas.endpoint": endpoint,
            "openmaas.org.id": org_id,
        }
        if sampling.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = sampling.max_tokens
        if sampling.temperature is not None:
            attributes["gen_ai.request.temperature"] = sampling.temperature
        if sampling.top_p is not None:
            attributes["gen_ai.request.top_p"] = sampling.top_p
        if sampling.seed is not None:
            attributes["gen_ai.request.seed"] = sampling.seed
        if sampling.n != 1:
            attributes["gen_ai.request.choice.count"] = sampling.n
        self.span.set_attributes(attributes)

    def step(self, name: str) -> _Step:
        return _Step(self._tracer.start_span(name, context=self._context))

    def attempt(self, deployment: str, decision: str) -> _Step:
        span = self._tracer.start_span(
            "engine attempt",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={"openmaas.deployment": deployment, "openmaas.route.decision": decision},
        )
        return _Step(span)

    def recorded(self, record: UsageRecord, finish_reasons: Sequence[str]) -> None:
        usage = record.usage
        attributes: dict[str, Any] = {
            "gen_ai.response.id": record.request_id,
            "gen_ai.response.model": record.model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "openmaas.usage.cached_tokens": usage.cached_tokens,
            "openmaas.usage.reasoning_tokens": usage.reasoning_tokens,
            "openmaas.termination": record.termination.value,
        }
        if finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(finish_reasons)
        if record.deployment is not None:
            attributes["openmaas.deployment"] = record.deployment
        if record.cost is not None:
            attributes["openmaas.cost.micros"] = record.cost.micros
            attributes["openmaas.cost.currency"] = record.cost.currency.value
        self.span.set_attributes(attributes)
        if record.termination in _FAILED:
            self.failed(record.termination)

    def failed(self, error: BaseException | str) -> None:
        """The request failed: an error the server answered, or how it ended."""
        if not self._failed:
            self._failed = True
            _set_error(self.span, error)


class Tracing:
    """This process's tracer provider, and the span of each request."""

    def __init__(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "openmaas"}))  # no OTEL_SERVICE_NAME
        # A provider of our own, never OpenTelemetry's global one: each application traces
        # to its own exporter.
        self.provider = TracerProvider(resource=resource)
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("openmaas", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._headers = _ScopeHeaders()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        """``otlp``: OTLP/HTTP (protobuf) to ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other
        standard ``OTEL_EXPORTER_OTLP_*`` variables, read by the exporter; ``console``:
        one JSON object per span on stdout."""
        exporter: SpanExporter = (
            OTLPSpanExporter() if settings.traces == "otlp" else ConsoleSpanExporter()
        )
        return cls(exporter)

    def begin(self, scope: Scope) -> RequestSpan:
        """The span of the request ``scope`` is, the caller's ``traceparent`` its parent,
        current for the request's log lines; kept in the scope's state as ``trace``."""
        parent: Context = self._propagator.extract(scope, getter=self._headers)
        method, path = scope["method"], scope["path"]
        state = scope["state"]
        span = self._tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "openmaas.request_id": state.get("request_id", ""),
            },
        )
        context = span.get_span_context()
        token = trace_ids_var.set(
            (format(context.trace_id, "032x"), format(context.span_id, "016x"))
        )
        trace = state["trace"] = RequestSpan(self._tracer, span, token)
        return trace

    def end(self, trace: RequestSpan, status: int | None) -> None:
        """The response is over (sent, or the client left): the span ends."""
        span = trace.span
        try:
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    trace.failed(str(status))
            span.end()
        finally:
            trace_ids_var.reset(trace._token)

    def shutdown(self) -> None:
        """Export what is buffered and stop (the server's end)."""
        self.provider.shutdown()


def _set_error(span: Span, error: BaseException | str) -> None:
    if isinstance(error, OpenMaaSError):
        kind = type(error).__name__
    elif isinstance(error, HTTPException):
        kind = str(error.status_code)
    elif isinstance(error, BaseException):
        kind = "_OTHER"
    else:
        kind = str(error)
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))
