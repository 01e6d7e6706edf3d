"""Fair sharing of an engine's slots between organizations, through the HTTP API (issue 12,
docs/limits.md "Fair sharing"): one organization's backlog neither fills the whole queue
nor makes another organization's request wait behind all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.billing.admin_bodies import TermsChange, TierLimits
from openmaas.core.types import RoutingHints
from openmaas.engines.fake import FakeEngine
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.app import fake_engine
from tests.support.orgs import member_keys
from tests.support.waiting import wait_until

MODEL = "fake-one-slot"
SLOT = {"text": "ok", "slots": 1, "queue": 8}  # one organization may have 4 waiting
CHAT = "/v1/chat/completions"

Site = tuple[TestClient, str, str]


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("fair") / "home"
    settings = Settings(home=home, embedded_models=False, fake_models={MODEL: SLOT})
    a, b = asyncio.run(member_keys(settings, "a-corp", "b-corp"))
    with TestClient(create_app(settings)) as client:
        yield client, a, b


def _chat(client: TestClient, key: str, text: str) -> Any:
    """The response of a chat request of ``text`` with ``key``."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    return client.post(CHAT, json=body, headers={"Authorization": f"Bearer {key}"})


def _until_in_flight(fake: FakeEngine, count: int) -> None:
    wait_until(lambda: fake.capacity().in_flight == count, what=f"{count} requests in flight")


def test_another_organization_is_served_ahead_of_one_organizations_backlog(site: Site) -> None:
    client, a, b = site
    fake = fake_engine(client, MODEL)
    gate = asyncio.Event()
    fake.gates["hold"] = gate  # A's first request holds the one slot until the test lets go
    assert client.portal is not None
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies: dict[str, Future[Any]] = {}
        replies["hold"] = pool.submit(_chat, client, a, "hold")
        wait_until(lambda: fake.stats.started == ["hold"], what="A's first request to run")
        for i in range(1, 5):  # one after the other: they wait in this order
            replies[f"a{i}"] = pool.submit(_chat, client, a, f"a{i}")
            _until_in_flight(fake, 1 + i)

        refused = _chat(client, a, "a5")  # over A's share of the queue
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "engine_overloaded"

        replies["b"] = pool.submit(_chat, client, b, "b")  # B is admitted all the same
        wait_until(lambda: fake.capacity().in_flight == 6, what="B's request to queue")
        client.portal.call(gate.set)
        answers = {name: reply.result(timeout=30) for name, reply in replies.items()}

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 200)
    # B arrived last, and ran right after the request holding the slot: before A's backlog.
    assert fake.stats.started == ["hold", "b", "a1", "a2", "a3", "a4"]
    assert fake.capacity().in_flight == 0


def test_the_queue_share_is_a_setting(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("fair-share") / "home"
    fake: dict[str, Any] = {**SLOT, "queue": 4}
    settings = Settings(
        home=home, embedded_models=False, fake_models={MODEL: fake}, engine_queue_share=1.0
    )
    (a,) = asyncio.run(member_keys(settings, "a-corp"))
    with TestClient(create_app(settings)) as client:
        engine = fake_engine(client, MODEL)
        gate = asyncio.Event()
        engine.gates["hold"] = gate
        assert client.portal is not None
        with ThreadPoolExecutor(max_workers=5) as pool:
            replies = [pool.submit(_chat, client, a, "hold")]
            wait_until(lambda: engine.stats.started == ["hold"], what="the first to run")
            replies += [pool.submit(_chat, client, a, f"a{i}") for i in range(4)]
            # a share of 1: one organization may fill the whole queue
            wait_until(lambda: engine.capacity().in_flight == 5, what="the queue to fill")
            assert _chat(client, a, "over").status_code == 429
            client.portal.call(gate.set)
            assert [r.result(timeout=30).status_code for r in replies] == [200] * 5


def test_a_request_carries_its_organizations_tier_weight_to_the_engine(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("fair-weight") / "home"
    settings = Settings(
        home=home, embedded_models=False, fake_models={MODEL: SLOT}, billing_refresh_seconds=0
    )
    heavy, light = asyncio.run(_weighted_keys(settings))
    with TestClient(create_app(settings)) as client:
        fake = fake_engine(client, MODEL)
        seen: dict[str, RoutingHints] = {}
        for name, key in (("heavy", heavy), ("light", light)):
            assert _chat(client, key, name).status_code == 200
            assert fake.stats.last_routing is not None
            seen[name] = fake.stats.last_routing
    assert (seen["heavy"].share_weight, seen["light"].share_weight) == (3, 1)
    assert seen["heavy"].cache_scope != seen["light"].cache_scope  # two fairness keys


async def _weighted_keys(settings: Settings) -> tuple[str, str]:
    """Two organizations' member keys: the first's tier weighs 3, the second has no tier."""
    heavy, light = await member_keys(settings, "heavy-corp", "light-corp")
    async with open_platform(settings) as platform:
        billing = platform.billing_admin("test")
        await billing.set_tier("Heavy", TierLimits.parse({"weight": 3}))
        await billing.set_org("heavy-corp", TermsChange.parse({"tier": "Heavy"}))
    return heavy, light
