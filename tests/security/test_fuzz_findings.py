"""What the fuzzing of the OpenAPI document found, each pinned: a request the server could
not handle is a 400 naming the field, not a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.security.world import Keys

TOO_BIG = 2**70  # past SQLite's (and PostgreSQL's) 64-bit integers


def test_a_price_from_a_moment_past_any_date_is_a_400(
    served: tuple[TestClient, Keys],
) -> None:
    client, keys = served
    price = {"model": "fake-chat", "input": "1", "cached_input": "0.5", "output": "2"}
    for moment in (TOO_BIG, -TOO_BIG, 2**63):
        reply = client.post(
            "/admin/v1/prices",
            json={**price, "effective_from": moment},
            headers=keys.headers("admin"),
        )
        assert reply.status_code == 400, (moment, reply.text)
        assert reply.json()["error"]["param"] == "effective_from"
    # epoch milliseconds within the years 1-9999 still work
    reply = client.post(
        "/admin/v1/prices",
        json={**price, "effective_from": 1_900_000_000_000},
        headers=keys.headers("admin"),
    )
    assert reply.status_code == 201, reply.text


def test_a_tier_cap_past_a_64_bit_integer_is_a_400(served: tuple[TestClient, Keys]) -> None:
    client, keys = served
    for body in ({"rpm": TOO_BIG}, {"models": {"fake-chat": {"tpm": TOO_BIG}}}):
        reply = client.put("/admin/v1/tiers/big", json=body, headers=keys.headers("admin"))
        assert reply.status_code == 400, (body, reply.text)
    admin = keys.headers("admin")
    reply = client.put("/admin/v1/tiers/big", json={"rpm": 2**63 - 1}, headers=admin)
    assert reply.status_code == 200, reply.text


def test_an_amount_past_a_64_bit_count_of_micros_is_a_400(
    served: tuple[TestClient, Keys],
) -> None:
    client, keys = served
    price = {"model": "fake-chat", "input": "1", "cached_input": "0.5", "output": "2"}
    reply = client.post(
        "/admin/v1/prices",
        json={**price, "output": "33784548183868004.7"},
        headers=keys.headers("admin"),
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "output"
    top_up = {"amount": "9223372036855"}
    reply = client.post(
        f"/admin/v1/orgs/{keys.org_a}/topups", json=top_up, headers=keys.headers("admin")
    )
    assert reply.status_code == 400, reply.text


def test_a_lone_surrogate_in_an_admin_body_is_a_400(served: tuple[TestClient, Keys]) -> None:
    """JSON may escape half a UTF-16 pair (``\\ud800``); such a string cannot be stored."""
    client, keys = served
    headers = {**keys.headers("admin"), "content-type": "application/json"}
    for path, body in (
        ("/admin/v1/orgs", '{"name": "\\ud800"}'),
        (
            "/admin/v1/prices",
            '{"model": "\\ud800", "input": "1", "cached_input": "1", "output": "1"}',
        ),
    ):
        reply = client.post(path, content=body, headers=headers)
        assert reply.status_code == 400, (path, reply.text)
