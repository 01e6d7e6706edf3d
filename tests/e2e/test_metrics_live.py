"""``/metrics`` of a live server agrees exactly with its usage records and its ledger after
a mixed run through the OpenAI, Anthropic and Zhipu APIs (successes, refusals, a client that
goes away, upstreams that fail), with one process and with two workers (one scrape of
either worker sees both: prometheus_client's multiprocess mode, docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.live import LiveServer
from tests.engines.upstream import Behaviour, Upstream
from tests.support.metrics import by, disagreements, samples
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

TOKEN = "live-scrape-token"
WORKER_HEADER = "x-openmaas-worker"
ZHIPU = "/api/paas/v4/chat/completions"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with (
        Upstream(Behaviour(text="one two three four five")) as ok,
        Upstream(Behaviour(text=" ".join(f"w{i}" for i in range(300)), token_delay=0.05)) as slow,
        Upstream(Behaviour(text="a b c d e f", drop_after_tokens=2)) as drop,
        Upstream(Behaviour(status=500)) as broken,
    ):
        yield {"up-ok": ok, "up-slow": slow, "up-drop": drop, "up-500": broken}


def _catalog(upstreams: dict[str, Upstream]) -> str:
    lines = ["models:"]
    for name, upstream in upstreams.items():
        lines += [
            f"  - name: {name}",
            "    deployments:",
            f'      - {{id: {name}-1, engine: openai, base_url: "{upstream.base_url}", '
            "upstream_model: m, data_class: local}",
        ]
    return "\n".join(lines) + "\n"


def _server(
    tmp_path: Path, upstreams: dict[str, Upstream], workers: int
) -> tuple[LiveServer, str, str]:
    """A server with up-ok priced, a funded organization's key and a key of one without money."""
    live = LiveServer(
        tmp_path / "home",
        catalog=_catalog(upstreams),
        workers=workers,
        embedded_models="false",
        metrics_token=TOKEN,
    )
    live.home.mkdir(parents=True)
    live.cli("orgs", "create", "payer")
    live.cli("orgs", "create", "broke")
    live.cli("billing", "topup", "payer", "10")
    live.cli("prices", "set", "up-ok", "--input", "1", "--cached-input", "0.5", "--output", "3")
    payer = live.new_key("payer")
    broke = live.new_key("broke")
    return live.start(), payer, broke


def _chat(model: str, stream: bool = False) -> dict[str, object]:
    messages = [{"role": "user", "content": "count"}]
    body: dict[str, object] = {"model": model, "messages": messages, "max_tokens": 400}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def _mixed_run(live: LiveServer, key: str, broke: str, workers: int) -> set[int]:
    """Every kind of request through the three protocols; the workers that answered."""
    answered: set[int] = set()
    auth = {"Authorization": f"Bearer {key}"}
    anthropic = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    messages = {"model": "up-ok", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    # A connection per request: the kernel spreads connections, not requests, over workers.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=live.base_url, timeout=60, limits=fresh) as client:

        def post(path: str, body: dict[str, object], headers: dict[str, str]) -> httpx.Response:
            reply = client.post(path, json=body, headers=headers)
            answered.add(int(reply.headers.get(WORKER_HEADER, 0)))
            return reply

        # successes, until each worker has answered some (the kernel picks the worker)
        for i in range(60):
            if i >= 3 and len(answered) >= workers:
                break
            assert post("/v1/chat/completions", _chat("up-ok"), auth).status_code == 200
        assert post("/v1/chat/completions", _chat("up-ok", True), auth).status_code == 200
        assert post("/v1/messages", messages, anthropic).status_code == 200
        assert post("/v1/messages", {**messages, "stream": True}, anthropic).status_code == 200
        assert post(ZHIPU, _chat("up-ok"), auth).status_code == 200
        assert post(ZHIPU, _chat("up-ok", True), auth).status_code == 200
        # refusals: a model nobody serves, an organization without money
        assert post("/v1/chat/completions", _chat("no-such-model"), auth).status_code == 404
        poor = {"x-api-key": broke, "anthropic-version": "2023-06-01"}
        assert post("/v1/messages", messages, poor).status_code == 402
        # upstreams that fail: one answers 500, one drops the connection mid-stream
        assert post("/v1/chat/completions", _chat("up-500"), auth).status_code >= 500
        assert post(ZHIPU, _chat("up-drop", True), auth).status_code == 200  # cut inside
        # a client that goes away mid-stream
        with client.stream(
            "POST", "/v1/chat/completions", json=_chat("up-slow", True), headers=auth
        ) as reply:
            request_id = reply.headers["x-request-id"]
            lines = 0
            for line in reply.iter_lines():
                lines += line.startswith("data: ")
                if lines == 3:
                    break
    assert live.usage_row(request_id)["termination"] == "client_disconnected"
    return answered


def _scrape(live: LiveServer) -> httpx.Response:
    reply = httpx.get(f"{live.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_agree_with_usage_and_ledger(
    tmp_path: Path, upstreams: dict[str, Upstream], workers: int
) -> None:
    live, key, broke = _server(tmp_path, upstreams, workers)
    try:
        answered = _mixed_run(live, key, broke, workers)
        database = live.home / "openmaas.db"
        # Counted as each record is written: the last one (the client that went away) a
        # moment after its row is visible.
        wait_until(
            lambda: not disagreements(_scrape(live).text, database),
            timeout=10,
            what="the counters to agree with the usage records and the ledger",
        )
        scrapes = [_scrape(live) for _ in range(6)]
        for reply in scrapes:  # whichever worker answers sees every worker's counts
            assert disagreements(reply.text, database) == []
        found = samples(scrapes[-1].text)
        if workers == 2:  # this run's directory of the workers' metrics, only it
            assert [d.name for d in (live.home / "metrics").iterdir()] == [str(live.process.pid)]
    finally:
        live.stop()
    if workers == 2:
        assert len(answered) == 2
        assert list((live.home / "metrics").iterdir()) == []  # removed as the run ended
    terminations = by(found, "openmaas_requests_total", "termination")
    assert terminations[("refused",)] == 2
    assert terminations[("client_disconnected",)] == 1
    assert terminations[("finished",)] >= 7
    assert by(found, "openmaas_requests_total", "protocol").keys() == {
        ("openai",),
        ("anthropic",),
        ("zhipu",),
    }
    assert by(found, "openmaas_revenue_micros_total", "currency")[("CNY",)] > 0
