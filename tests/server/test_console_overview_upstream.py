"""Upstream cost beside revenue on the operator's overview and in ``GET /admin/v1/usage``:
priced requests served by two OpenAI-compatible upstreams (a real HTTP server), one charging
us in USD and one in CNY, for an organization that pays in CNY. Rolled up, each currency's
upstream cost is shown apart (never added to the other), the margin only where revenue and
upstream cost share a currency; rolling again adds nothing; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from openmaas.billing.admin_bodies import NewPrice
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from openmaas.store.schema import usage_records
from tests.engines.upstream import Behaviour, Upstream
from tests.server.test_console import FAKES
from tests.support.app import app_state
from tests.support.people import make_world, sign_in
from tests.support.waiting import wait_until

# per million tokens: what each upstream charges us, and what the organization pays (CNY)
UPSTREAMS = {
    "gpt-usd": ("USD", "1000", "2000", 1000, 2000),  # currency, input, output, micros/token
    "glm-cny": ("CNY", "500", "1500", 500, 1500),
}
PRICES = {"gpt-usd": ("3000", "6000", 3000, 6000), "glm-cny": ("800", "2000", 800, 2000)}
REQUESTS = {"gpt-usd": 2, "glm-cny": 3}


def catalog(base_url: str) -> str:
    models = []
    for model, (currency, into, out, _i, _o) in UPSTREAMS.items():
        models.append(
            f"""\
  - name: {model}
    deployments:
      - id: {model}-cloud
        engine: openai
        base_url: {base_url}
        upstream_model: {model}
        price: {{input: "{into}", output: "{out}", currency: {currency}}}
"""
        )
    return "models:\n" + "".join(models)


@dataclass
class Site:
    client: TestClient
    admin: dict[str, str]  # an admin key's headers
    tokens: dict[str, tuple[int, int]]  # model -> (prompt, completion) tokens of all requests
    roll: Callable[[], int]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("overview-upstream")
    if request.param == "sqlite":
        url = "sqlite+aiosqlite:///" + str(tmp / "openmaas.db")
    else:
        url = request.getfixturevalue("new_pg_database")()
    with Upstream(Behaviour(text="four words from upstream")) as upstream:
        (tmp / "catalog.yaml").write_text(catalog(upstream.base_url))
        settings = Settings(
            home=tmp / "home",
            database_url=url,
            embedded_models=False,
            fake_models=FAKES,
            catalog_file=tmp / "catalog.yaml",
            rollup_seconds=3600,
        )
        world = asyncio.run(make_world(settings))
        member, admin = asyncio.run(_keys(settings, world.org_a))
        with TestClient(create_app(settings), base_url="https://testserver") as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, what="the upstreams")
            tokens = {}
            for model, count in REQUESTS.items():
                prompt = completion = 0
                for _ in range(count):
                    answer = client.post(
                        "/v1/chat/completions",
                        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {member}"},
                    )
                    assert answer.status_code == 200, answer.text
                    prompt += answer.json()["usage"]["prompt_tokens"]
                    completion += answer.json()["usage"]["completion_tokens"]
                tokens[model] = (prompt, completion)
            platform = app_state(client).platform
            assert client.portal is not None
            portal = client.portal

            def roll() -> int:
                return portal.call(platform.roller.roll)

            assert roll() == sum(REQUESTS.values())

            async def forget_records() -> None:  # what is shown comes from the roll-ups
                async with platform.database.begin() as conn:
                    await conn.execute(delete(usage_records))

            portal.call(forget_records)
            yield Site(client, {"Authorization": f"Bearer {admin}"}, tokens, roll)


async def _keys(settings: Settings, org: str) -> tuple[str, str]:
    async with open_platform(settings) as platform:
        billing = platform.billing_admin("cli:test")
        for model, (into, out, _i, _o) in PRICES.items():
            await billing.set_price(
                NewPrice.parse({"model": model, "input": into, "cached_input": into, "output": out})
            )
        accounts = platform.accounts_admin("cli:test")
        member = await accounts.issue_key(org, "app")
        admin = await accounts.issue_key(org, "ops", "admin")
        return member.token, admin.token


def expected(site: Site) -> dict[str, dict[str, int]]:
    """model -> revenue (CNY), upstream (its currency) micros, from the requests' tokens."""
    found = {}
    for model, (prompt, completion) in site.tokens.items():
        currency, _into, _out, up_in, up_out = UPSTREAMS[model]
        _pin, _pout, in_micros, out_micros = PRICES[model]
        found[model] = {
            "CNY-revenue": prompt * in_micros + completion * out_micros,
            f"{currency}-upstream": prompt * up_in + completion * up_out,
        }
    return found


def decimal(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def shown(symbol: str, micros: int) -> str:
    """As the page writes money (up to six decimals, at least two)."""
    whole, frac = divmod(micros, 1_000_000)
    return f"{symbol}{whole:,}.{f'{frac:06d}'.rstrip('0').ljust(2, '0')}"


def test_the_admin_json_reports_upstream_cost_per_currency_never_summed(site: Site) -> None:
    want = expected(site)
    usd_cost = want["gpt-usd"]["USD-upstream"]
    cny_cost = want["glm-cny"]["CNY-upstream"]
    revenue = want["gpt-usd"]["CNY-revenue"] + want["glm-cny"]["CNY-revenue"]
    for _ in range(2):  # rolling again adds nothing
        found = site.client.get("/admin/v1/usage", headers=site.admin)
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["total"]["revenue"] == {"CNY": decimal(revenue)}
        assert body["total"]["upstream_cost"] == {
            "CNY": decimal(cny_cost),
            "USD": decimal(usd_cost),
        }
        assert body["total"]["margin"] == {"CNY": decimal(revenue - cny_cost)}
        models = {m["model"]: m for m in body["top_models"]}
        assert models["gpt-usd"]["upstream_cost"] == {"USD": decimal(usd_cost)}
        assert models["gpt-usd"]["margin"] == {}  # CNY revenue, USD cost: no margin
        assert models["glm-cny"]["margin"] == {
            "CNY": decimal(want["glm-cny"]["CNY-revenue"] - cny_cost)
        }
        [today] = [d for d in body["days"] if d["requests"]]
        assert today["upstream_cost"] == body["total"]["upstream_cost"]
        [org] = body["top_orgs"]
        assert org["upstream_cost"] == body["total"]["upstream_cost"]
        assert site.roll() == 0


def test_the_overview_shows_upstream_cost_beside_revenue_in_both_languages(site: Site) -> None:
    want = expected(site)
    usd_cost = want["gpt-usd"]["USD-upstream"]
    cny_cost = want["glm-cny"]["CNY-upstream"]
    sign_in(site.client, "ops@example.com")
    site.client.cookies.set("openmaas_lang", "en", path="/console")
    page = site.client.get("/console/operator")
    assert page.status_code == 200, page.text
    text = page.text
    assert f'data-figure="upstream-USD">{shown("$", usd_cost)}<' in text
    assert f'data-figure="upstream-CNY">{shown("CN¥", cny_cost)}<' in text
    assert 'data-figure="margin-CNY">' in text and 'data-figure="margin-USD"' not in text
    assert "data-upstream-note" not in text
    assert 'id="ops-money-CNY-t">Revenue and upstream cost per day (CNY)<' in text
    assert 'id="ops-money-USD-t">Upstream cost per day (USD)<' in text  # no revenue in USD
    assert f"Upstream cost (USD): {shown('$', usd_cost)}</title></rect>" in text  # today's bar
    assert f"Upstream cost (CNY): {shown('CN¥', cny_cost)}</title></rect>" in text
    models = text.split('data-overview="models"')[1].split("</table>")[0]
    usd_row = models.split('<span class="mono">gpt-usd</span>')[1].split("</tr>")[0]
    assert '<td class="num" data-money="margin">–</td>' in usd_row  # CNY revenue, USD cost
    assert "$" in usd_row.split('data-money="upstream"')[1]
    cny_row = models.split('<span class="mono">glm-cny</span>')[1].split("</tr>")[0]
    assert "CN¥" in cny_row.split('data-money="margin"')[1]
    site.client.cookies.set("openmaas_lang", "zh-CN", path="/console")
    chinese = site.client.get("/console/operator").text
    assert "上游成本（USD）" in chinese and "毛利（CNY）" in chinese
    assert f'data-figure="upstream-CNY">{shown("¥", cny_cost)}<' in chinese
    site.client.cookies.set("openmaas_lang", "en", path="/console")
