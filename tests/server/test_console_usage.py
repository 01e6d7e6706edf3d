"""The console's usage and billing pages (server/console/usage.py): charts and CSV
from the roll-ups alone, filters, both languages, and only the organization's own people."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event

from openmaas.billing.admin_bodies import NewFunds
from openmaas.core.money import Currency, Money
from openmaas.core.rollups import bucket_bound, bucket_of
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.store.repositories import UsageRepository
from openmaas.store.schema import usage_records
from tests.server.test_console import console_settings
from tests.support.app import app_state
from tests.support.people import World, make_world, sign_in
from tests.support.waiting import wait_until

DAY_MS = 86_400_000
TOP_UPS = 55  # more statement lines than one page holds


def record(n: int, world: World, *, org_b: bool = False, days_ago: int = 0) -> UsageRecord:
    now = int(time.time() * 1000)
    return UsageRecord(
        request_id=f"req_usage_{n:04d}",
        key_id=world.key_b if org_b else world.key_a,
        org_id=world.org_b if org_b else world.org_a,
        model="secret-model-of-b" if org_b else ("fake-chat" if n % 2 else "glm-small"),
        endpoint="/v1/chat/completions",
        usage=Usage(100, 10, 20, reasoning_tokens=5),
        termination=Termination.ENGINE_ERROR if n % 5 == 0 else Termination.FINISHED,
        started_at_ms=now - days_ago * DAY_MS - 1000,
        ttft_ms=40,
        latency_ms=300,
        cost=Money(1_500_000, Currency.CNY),
    )


@pytest.fixture(scope="module")
def usage_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, World]]:
    settings = console_settings(tmp_path_factory.mktemp("usage"), rollup_seconds=3600)
    world = asyncio.run(make_world(settings))

    async def statement_lines() -> None:
        async with open_platform(settings) as platform:
            billing = platform.billing_admin("cli:test")
            for _ in range(TOP_UPS):
                await billing.top_up(world.org_a, NewFunds.parse({"amount": "1"}))

    asyncio.run(statement_lines())
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        platform = app_state(client).platform
        repo = UsageRepository(platform.database)
        records = [record(n, world, days_ago=n % 3) for n in range(1, 31)]
        records += [record(n, world, org_b=True) for n in range(100, 104)]

        async def write_and_roll() -> None:
            for r in records:
                await repo.append(r)
            await platform.roller.roll()
            async with platform.database.begin() as conn:  # the page reads roll-ups only
                await conn.execute(delete(usage_records))

        assert client.portal is not None
        client.portal.call(write_and_roll)
        yield client, world


def _usage(client: TestClient, world: World, query: str = "") -> str:
    page = client.get(f"/console/orgs/{world.org_a}/usage{query}")
    assert page.status_code == 200, page.text
    return page.text


def test_the_usage_page_shows_the_rolled_up_usage_with_no_usage_record_left(
    usage_console: tuple[TestClient, World],
) -> None:
    client, world = usage_console
    sign_in(client, "viewer@example.com")
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine = app_state(client).platform.database.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        text = _usage(client, world)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert not [s for s in statements if "usage_records" in s]  # no raw record read
    assert 'data-figure="requests">30<' in text
    assert 'data-figure="errors">6<' in text  # every fifth ended in an engine error
    assert 'data-figure="input">3,000<' in text
    assert 'data-figure="cost">CN¥45.00<' in text
    assert text.count('<svg class="chart"') == 5 and 'role="img"' in text
    assert "<table" in text and "glm-small" in text and "fake-chat" in text
    assert "secret-model-of-b" not in text  # another organization's usage


def test_filters_by_model_key_and_period(usage_console: tuple[TestClient, World]) -> None:
    client, world = usage_console
    sign_in(client, "member@example.com")
    one_model = _usage(client, world, "?model=glm-small")
    assert 'data-figure="requests">15<' in one_model
    assert '<option value="fake-chat">' in one_model  # the other model stays a choice
    assert 'data-figure="requests">0<' in _usage(client, world, "?key=not-a-key-of-a&model=x")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    only_today = _usage(client, world, f"?since={today}&until={today}")
    assert 'data-figure="requests">10<' in only_today  # n % 3 == 0: ten of thirty
    bad = client.get(f"/console/orgs/{world.org_a}/usage?since=2026-13-01")
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text


def test_the_csv_has_the_rows_of_the_charts(usage_console: tuple[TestClient, World]) -> None:
    client, world = usage_console
    sign_in(client, "member@example.com")
    answer = client.get(f"/console/orgs/{world.org_a}/usage.csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert sum(int(r["requests"]) for r in rows) == 30
    assert {r["model"] for r in rows} == {"fake-chat", "glm-small"}
    assert {r["key_id"] for r in rows} == {world.key_a}
    assert sum(float(r["cost"]) for r in rows) == 45.0
    # read as the upper bound of the bucket that holds 300 ms (and 40 ms)
    assert {r["latency_p50_ms"] for r in rows} == {str(bucket_bound(bucket_of(300)))}
    assert {r["ttft_p95_ms"] for r in rows} == {str(bucket_bound(bucket_of(40)))}
    filtered = client.get(f"/console/orgs/{world.org_a}/usage.csv?model=fake-chat")
    assert {r["model"] for r in csv.DictReader(io.StringIO(filtered.text))} == {"fake-chat"}


def test_both_languages(usage_console: tuple[TestClient, World]) -> None:
    client, world = usage_console
    sign_in(client, "member@example.com")
    client.cookies.set("openmaas_lang", "zh-CN", path="/console")
    text = _usage(client, world)
    assert "每日 tokens（按模型）" in text and 'data-figure="cost">¥45.00<' in text
    assert "年" in text and "月" in text  # dates as Chinese writes them
    billing = client.get(f"/console/orgs/{world.org_a}/billing")
    assert "账单明细" in billing.text and "¥1,289.50" in billing.text
    client.cookies.set("openmaas_lang", "en", path="/console")
    assert "Tokens per day, by model" in _usage(client, world)


def test_the_billing_page_shows_balance_packs_and_a_paged_statement(
    usage_console: tuple[TestClient, World],
) -> None:
    client, world = usage_console
    sign_in(client, "viewer@example.com")
    page = client.get(f"/console/orgs/{world.org_a}/billing")
    assert page.status_code == 200
    assert 'data-figure="available">CN¥1,289.50<' in page.text  # 1,234.50 and 55 × 1
    assert "No resource packs." in page.text
    assert page.text.count("<tr><td>") == 50 and "Page 1 of 2" in page.text
    second = client.get(f"/console/orgs/{world.org_a}/billing?page=2")
    assert second.text.count("<tr><td>") == TOP_UPS + 1 - 50  # and the first top-up
    assert "Page 2 of 2" in second.text


@pytest.mark.parametrize("path", ["usage", "usage.csv", "billing"])
def test_another_organizations_people_never_see_it(
    usage_console: tuple[TestClient, World], path: str
) -> None:
    client, world = usage_console
    for person in ("bob@example.com", "lonely@example.com"):
        sign_in(client, person)
        answer = client.get(f"/console/orgs/{world.org_a}/{path}")
        assert answer.status_code == 404, person
        assert "CN¥" not in answer.text and "glm-small" not in answer.text
    client.cookies.clear()
    assert (
        client.get(f"/console/orgs/{world.org_a}/{path}", follow_redirects=False).status_code == 303
    )
    sign_in(client, "bob@example.com")  # B's own: none of A's
    own = client.get(f"/console/orgs/{world.org_b}/{path}")
    assert own.status_code == 200 and "glm-small" not in own.text
