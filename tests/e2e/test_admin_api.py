"""The admin HTTP API (/admin/v1) against a live server of its own: prices set here must not
reach the shared server other tests use."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from tests.e2e.live import FAKE_MODELS, LiveServer

MICROS = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("admin-api") / "home",
        fake_models={"fake-echo": FAKE_MODELS["fake-echo"]},
        embedded_models=False,
    )
    live.start()
    yield live
    live.stop()


@pytest.fixture()
def admin(server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        yield client


def chat(server: LiveServer, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "fake-echo",
            "messages": [{"role": "user", "content": "one two three"}],
            "max_tokens": 50,
        },
        timeout=60,
    )


def set_price(admin: httpx.Client) -> dict:
    response = admin.post(
        "/admin/v1/prices",
        json={"model": "fake-echo", "input": "2", "cached_input": "0.5", "output": "8"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_without_a_key_401_and_with_a_member_key_403(server: LiveServer) -> None:
    anonymous = httpx.get(f"{server.base_url}/admin/v1/orgs")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    member = server.new_key(name="member")
    for method, path in (
        ("GET", "/admin/v1/orgs"),
        ("POST", "/admin/v1/prices"),
        ("GET", "/admin/v1/audit"),
    ):
        refused = httpx.request(
            method,
            f"{server.base_url}{path}",
            headers={"Authorization": f"Bearer {member}"},
            json={},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"


def test_a_chat_costs_exactly_its_usage_record(server: LiveServer, admin: httpx.Client) -> None:
    created = admin.post("/admin/v1/orgs", json={"name": "acme", "currency": "CNY"})
    assert created.status_code == 201, created.text
    org = created.json()["id"]
    topped = admin.post(f"/admin/v1/orgs/{org}/topups", json={"amount": "10.00", "id": "pay-1"})
    assert topped.status_code == 201 and topped.json()["cash"] == "10.000000"
    price = set_price(admin)
    assert (price["input"], price["output"], price["currency"]) == ("2.000000", "8.000000", "CNY")
    key = server.new_key(org="acme", name="app")

    before = admin.get(f"/admin/v1/orgs/{org}/balance").json()
    response = chat(server, key)
    assert response.status_code == 200, response.text
    record = server.usage_row(response.headers["x-request-id"])
    after = admin.get(f"/admin/v1/orgs/{org}/balance").json()

    assert record["cost_micros"] > 0 and record["currency"] == "CNY"
    spent = Decimal(before["cash"]) - Decimal(after["cash"])
    assert spent * MICROS == record["cost_micros"]
    assert after["held"] == "0.000000"

    # The statement shows the same money: its cash lines add up to the cash balance.
    statement = admin.get(f"/admin/v1/orgs/{org}/statement", params={"format": "csv"})
    assert statement.status_code == 200
    assert statement.headers["content-type"].startswith("text/csv")
    assert "attachment" in statement.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(statement.text)))
    cash_rows = [r for r in rows if r["account"] == f"org:{org}:cash"]
    assert sum(Decimal(r["amount"]) for r in cash_rows) == Decimal(after["cash"])
    charged = [r for r in rows if r["counterparty"] == "system:CNY:revenue"]
    assert -sum(Decimal(r["amount"]) for r in charged) * MICROS == record["cost_micros"]
    assert {r["request_id"] for r in charged} == {record["request_id"]}

    # Every change above is in the audit log under the admin key.
    admin_id = server.admin_key.split(".")[0]
    entries = admin.get("/admin/v1/audit", params={"limit": 10}).json()["data"]
    actions = [(e["action"], e["actor"]) for e in entries]
    for action in ("org.create", "billing.topup", "price.set"):
        assert (action, f"key:{admin_id}") in actions


def test_an_empty_balance_is_refused_before_the_engine(
    server: LiveServer, admin: httpx.Client
) -> None:
    assert admin.post("/admin/v1/orgs", json={"name": "broke"}).status_code == 201
    set_price(admin)
    key = server.new_key(org="broke", name="app")
    records = server.usage_count()
    response = chat(server, key)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert server.usage_count() == records  # no usage record: the engine never ran


def test_amounts_must_be_decimal_strings(admin: httpx.Client) -> None:
    org = admin.post("/admin/v1/orgs", json={"name": "floaty"}).json()["id"]
    for body, field in (
        ({"amount": 5.5}, "amount"),
        ({"amount": 5}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "1", "currency": "USD"}, "currency"),
    ):
        refused = admin.post(f"/admin/v1/orgs/{org}/topups", json=body)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["param"] == field
    price = admin.post(
        "/admin/v1/prices",
        json={"model": "m", "input": 0.1, "cached_input": "0", "output": "1"},
    )
    assert price.status_code == 400 and price.json()["error"]["param"] == "input"
    assert admin.get(f"/admin/v1/orgs/{org}/balance").json()["cash"] == "0.000000"
    unknown = admin.post("/admin/v1/orgs/nobody/topups", json={"amount": "1"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_terms_packs_budgets_tiers_and_keys(server: LiveServer, admin: httpx.Client) -> None:
    gold = admin.put(
        "/admin/v1/tiers/Gold",
        json={"rpm": 100, "concurrency": 4, "models": {"fake-echo": {"rpm": 10}}},
    )
    assert gold.status_code == 200, gold.text
    tiers = {t["name"]: t for t in admin.get("/admin/v1/tiers").json()["data"]}
    assert tiers["Gold"]["rpm"] == 100 and tiers["Gold"]["tpm"] is None
    assert tiers["Gold"]["models"]["fake-echo"]["rpm"] == 10

    org = admin.post("/admin/v1/orgs", json={"name": "initech", "tier": "V1"}).json()["id"]
    patched = admin.patch(
        f"/admin/v1/orgs/{org}",
        json={"tier": "Gold", "discount_bp": 2500, "credit_limit": "20"},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["tier"], patched.json()["discount_bp"]) == ("Gold", 2500)
    assert patched.json()["credit_limit"] == "20.000000"
    unknown_tier = admin.patch(f"/admin/v1/orgs/{org}", json={"tier": "Platinum"})
    assert unknown_tier.status_code == 400 and unknown_tier.json()["error"]["param"] == "tier"

    pack = admin.post(
        f"/admin/v1/orgs/{org}/packs",
        json={"models": ["fake-echo"], "tokens": 5000, "expires_at": "2099-01-01"},
    )
    assert pack.status_code == 201, pack.text
    [listed] = admin.get(f"/admin/v1/orgs/{org}/packs").json()["data"]
    assert (listed["tokens_remaining"], listed["expires_at"]) == (5000, "2099-01-01T00:00:00.000Z")

    budget = admin.put(f"/admin/v1/budgets/org:{org}/month", json={"limit": "30"})
    assert budget.status_code == 200 and budget.json()["limit"] == "30.000000"
    balance = admin.get(f"/admin/v1/orgs/{org}/balance").json()
    assert balance["available"] == "20.000000"  # the credit limit
    assert [(b["period"], b["limit"]) for b in balance["budgets"]] == [("month", "30.000000")]
    assert admin.delete(f"/admin/v1/budgets/org:{org}/month").status_code == 204
    assert admin.delete(f"/admin/v1/budgets/org:{org}/month").status_code == 404
    bad_period = admin.put(f"/admin/v1/budgets/org:{org}/week", json={"limit": "1"})
    assert bad_period.status_code == 400 and bad_period.json()["error"]["param"] == "period"

    key_id = server.new_key(org="initech", name="bot").split(".")[0]
    narrowed = admin.patch(f"/admin/v1/keys/{key_id}", json={"tier": "V0"})
    assert narrowed.status_code == 200 and narrowed.json() == {"id": key_id, "tier": "V0"}
    assert admin.patch("/admin/v1/keys/om_nobody", json={"tier": "V0"}).status_code == 404
    orgs = {o["name"]: o for o in admin.get("/admin/v1/orgs").json()["data"]}
    assert orgs["initech"]["tier"] == "Gold"
