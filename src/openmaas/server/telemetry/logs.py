"""Structured JSON logs, one object per line, carrying the request id of the request being
served and, with traces on (``OPENMAAS_TRACES``, docs/traces.md), the ``trace_id`` and
``span_id`` of its span. Only fields chosen here and by callers are logged: never headers or
bodies, so a credential cannot reach a log line by accident."""

from __future__ import annotations

import contextvars
import logging
import sys
from dataclasses import asdict, is_dataclass
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "openmaas_request_id", default=None
)

# (trace id, span id) as 32 and 16 hex digits, set by ``server/telemetry/traces.py`` while it traces
# a request; read only by a formatter made with ``traces=True``.
trace_ids_var: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "openmaas_trace_ids", default=None
)

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_PLAIN = frozenset({str, int, float, bool, type(None)})  # never a dataclass: no check


class JsonFormatter(logging.Formatter):
    def __init__(self, *, traces: bool = False) -> None:
        super().__init__()
        self.traces = traces  # False: the trace context is not even looked at

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if self.traces:
            ids = trace_ids_var.get()
            if ids is not None:
                entry["trace_id"], entry["span_id"] = ids
        fields = record.__dict__
        for key in [k for k in fields if k not in _RESERVED and k[0] != "_"]:
            value = fields[key]
            if type(value) not in _PLAIN and is_dataclass(value) and not isinstance(value, type):
                value = asdict(value)
            entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, *, traces: bool = False) -> None:
    """JSON lines on stderr; ``traces``: with the trace and span ids of a traced request."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(traces=traces))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # No line shows a record's thread or process names (the formatter leaves them out), so
    # records do not look them up: on every request's access-log line that was a tenth of
    # the line's cost.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Nor where each call was made (the formatter leaves file, line and function out): the
    # logging HOWTO's optimization, which spares every record a walk up the stack (~5 µs of
    # each request's access-log line).
    logging._srcfile = None
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request
    logging.getLogger("gguf").setLevel(logging.WARNING)  # chatty while converting weights
    # httpx logs every upstream and engine-host request at INFO; ours already logs each one.
    logging.getLogger("httpx").setLevel(logging.WARNING)
