"""Failover as a client sees it: the official openai SDK, a live server, a model with two
real HTTP upstream deployments. Whatever fails behind (a 503, a refused connection, a
silent replica), the client sees one coherent stream; after its first byte, nothing is
retried (no duplicated output), and each request leaves one usage record saying where it
was served."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.live import LiveServer
from tests.engines.upstream import Behaviour, Upstream

TEXT = "one two three four five six"


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream(Behaviour(text=TEXT)) as first, Upstream(Behaviour(text=TEXT)) as second:
        yield first, second


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream]
) -> Iterator[LiveServer]:
    first, second = upstreams
    root = tmp_path_factory.mktemp("failover")
    catalog = root / "catalog.yaml"
    catalog.write_text(
        f"""\
models:
  - name: routed
    routing: {{max_attempts: 3}}
    deployments:
      - {{id: first, engine: openai, base_url: "{first.base_url}", upstream_model: m,
         data_class: local, priority: 0}}
      - {{id: second, engine: openai, base_url: "{second.base_url}", upstream_model: m,
         data_class: local, priority: 1}}
  - name: dead-then-cloud
    routing: {{fallbacks: [routed]}}
    deployments:
      - {{id: nowhere, engine: openai, base_url: "http://127.0.0.1:{closed_port()}/v1",
         upstream_model: m, data_class: local}}
"""
    )
    live = LiveServer(root / "home", embedded_models="false", catalog_file=str(catalog))
    live.start()
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.admin_key, max_retries=0)


def stream_text(client: openai.OpenAI, model: str) -> tuple[str, str, openai.types.CompletionUsage]:
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        text, usage = "", None
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage
    assert usage is not None
    return request_id, text, usage


def test_a_503_before_the_first_byte_fails_over_to_one_coherent_stream(
    client: openai.OpenAI, server: LiveServer, upstreams: tuple[Upstream, Upstream]
) -> None:
    first, second = upstreams
    first.script(Behaviour(status=503))
    before = len(second.requests)
    request_id, text, usage = stream_text(client, "routed")
    assert text.split() == TEXT.split()  # once, in order: nothing duplicated or lost
    assert usage.completion_tokens == len(TEXT.split())
    assert len(second.requests) == before + 1
    row = server.usage_row(request_id)
    assert (row["deployment"], row["attempts"], row["termination"]) == ("second", 2, "finished")


def test_a_drop_after_the_first_byte_is_not_retried(
    client: openai.OpenAI, server: LiveServer, upstreams: tuple[Upstream, Upstream]
) -> None:
    first, second = upstreams
    first.script(Behaviour(drop_after_tokens=2))
    before = len(second.requests)
    with pytest.raises(openai.APIError):  # the stream ends with an error event
        stream_text(client, "routed")
    assert len(second.requests) == before  # no second deployment saw it: no duplicate output


def test_a_model_whose_only_upstream_refuses_connections_falls_back(
    client: openai.OpenAI, server: LiveServer
) -> None:
    request_id, text, _ = stream_text(client, "dead-then-cloud")
    assert text.split() == TEXT.split()
    row = server.usage_row(request_id)
    assert row["route"] == "fallback:routed" and row["model"] == "dead-then-cloud"


def test_non_streamed_answers_fail_over_too(
    client: openai.OpenAI, upstreams: tuple[Upstream, Upstream]
) -> None:
    first, _ = upstreams
    first.script(Behaviour(status=500))
    answer = client.chat.completions.create(
        model="routed", messages=[{"role": "user", "content": "count"}]
    )
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].message.content.split() == TEXT.split()
