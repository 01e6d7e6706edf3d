"""The seam through which the request path reports a traced request's steps (docs/traces.md).

A request is traced when the server gives it a :class:`RequestTrace` (with
``OPENMAAS_TRACES`` on, ``server/telemetry/traces.py`` implements it over OpenTelemetry); it travels
with the request in ``RoutingHints.trace``. Off, that field is None and the gateway and the
router only test it: no tracing code runs and nothing of OpenTelemetry is imported.

Only ids, names, counts and classes are reported: never a key's secret, a prompt or a
completion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from openmaas.core.types import GenerationRequest
from openmaas.core.usage import UsageRecord

Attributes = Mapping[str, str | int | float | bool]


class TraceSpan(Protocol):
    """One step of a traced request (a child of the request's span)."""

    def end(
        self, attributes: Attributes | None = None, error: BaseException | str | None = None
    ) -> None:
        """End the step, with what it found out; ``error``: it failed (the exception, or
        a description)."""


class RequestTrace(Protocol):
    """A traced request, as the gateway and the router report it."""

    def generation(self, request: GenerationRequest, endpoint: str, org_id: str) -> None:
        """The request is a generation: its operation, model and parameters."""

    def step(self, name: str) -> TraceSpan:
        """A step begins: ``admission``, ``routing``, ``settlement``."""

    def attempt(self, deployment: str, decision: str) -> TraceSpan:
        """An engine attempt begins on ``deployment`` (a failover makes another)."""

    def recorded(self, record: UsageRecord, finish_reasons: Sequence[str]) -> None:
        """The usage record, as written: the response's model, usage and termination."""
