"""OpenTelemetry traces (``OPENMAAS_TRACES``, docs/traces.md): with an in-memory exporter,
one request through each protocol is one span tree (the request, its admission, routing,
engine attempts and settlement) with the GenAI attributes; a failover is two attempts; the
caller's ``traceparent`` is continued; the JSON log lines of a traced request carry its
ids; off, nothing of tracing is even imported."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

import openmaas  # noqa: E402
from openmaas.accounts.admin import NewOrganization  # noqa: E402
from openmaas.billing.admin_bodies import NewFunds, NewPrice  # noqa: E402
from openmaas.platform import open_platform  # noqa: E402
from openmaas.server.app import create_app  # noqa: E402
from openmaas.server.telemetry.logs import JsonFormatter  # noqa: E402
from openmaas.server.telemetry.traces import Tracing  # noqa: E402
from openmaas.settings import Settings  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

FAKES = {
    "fake-echo": {"text": "one two three four"},
    "fake-broken": {"fail_before_first_token": True},
}
# glm-4: two deployments, the first (priority 0) failing before its first token, so every
# request fails over to the second.
CATALOG = """\
models:
  - name: glm-4
    deployments:
      - {id: glm-a, engine: fake, priority: 0, script: {fail_before_first_token: true}}
      - {id: glm-b, engine: fake, priority: 1, script: {text: "served by b"}}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
STEPS = ["admission", "routing", "engine attempt", "settlement"]


def _settings(tmp_path: Path) -> Settings:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    return Settings(
        home=tmp_path / "home", embedded_models=False, fake_models=FAKES, catalog_file=catalog
    )


async def _key(settings: Settings) -> str:
    """A funded organization's key; fake-echo is priced."""
    async with open_platform(settings) as platform:
        accounts, billing = platform.accounts_admin("test"), platform.billing_admin("test")
        org = await accounts.create_org(NewOrganization(name="payer"))
        price = {"model": "fake-echo", "input": "0.5", "cached_input": "0", "output": "1.25"}
        await billing.set_price(NewPrice.parse(price))
        await billing.top_up(org.id, NewFunds.parse({"amount": "1"}))
        return (await accounts.issue_key(org.id, "app")).token


class Traced:
    """A served application whose spans go to memory."""

    def __init__(self, client: TestClient, exporter: InMemorySpanExporter, key: str) -> None:
        self.client = client
        self.exporter = exporter
        self.key = key
        self.headers = {"Authorization": f"Bearer {key}"}

    def tree(self, request_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
        """The request's span (once ended) and its children, in the order they started."""

        def ended() -> ReadableSpan | None:
            for span in self.exporter.get_finished_spans():
                if span.attributes and span.attributes.get("openmaas.request_id") == request_id:
                    return span
            return None

        root = wait_until(ended, what=f"the span of request {request_id}")
        children = [
            s
            for s in self.exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == root.context.span_id
        ]
        return root, sorted(children, key=lambda s: s.start_time or 0)


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    settings = _settings(tmp_path)
    key = asyncio.run(_key(settings))
    exporter = InMemorySpanExporter()
    app = create_app(settings, tracing=Tracing(exporter, batch=False))
    with TestClient(app) as client:
        yield Traced(client, exporter, key)


def _chat(model: str, **more: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "a secret prompt"}]
    return {"model": model, "messages": messages, "max_tokens": 50, **more}


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_chat_request_is_a_span_tree_with_the_genai_attributes(traced: Traced) -> None:
    reply = traced.client.post(
        "/v1/chat/completions", json=_chat("fake-echo", temperature=0.3), headers=traced.headers
    )
    assert reply.status_code == 200
    root, children = traced.tree(reply.headers["x-request-id"])
    assert root.name == "chat fake-echo" and root.kind is SpanKind.SERVER
    assert root.status.status_code is StatusCode.UNSET
    assert [c.name for c in children] == STEPS
    usage = reply.json()["usage"]
    attributes = _attributes(root)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openmaas"
    assert attributes["gen_ai.request.model"] == "fake-echo"
    assert attributes["gen_ai.response.model"] == "fake-echo"
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.request.temperature"] == 0.3
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.response.id"] == reply.headers["x-request-id"]
    assert attributes["openmaas.protocol"] == "openai"
    assert attributes["openmaas.termination"] == "finished"
    assert attributes["openmaas.org.id"].startswith("org_")
    assert attributes["http.response.status_code"] == 200
    admission, routing, attempt, settlement = children
    assert _attributes(admission)["openmaas.admission"] in {"leased", "held"}
    assert _attributes(routing)["openmaas.route.attempts"] == 0  # one engine, no router
    assert _attributes(attempt) == {
        "openmaas.deployment": "fake-echo",
        "openmaas.route.decision": "direct",
        "openmaas.attempt.outcome": "served",
    }
    assert attempt.kind is SpanKind.CLIENT
    assert _attributes(settlement)["openmaas.cost.micros"] == attributes["openmaas.cost.micros"] > 0
    # never the key nor the prompt or the answer
    everything = json.dumps([_attributes(s) for s in [root, *children]])
    assert traced.key not in everything and traced.key[:12] not in everything
    assert "secret prompt" not in everything and "three four" not in everything


def test_a_stream_s_span_ends_with_the_stream(traced: Traced) -> None:
    with traced.client.stream(
        "POST", "/v1/chat/completions", json=_chat("fake-echo", stream=True), headers=traced.headers
    ) as reply:
        assert reply.status_code == 200
        rid = reply.headers["x-request-id"]
        body = "".join(reply.iter_text())
    assert body.rstrip().endswith("data: [DONE]")
    root, children = traced.tree(rid)
    assert [c.name for c in children] == STEPS
    settlement = children[-1]
    # the request span covers the whole stream: it ended after the usage was settled
    assert root.end_time is not None and settlement.end_time is not None
    assert root.end_time >= settlement.end_time
    assert _attributes(root)["gen_ai.usage.output_tokens"] > 0


def test_an_anthropic_request_is_traced_the_same(traced: Traced) -> None:
    reply = traced.client.post(
        "/v1/messages",
        json={
            "model": "fake-echo",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"x-api-key": traced.key, "anthropic-version": "2023-06-01"},
    )
    assert reply.status_code == 200
    root, children = traced.tree(reply.headers["x-request-id"])
    assert root.name == "chat fake-echo"
    assert [c.name for c in children] == STEPS
    attributes = _attributes(root)
    assert attributes["openmaas.protocol"] == "anthropic"
    assert attributes["gen_ai.usage.output_tokens"] == reply.json()["usage"]["output_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_a_zhipu_stream_is_traced_the_same(traced: Traced) -> None:
    with traced.client.stream(
        "POST",
        "/api/paas/v4/chat/completions",
        json=_chat("fake-echo", stream=True),
        headers=traced.headers,
    ) as reply:
        assert reply.status_code == 200
        rid = reply.headers["x-request-id"]
        assert "[DONE]" in "".join(reply.iter_text())
    root, children = traced.tree(rid)
    assert root.name == "chat fake-echo"
    assert [c.name for c in children] == STEPS
    attributes = _attributes(root)
    assert attributes["openmaas.protocol"] == "zhipu"
    assert attributes["openmaas.endpoint"] == "zhipu.chat.completions"
    assert attributes["gen_ai.usage.output_tokens"] > 0


def test_a_failover_is_two_engine_attempts(traced: Traced) -> None:
    reply = traced.client.post("/v1/chat/completions", json=_chat("glm-4"), headers=traced.headers)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "served by b"
    root, children = traced.tree(reply.headers["x-request-id"])
    assert root.name == "chat glm-4"
    assert [c.name for c in children] == [
        "admission",
        "routing",
        "engine attempt",
        "engine attempt",
        "settlement",
    ]
    failed, served = children[2], children[3]
    assert _attributes(failed)["openmaas.deployment"] == "glm-a"
    assert _attributes(failed)["openmaas.attempt.outcome"] == "error"
    assert failed.status.status_code is StatusCode.ERROR
    assert _attributes(failed)["error.type"] == "EngineFailure"
    assert _attributes(served)["openmaas.deployment"] == "glm-b"
    assert _attributes(served)["openmaas.attempt.outcome"] == "served"
    assert served.status.status_code is StatusCode.UNSET
    routing = _attributes(children[1])
    assert routing["openmaas.deployment"] == "glm-b" and routing["openmaas.route.attempts"] == 2
    assert _attributes(root)["openmaas.deployment"] == "glm-b"
    assert root.status.status_code is StatusCode.UNSET  # the client got its answer


def test_a_failed_request_s_span_is_an_error(traced: Traced) -> None:
    reply = traced.client.post(
        "/v1/chat/completions", json=_chat("fake-broken"), headers=traced.headers
    )
    assert reply.status_code >= 500
    root, children = traced.tree(reply.headers["x-request-id"])
    assert root.status.status_code is StatusCode.ERROR
    assert _attributes(root)["error.type"] == "engine_error"  # its termination
    assert [c.name for c in children] == STEPS
    assert children[2].status.status_code is StatusCode.ERROR  # the attempt
    refused = traced.client.post(
        "/v1/chat/completions", json=_chat("no-such-model"), headers=traced.headers
    )
    assert refused.status_code == 404
    root, children = traced.tree(refused.headers["x-request-id"])
    assert root.status.status_code is StatusCode.ERROR
    assert _attributes(root)["error.type"] == "ModelNotFound"
    assert [c.name for c in children] == ["admission"]


def test_the_caller_s_traceparent_is_continued(traced: Traced) -> None:
    headers = {**traced.headers, "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    reply = traced.client.post("/v1/chat/completions", json=_chat("fake-echo"), headers=headers)
    root, children = traced.tree(reply.headers["x-request-id"])
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == CALLER_SPAN
    assert {format(c.context.trace_id, "032x") for c in children} == {TRACE_ID}
    # without one, a trace of its own
    reply = traced.client.post(
        "/v1/chat/completions", json=_chat("fake-echo"), headers=traced.headers
    )
    root, _ = traced.tree(reply.headers["x-request-id"])
    assert root.parent is None and format(root.context.trace_id, "032x") != TRACE_ID


def test_the_log_lines_of_a_traced_request_carry_its_ids(traced: Traced) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter(traces=True))
    access = logging.getLogger("openmaas.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        reply = traced.client.post(
            "/v1/chat/completions", json=_chat("fake-echo"), headers=traced.headers
        )
        root, _ = traced.tree(reply.headers["x-request-id"])
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    [record] = [r for r in records if r.get("request_id") == reply.headers["x-request-id"]]
    assert record["trace_id"] == format(root.context.trace_id, "032x")
    assert record["span_id"] == format(root.context.span_id, "016x")


OFF = """
import asyncio, sys
from pathlib import Path
from fastapi.testclient import TestClient
from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.app import fake_engine
from tests.support.orgs import member_keys

home, catalog = Path(sys.argv[1]) / "home", Path(sys.argv[1]) / "catalog.yaml"
catalog.write_text(sys.argv[2])
settings = Settings(
    home=home, embedded_models=False, catalog_file=catalog, fake_models={"fake-echo": {}}
)
[key] = asyncio.run(member_keys(settings, "org"))
with TestClient(create_app(settings)) as client:
    for model in ("glm-4", "fake-echo"):  # failed over by a router; an engine served directly
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        reply = client.post(
            "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200 and "[DONE]" in reply.text, reply.text
    assert client.app.state.openmaas.tracing is None
    assert fake_engine(client, "fake-echo").stats.last_routing.trace is None
print("loaded:", "openmaas.server.telemetry.traces" in sys.modules)
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    root = Path(openmaas.__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_off_nothing_of_tracing_is_imported_or_run(tmp_path: Path) -> None:
    """The default: requests (routed and failed over, or served directly) run with no
    trace on the request and without the tracing module ever imported. (OpenTelemetry's
    API is FastAPI's own dependency, and redis-py imports the SDK's metrics when present:
    neither is ours to keep out.)"""
    done = _python(OFF, str(tmp_path), CATALOG)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: False" in done.stdout


MISSING = """
import sys
sys.modules["opentelemetry.sdk"] = None  # as if the otel extra were not installed
from openmaas.core.errors import ConfigurationError
from openmaas.server.app import create_app
from openmaas.settings import Settings
try:
    create_app(Settings(home=sys.argv[1], embedded_models=False, traces="otlp"))
except ConfigurationError as exc:
    print("refused:", exc)
"""


def test_traces_on_without_the_extra_is_one_clear_error(tmp_path: Path) -> None:
    done = _python(MISSING, str(tmp_path / "home"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: OPENMAAS_TRACES=otlp needs OpenTelemetry" in done.stdout
    assert "pip install 'openmaas[otel]'" in done.stdout
