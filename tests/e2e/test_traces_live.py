"""Traces from a live ``openmaas serve`` (``OPENMAAS_TRACES=otlp``): its spans reach an
OTLP/HTTP collector at ``OTEL_EXPORTER_OTLP_ENDPOINT``, continuing the caller's trace; the
server's JSON log lines carry the trace id; a stream the client leaves ends its span as
``client_disconnected``."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.proto", reason="the otel extra is not installed")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)

from tests.e2e.live import LiveServer  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
FAKES = {
    "fake-echo": {"text": "one two three four"},
    "fake-slow": {"text": " ".join(["word"] * 400), "token_delay": 0.02},
}


class Collector:
    """An OTLP/HTTP trace receiver on loopback: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    collector.spans += [
                        _span(span)
                        for resource in request.resource_spans
                        for scope in resource.scope_spans
                        for span in scope.spans
                    ]
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def span_of(self, request_id: str) -> dict[str, Any] | None:
        with self.lock:
            for span in self.spans:
                if span["attributes"].get("openmaas.request_id") == request_id:
                    return span
        return None

    def children_of(self, span: dict[str, Any]) -> list[str]:
        with self.lock:
            found = [s for s in self.spans if s["parent_span_id"] == span["span_id"]]
        return [s["name"] for s in sorted(found, key=lambda s: s["start"])]


def _span(span: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for pair in span.attributes:
        kind = pair.value.WhichOneof("value")
        value = getattr(pair.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        attributes[pair.key] = value
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "attributes": attributes,
    }


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def traced(
    request: pytest.FixtureRequest, tmp_path: Path, collector: Collector
) -> Iterator[tuple[LiveServer, str]]:
    live = LiveServer(
        tmp_path / "home",
        embedded_models="false",
        fake_models=FAKES,
        traces="otlp",
        workers=request.param,
    )
    live.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
    live.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export within 0.1 s, not 5
    live.home.mkdir(parents=True)
    live.cli("orgs", "create", "acme")
    key = live.new_key("acme")
    live.start()
    try:
        yield live, key
    finally:
        live.stop()


def test_spans_reach_the_collector_in_the_caller_s_trace(
    traced: tuple[LiveServer, str], collector: Collector
) -> None:
    live, key = traced
    headers = {"Authorization": f"Bearer {key}", "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    chat = {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{live.base_url}/v1/chat/completions", json=chat, headers=headers)
    assert reply.status_code == 200
    rid = reply.headers["x-request-id"]
    span = wait_until(lambda: collector.span_of(rid), what="the request's span at the collector")
    assert span["name"] == "chat fake-echo"
    assert span["trace_id"] == TRACE_ID and span["parent_span_id"] == CALLER_SPAN
    assert (
        span["attributes"]["gen_ai.usage.output_tokens"]
        == reply.json()["usage"]["completion_tokens"]
    )
    assert collector.children_of(span) == ["admission", "routing", "engine attempt", "settlement"]
    # the access-log line of the request carries its trace
    lines = [json.loads(line) for line in live.stderr.splitlines() if line.startswith("{")]
    [access] = [r for r in lines if r.get("request_id") == rid and r["logger"] == "openmaas.access"]
    assert access["trace_id"] == TRACE_ID and access["span_id"] == span["span_id"]


def test_a_stream_the_client_leaves_ends_its_span(
    traced: tuple[LiveServer, str], collector: Collector
) -> None:
    live, key = traced
    chat = {
        "model": "fake-slow",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1000,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{live.base_url}/v1/chat/completions",
        json=chat,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as reply:
        rid = reply.headers["x-request-id"]
        seen = 0
        for line in reply.iter_lines():
            seen += line.startswith("data: ")
            if seen == 5:
                break  # the client leaves mid-stream
    span = wait_until(lambda: collector.span_of(rid), what="the abandoned stream's span")
    attributes = span["attributes"]
    assert attributes["openmaas.termination"] == "client_disconnected"
    assert 0 < attributes["gen_ai.usage.output_tokens"] < 400
    assert collector.children_of(span) == ["admission", "routing", "engine attempt", "settlement"]
