"""``GET /metrics``: off without a token, behind its own token, and counters that agree
exactly with the usage records and the ledger after a mixed run through the three protocols
(tests/e2e/test_metrics_live.py: the same with a live server, one and two workers)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import openmaas
from openmaas.accounts.admin import NewOrganization
from openmaas.billing.admin_bodies import NewFunds, NewPrice
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.server.telemetry.metrics import (
    MULTIPROC_ENV,
    Metrics,
    multiprocess_directory,
    worker_died,
)
from openmaas.settings import Settings
from tests.support.app import app_state
from tests.support.metrics import by, disagreements, samples

TOKEN = "scrape-me"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
FAKES = {
    "fake-echo": {"text": "one two three four"},
    "fake-free": {"text": "free words"},
    "fake-fail-first": {"fail_before_first_token": True},
    "fake-fail-mid": {"text": "a b c d e f", "fail_after_tokens": 3},
}


def _settings(tmp_path: Path, **more: object) -> Settings:
    return Settings(home=tmp_path / "home", embedded_models=False, fake_models=FAKES, **more)


async def _keys(settings: Settings) -> tuple[str, str]:
    """A funded organization's key and a key of one with no money; fake-echo is priced."""
    async with open_platform(settings) as platform:
        accounts, billing = platform.accounts_admin("test"), platform.billing_admin("test")
        payer = await accounts.create_org(NewOrganization(name="payer"))
        broke = await accounts.create_org(NewOrganization(name="broke"))
        price = {"model": "fake-echo", "input": "0.5", "cached_input": "0", "output": "1.25"}
        await billing.set_price(NewPrice.parse(price))
        await billing.top_up(payer.id, NewFunds.parse({"amount": "1"}))
        paying = await accounts.issue_key(payer.id, "app")
        poor = await accounts.issue_key(broke.id, "app")
    return paying.token, poor.token


def _chat(model: str, stream: bool = False) -> dict[str, object]:
    messages = [{"role": "user", "content": "three word prompt"}]
    return {"model": model, "messages": messages, "max_tokens": 50, "stream": stream}


def test_metrics_are_off_without_a_token(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/metrics", headers=SCRAPE).status_code == 404
        assert app_state(client).metrics is None  # nothing is counted either


def test_metrics_answer_only_their_token(tmp_path: Path) -> None:
    settings = _settings(tmp_path, metrics_token=TOKEN)
    key, _ = asyncio.run(_keys(settings))
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert (
            client.get("/metrics", headers={"Authorization": "Bearer scrape-m"}).status_code == 401
        )
        reply = client.get("/metrics", headers=SCRAPE)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain; version=")
        found = samples(reply.text)
        assert found[
            ("openmaas_deployment_up", (("deployment", "fake-echo"), ("model", "fake-echo")))
        ]
        assert ("openmaas_usage_writer_backlog", ()) in found
        # a model the catalog no longer serves leaves the deployment gauges
        catalog = app_state(client).catalog
        catalog.replace([m for m in catalog.list() if m.name != "fake-echo"])
        found = samples(client.get("/metrics", headers=SCRAPE).text)
        up = by(found, "openmaas_deployment_up", "model")
        assert ("fake-echo",) not in up and up[("fake-free",)] == 1


def test_counters_agree_with_usage_records_and_ledger_across_protocols(tmp_path: Path) -> None:
    settings = _settings(tmp_path, metrics_token=TOKEN)
    key, poor = asyncio.run(_keys(settings))
    auth = {"Authorization": f"Bearer {key}"}
    anthropic = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    messages = {
        "model": "fake-echo",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    zhipu = "/api/paas/v4/chat/completions"
    with TestClient(create_app(settings)) as client:
        statuses = [
            client.post("/v1/chat/completions", json=_chat("fake-echo"), headers=auth),
            client.post("/v1/chat/completions", json=_chat("fake-echo", True), headers=auth),
            client.post("/v1/chat/completions", json=_chat("fake-free"), headers=auth),
            client.post("/v1/messages", json=messages, headers=anthropic),
            client.post("/v1/messages", json={**messages, "stream": True}, headers=anthropic),
            client.post(zhipu, json=_chat("fake-echo"), headers=auth),
            client.post(zhipu, json=_chat("fake-free", True), headers=auth),
            # refused: an unknown model, an organization without money
            client.post("/v1/chat/completions", json=_chat("no-such-model"), headers=auth),
            client.post(
                zhipu, json=_chat("fake-echo"), headers={"Authorization": f"Bearer {poor}"}
            ),
            # the engine fails: before its first token, and mid-stream
            client.post("/v1/chat/completions", json=_chat("fake-fail-first"), headers=auth),
            client.post(zhipu, json=_chat("fake-fail-mid", True), headers=auth),
        ]
        assert [r.status_code for r in statuses][:7] == [200] * 7
        # (Zhipu answers an unpaid request 429, as its own API does)
        assert statuses[7].status_code == 404 and statuses[8].status_code == 429
        text = client.get("/metrics", headers=SCRAPE).text
    assert disagreements(text, settings.home / "openmaas.db") == []
    found = samples(text)
    requests = by(found, "openmaas_requests_total", "protocol", "termination")
    assert requests == {
        ("openai", "finished"): 3,
        ("anthropic", "finished"): 2,
        ("zhipu", "finished"): 2,
        ("openai", "refused"): 1,
        ("zhipu", "refused"): 1,
        ("openai", "engine_error"): 1,
        ("zhipu", "engine_error"): 1,
    }
    refused = by(found, "openmaas_requests_refused_total", "model", "reason")
    assert refused == {("", "model_not_found"): 1, ("fake-echo", "insufficient_balance"): 1}
    assert by(found, "openmaas_revenue_micros_total", "currency")[("CNY",)] > 0
    assert by(found, "openmaas_tokens_total", "kind")[("output",)] > 0
    latency = by(found, "openmaas_request_duration_seconds_count", "protocol")
    assert latency == {("openai",): 4, ("anthropic",): 2, ("zhipu",): 3}


_WORKER = """
import os
from openmaas.server.telemetry.metrics import Metrics, metrics_from_environment
metrics = metrics_from_environment()
assert metrics.multiprocess_dir is not None
metrics.backlog.set(3)
metrics.requests.labels("openai", "m", "finished").inc(2)
print(os.getpid())
"""


def test_workers_share_one_scrape_and_a_dead_one_leaves_the_live_gauges(tmp_path: Path) -> None:
    """Each worker writes its values into the run's directory; a scrape sums them. A worker
    that died keeps its counts in the sums, and its gauges leave once it is marked dead."""
    home = tmp_path / "home"
    over = multiprocess_directory(home, run=2**22 + 7)  # a run whose supervisor is gone
    (over / "counter_1.db").write_bytes(b"from an earlier run")
    directory = multiprocess_directory(home)  # this run's: new, empty, the old one gone
    assert list((home / "metrics").iterdir()) == [directory]
    assert list(directory.iterdir()) == []
    source = str(Path(openmaas.__file__).parents[1])
    env = {**os.environ, MULTIPROC_ENV: str(directory), "PYTHONPATH": source}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", _WORKER], env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(2)
    ]
    scrape = Metrics(multiprocess_dir=directory)
    found = samples(scrape.exposition().decode())
    assert by(found, "openmaas_requests_total", "termination") == {("finished",): 4}
    assert found[("openmaas_usage_writer_backlog", ())] == 6
    worker_died(directory, pids[0])
    found = samples(scrape.exposition().decode())
    assert by(found, "openmaas_requests_total", "termination") == {("finished",): 4}
    assert found[("openmaas_usage_writer_backlog", ())] == 3


def test_nothing_logs_a_prompt_or_a_completion_with_metrics_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, metrics_token=TOKEN)
    key, _ = asyncio.run(_keys(settings))
    prompt = "a prompt nobody may log 7f3a"
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": prompt}]}
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        for stream in (False, True):
            reply = client.post(
                "/v1/chat/completions", json={**body, "stream": stream}, headers=auth
            )
            assert reply.status_code == 200
        assert client.get("/metrics", headers=SCRAPE).status_code == 200
    assert any(r.name.startswith("openmaas") for r in caplog.records)  # the logs were seen
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert prompt not in logged and FAKES["fake-echo"]["text"] not in logged
