"""The operator's platform overview (server/console/overview.py): every
organization's tokens and revenue per day and the top organizations and models, from the
roll-ups alone; no upstream cost shown where none was charged (tests of upstream cost:
test_console_overview_upstream.py); operators only; both languages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event

from openmaas.server.app import create_app
from openmaas.store.repositories import UsageRepository
from openmaas.store.schema import usage_records
from tests.server.test_console import console_settings
from tests.server.test_console_usage import record
from tests.support.app import app_state
from tests.support.people import World, make_world, sign_in
from tests.support.waiting import wait_until

Site = tuple[TestClient, World, dict[str, str]]


@pytest.fixture(scope="module")
def overview(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Usage of A and B rolled up, the records then deleted; the headers of an admin key
    (the admin API's view of the same)."""
    settings = console_settings(tmp_path_factory.mktemp("overview"), rollup_seconds=3600)
    world = asyncio.run(make_world(settings))
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        platform = app_state(client).platform
        repo = UsageRepository(platform.database)
        records = [record(n, world, days_ago=n % 3) for n in range(1, 11)]
        records += [record(n, world, org_b=True) for n in range(100, 104)]

        async def write_and_roll() -> str:
            for r in records:
                await repo.append(r)
            await platform.roller.roll()
            async with platform.database.begin() as conn:  # the page reads roll-ups only
                await conn.execute(delete(usage_records))
            admin = await platform.accounts_admin("test").issue_key(world.org_a, "ops", "admin")
            return admin.token

        assert client.portal is not None
        admin = {"Authorization": f"Bearer {client.portal.call(write_and_roll)}"}
        yield client, world, admin


def test_the_overview_sums_every_organization_from_the_rollups_alone(
    overview: Site,
) -> None:
    client, _world, _admin = overview
    sign_in(client, "ops@example.com")
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine = app_state(client).platform.database.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        page = client.get("/console/operator")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert page.status_code == 200, page.text
    assert not [s for s in statements if "usage_records" in s]  # no raw record read
    text = page.text
    assert 'data-figure="requests">14<' in text  # 10 of A and 4 of B
    assert 'data-figure="tokens">1,680<' in text  # 120 each (100 in, 20 out)
    assert 'data-figure="revenue-CNY">CN¥21.00<' in text  # CN¥1.50 each
    assert text.count('<svg class="chart"') == 2  # tokens, revenue in CNY
    assert 'id="ops-money-CNY-t">Revenue per day (CNY)<' in text  # no upstream cost
    orgs = text.split('data-overview="orgs"')[1].split("</table>")[0]
    assert orgs.index("org-a") < orgs.index("org-b")  # most tokens first
    models = text.split('data-overview="models"')[1].split("</table>")[0]
    assert "secret-model-of-b" in models and "glm-small" in models
    assert 'data-figure="upstream">–<' in text  # no upstream charged any of these
    narrow = client.get("/console/operator?since=2020-01-01&until=2020-01-02")
    assert 'data-figure="requests">0<' in narrow.text
    wrong = client.get("/console/operator?since=2020-01-05&until=2020-01-01")
    assert wrong.status_code == 400 and 'role="alert"' in wrong.text


def test_only_operators_see_it_in_both_languages(overview: Site) -> None:
    client, _world, _admin = overview
    for email in ("member@example.com", "viewer@example.com", "lonely@example.com"):
        sign_in(client, email)
        assert client.get("/console/operator").status_code == 403, email
    client.cookies.clear()
    assert client.get("/console/operator", follow_redirects=False).status_code == 303
    sign_in(client, "ops@example.com")
    client.cookies.set("openmaas_lang", "zh-CN", path="/console")
    text = client.get("/console/operator").text
    assert "平台概览" in text and "¥21.00" in text and "上游成本" in text
    client.cookies.set("openmaas_lang", "en", path="/console")
    assert "Platform overview" in client.get("/console/operator").text


def test_the_admin_api_answers_the_same_overview(overview: Site) -> None:
    """No back door: what the page shows, an admin key reads too (from the roll-ups)."""
    client, world, admin = overview
    found = client.get("/admin/v1/usage", headers=admin)
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["total"] == {
        "requests": 14,
        "tokens": 1680,
        "revenue": {"CNY": "21.000000"},
        "upstream_cost": {},
        "margin": {},
    }
    assert [o["org"] for o in body["top_orgs"]] == [world.org_a, world.org_b]
    assert len(body["days"]) == 30 and body["days"][-1]["requests"] > 0
    wrong = client.get("/admin/v1/usage?since=2020-01-05&until=2020-01-01", headers=admin)
    assert wrong.status_code == 400
