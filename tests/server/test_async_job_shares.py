"""Async jobs (Zhipu's ``/async/chat/completions``) share engines and limits with
synchronous requests (issue 12): one organization's submits cannot fill a model's slots and
queue so that another organization's synchronous request is refused; an organization has at
most ``async_jobs_per_org`` jobs unfinished, and a submit over that (or over its tier's
limits) is refused at submit, with nothing stored or charged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.billing.admin_bodies import TierLimits
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from openmaas.store.schema import async_jobs, usage_records
from tests.support.app import count_rows, fake_engine
from tests.support.orgs import member_keys
from tests.support.waiting import wait_until

MODEL = "fake-few-slots"
HANGS = {"text": "a b", "slots": 2, "queue": 2, "first_token_delay": 3600}
QUICK = FakeScript(text="a b", slots=2, queue=2)
PER_ORG = 4
SUBMIT, RESULT, CHAT = (
    "/api/paas/v4/async/chat/completions",
    "/api/paas/v4/async-result",
    "/api/paas/v4/chat/completions",
)
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def _member_keys(settings: Settings) -> list[str]:
    """The submitter and the bystander have no tier; "limited" two requests a minute."""
    async with open_platform(settings) as platform:
        await platform.billing_admin("test").set_tier("two-a-minute", TierLimits.parse({"rpm": 2}))
    names = ("submitter", "bystander", "limited")
    return await member_keys(settings, *names, tiers={"limited": "two-a-minute"})


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, str]]:
    for client, submitter, bystander, _ in _site(tmp_path_factory):
        yield client, submitter, bystander


Site = tuple[TestClient, str, str, str]


@pytest.fixture
def limited_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from _site(tmp_path_factory)


def _site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("async-shares") / "home"
    settings = Settings(
        home=home,
        embedded_models=False,
        fake_models={MODEL: HANGS},
        async_jobs_per_org=PER_ORG,
        billing_refresh_seconds=0,
    )
    submitter, bystander, limited = asyncio.run(_member_keys(settings))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, submitter, bystander, limited


def _fake(client: TestClient) -> FakeEngine:
    return fake_engine(client, MODEL)


def _post(client: TestClient, key: str, path: str, body: dict[str, Any] = BODY) -> Any:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


def _submit_all(client: TestClient, key: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        reply = _post(client, key, SUBMIT)
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["id"])
    return ids


def test_one_orgs_async_jobs_leave_room_for_anothers_synchronous_request(
    site: tuple[TestClient, str, str],
) -> None:
    client, submitter, bystander = site
    _submit_all(client, submitter, PER_ORG)  # as many as slots + queue
    fake = _fake(client)
    wait_until(lambda: fake.stats.streams_started > 0, what="a job to reach the engine")
    fake.script = QUICK  # the jobs started hang; what comes next is answered at once
    served = _post(client, bystander, CHAT)
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["content"] == "a b"


def _job(client: TestClient, key: str, job_id: str) -> dict[str, Any]:
    reply = client.get(f"{RESULT}/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _finished(client: TestClient, key: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        body = _job(client, key, job_id)
        return body if body["task_status"] != "PROCESSING" else {}

    return wait_until(done, what=f"job {job_id} to finish")


def test_a_submit_over_the_orgs_jobs_is_refused_at_submit_with_nothing_stored_or_charged(
    site: tuple[TestClient, str, str],
) -> None:
    client, submitter, bystander = site
    _submit_all(client, submitter, PER_ORG)
    jobs, records = count_rows(client, async_jobs), count_rows(client, usage_records)
    refused = _post(client, submitter, SUBMIT)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "1302"
    assert f"{PER_ORG} async jobs" in error["message"]
    assert "OPENMAAS_ASYNC_JOBS_PER_ORG" in error["message"]  # what to change, or wait
    assert int(refused.headers["retry-after"]) >= 1
    assert (count_rows(client, async_jobs), count_rows(client, usage_records)) == (jobs, records)
    assert _post(client, bystander, SUBMIT).status_code == 200  # another org is unaffected


def test_finished_jobs_free_their_places(site: tuple[TestClient, str, str]) -> None:
    client, submitter, _ = site
    _fake(client).script = QUICK
    for job_id in _submit_all(client, submitter, PER_ORG):
        assert _finished(client, submitter, job_id)["task_status"] == "SUCCESS"
    _submit_all(client, submitter, PER_ORG)  # as many again: none of the finished counts


def test_async_jobs_count_against_the_tier_once_and_are_refused_at_submit_over_it(
    limited_site: Site,
) -> None:
    client, _, _, limited = limited_site
    _fake(client).script = QUICK
    ids = _submit_all(client, limited, 2)  # the tier admits two requests a minute
    for job_id in ids:  # admitted at submit, not admitted again as they run
        done = _finished(client, limited, job_id)
        assert done["task_status"] == "SUCCESS", done
    jobs, records = count_rows(client, async_jobs), count_rows(client, usage_records)
    refused = _post(client, limited, SUBMIT)  # the third: refused now, not failed later
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "1302"
    assert (count_rows(client, async_jobs), count_rows(client, usage_records)) == (jobs, records)
