"""Zhipu async jobs (``/async/chat/completions`` + ``/async-result/{id}``) on two gateway
processes sharing one database: a job submitted through one is polled through the other,
only by its organization; it survives a restart of the process that ran it; and a job
whose process was killed is failed, with a clear error, by the survivor's recovery; an
organization's unfinished jobs are counted across both (``async_jobs_per_org``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.live import LiveServer
from tests.support.waiting import wait_until

QUICK = "fake-quick"
SLOW = "fake-very-slow"  # ~100 s: killed long before it ends
SETTINGS: dict[str, Any] = {
    "fake_models": {
        QUICK: {"text": "one two three four five"},
        SLOW: {"text": " ".join(f"w{i}" for i in range(1000)), "token_delay": 0.1},
    },
    "embedded_models": "false",
    "recovery_seconds": "0.5",  # survivors look for the dead twice a second
    "async_jobs_per_org": "2",
}
USER = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers on one data directory and its SQLite database, each on its own port."""
    home = tmp_path / "home"
    first = LiveServer(home, logs=tmp_path / "a", **SETTINGS).start()
    second = LiveServer(home, logs=tmp_path / "b", **SETTINGS).start()
    try:
        yield first, second
    finally:
        for server in (first, second):
            if server.process is not None and server.process.poll() is None:
                server.kill()


def zhipu(live: LiveServer, key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{live.base_url}/api/paas/v4",
        headers={"Authorization": f"Bearer {key or live.admin_key}"},
        timeout=30,
    )


def submit(live: LiveServer, model: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": USER}
    if request_id is not None:
        body["request_id"] = request_id
    with zhipu(live) as client:
        response = client.post("/async/chat/completions", json=body)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def result(live: LiveServer, job_id: str, key: str | None = None) -> httpx.Response:
    with zhipu(live, key) as client:
        return client.get(f"/async-result/{job_id}")


def finished(live: LiveServer, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = result(live, job_id)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["task_status"] != "PROCESSING" else None

    return wait_until(done, timeout=60, what=f"job {job_id} to finish", interval=0.1)


def test_a_job_submitted_through_one_gateway_is_polled_through_the_other(
    gateways: tuple[LiveServer, LiveServer],
) -> None:
    first, second = gateways
    created = submit(first, QUICK, request_id="client-1")
    assert set(created) == {"id", "request_id", "model", "task_status"}
    assert created["request_id"] == "client-1" and created["model"] == QUICK
    assert created["task_status"] == "PROCESSING"
    done = finished(second, created["id"])
    assert done["task_status"] == "SUCCESS"
    assert set(done) == {"id", "request_id", "model", "task_status", "created", "choices", "usage"}
    assert done["id"] == created["id"] and done["request_id"] == "client-1"
    assert done["choices"][0]["message"]["content"] == "one two three four five"
    assert done["usage"]["completion_tokens"] == 5
    assert result(first, created["id"]).json() == done  # the same answer from either
    assert second.usage_row(created["id"])["completion_tokens"] == 5

    # Only its organization sees it, through either gateway.
    first.cli("orgs", "create", "other-org")
    stranger = first.new_key(org="other-org", name="stranger")
    for live in (first, second):
        response = result(live, created["id"], key=stranger)
        assert response.status_code == 404 and response.json()["error"]["code"] == "1222"
    missing = result(second, "01NOSUCHJOB0000000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "1222"


def test_a_finished_job_survives_a_restart(gateways: tuple[LiveServer, LiveServer]) -> None:
    first, _ = gateways
    created = submit(first, QUICK)
    done = finished(first, created["id"])
    first.restart()
    assert result(first, created["id"]).json() == done


def test_the_job_of_a_killed_gateway_fails_with_a_clear_error(
    gateways: tuple[LiveServer, LiveServer],
) -> None:
    doomed, survivor = gateways
    created = submit(doomed, SLOW)
    wait_until(
        lambda: doomed.rows("SELECT 1 FROM inflight WHERE request_id = ?", created["id"]),
        timeout=30,
        what="the job's generation to start",
    )
    assert result(survivor, created["id"]).json()["task_status"] == "PROCESSING"
    doomed.kill()
    failed = finished(survivor, created["id"])  # the survivor's recovery fails it
    assert failed["task_status"] == "FAIL"
    assert failed["error"]["code"] == "500"
    assert "ended before the job finished" in failed["error"]["message"]
    assert set(failed) == {"id", "request_id", "model", "task_status", "created", "error"}
    assert survivor.usage_row(created["id"])["termination"] == "gateway_killed"


def test_an_orgs_jobs_are_counted_across_gateways(
    gateways: tuple[LiveServer, LiveServer],
) -> None:
    first, second = gateways
    submit(first, SLOW)  # each runs for long after this test
    submit(second, SLOW)
    for live in (first, second):  # the organization has its two, whichever process took them
        with zhipu(live) as client:
            refused = client.post(
                "/async/chat/completions", json={"model": QUICK, "messages": USER}
            )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "1302"
        assert "OPENMAAS_ASYNC_JOBS_PER_ORG=2" in refused.json()["error"]["message"]
    first.cli("orgs", "create", "other-org")
    other = first.new_key(org="other-org", name="other")
    with zhipu(second, other) as client:  # another organization is unaffected
        created = client.post("/async/chat/completions", json={"model": QUICK, "messages": USER})
    assert created.status_code == 200, created.text
