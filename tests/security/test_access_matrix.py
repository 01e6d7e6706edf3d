"""Every route the application serves × every kind of caller, against the one access
policy (``server/routes/access.py``); and one organization's key never reaches another
organization's resources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.server.routes.access import POLICY, Access, served_routes
from tests.security.world import Keys, security_settings
from tests.support.waiting import wait_until

CALLERS = ("admin", "member", "other", "revoked", "none")
BODY_METHODS = {"POST", "PUT", "PATCH"}


def _concrete(path: str) -> str:
    """A request path for a route path: each parameter an id that names nothing."""
    if path.endswith("{path:path}"):
        return path.replace("{path:path}", "swagger-ui.css")
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: f"no-such-{m.group(1)}", path)


def _allowed(rule: Access, caller: str) -> bool:
    if rule is Access.PUBLIC:
        return True
    if caller in ("none", "revoked"):
        return False
    return rule is Access.KEY or caller == "admin"


def test_every_served_route_is_in_the_access_policy(tmp_path: Path) -> None:
    """A route added without an entry in the policy (or an entry left for a route that is
    gone) fails here."""
    served = set(served_routes(create_app(security_settings(tmp_path))))
    assert served - set(POLICY) == set(), "routes missing from the access policy"
    assert set(POLICY) - served == set(), "policy entries for routes nobody serves"


def test_each_caller_gets_what_the_policy_says(served: tuple[TestClient, Keys]) -> None:
    client, keys = served
    wrong = []
    for route in sorted(served_routes(client.app)):  # type: ignore[arg-type]
        method, path = route.split(" ", 1)
        rule = POLICY[route]
        if rule is Access.CONSOLE:
            continue  # sessions, not keys: tests/server/test_console_access.py
        if rule is Access.METRICS:
            continue  # its own token, not keys: tests/server/test_metrics.py
        for caller in CALLERS:
            headers = keys.headers(caller)
            body = b"{}" if method in BODY_METHODS else None
            if body is not None:
                headers = {**headers, "content-type": "application/json"}
            reply = client.request(method, _concrete(path), headers=headers, content=body)
            status = reply.status_code
            if _allowed(rule, caller):
                ok = status not in (401, 403) and status < 500
            elif caller in ("none", "revoked"):
                ok = status == 401
            else:
                ok = status == 403
            if not ok:
                wrong.append(f"{route} as {caller}: {status} ({rule.value})")
    assert wrong == []


def _chat(client: TestClient, headers: dict[str, str]) -> None:
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert reply.status_code == 200, reply.text


def test_usage_shows_only_the_callers_organization(served: tuple[TestClient, Keys]) -> None:
    client, keys = served
    _chat(client, keys.headers("member"))
    mine = client.get("/v1/usage", headers=keys.headers("member")).json()
    theirs = client.get("/v1/usage", headers=keys.headers("other")).json()
    assert mine["organization"] == keys.org_a and mine["data"][0]["requests"] == 1
    assert theirs["organization"] == keys.org_b and theirs["data"] == []
    # a query naming the other organization changes nothing
    probe = client.get(
        "/v1/usage", params={"organization": keys.org_a}, headers=keys.headers("other")
    )
    assert probe.json()["data"] == []


def test_stored_responses_belong_to_their_organization(
    served: tuple[TestClient, Keys],
) -> None:
    client, keys = served
    created = client.post(
        "/v1/responses", json={"model": "fake-chat", "input": "hi"}, headers=keys.headers("member")
    ).json()
    rid = created["id"]
    other = keys.headers("other")
    assert client.get(f"/v1/responses/{rid}", headers=other).status_code == 404
    assert client.delete(f"/v1/responses/{rid}", headers=other).status_code == 404
    follow = {"model": "fake-chat", "input": "and?", "previous_response_id": rid}
    assert client.post("/v1/responses", json=follow, headers=other).status_code == 404
    # still there for its own organization, even for its admin key's organization: A
    assert client.get(f"/v1/responses/{rid}", headers=keys.headers("member")).status_code == 200
    assert client.get(f"/v1/responses/{rid}", headers=keys.headers("admin")).status_code == 200


def test_async_jobs_belong_to_their_organization(served: tuple[TestClient, Keys]) -> None:
    client, keys = served
    submitted = client.post(
        "/api/paas/v4/async/chat/completions",
        json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
        headers=keys.headers("member"),
    )
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["id"]
    path = f"/api/paas/v4/async-result/{job}"

    def finished() -> bool:
        reply = client.get(path, headers=keys.headers("member"))
        return reply.status_code == 200 and reply.json()["task_status"] == "SUCCESS"

    wait_until(finished, what="the async job")
    assert client.get(path, headers=keys.headers("other")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/v1/orgs/{org}/usage"),
        ("GET", "/admin/v1/orgs/{org}/balance"),
        ("GET", "/admin/v1/orgs/{org}/statement"),
        ("PATCH", "/admin/v1/keys/{key}"),
        ("PATCH", "/admin/v1/orgs/{org}"),
        ("GET", "/admin/v1/orgs/{org}/keys"),
        ("POST", "/admin/v1/orgs/{org}/keys"),
    ],
)
def test_a_member_key_cannot_reach_any_organization_through_the_admin_api(
    served: tuple[TestClient, Keys], method: str, path: str
) -> None:
    """Not the other organization's, and not its own either (keys, terms, balances)."""
    client, keys = served
    key_id = keys.other.split(".")[0]
    for org in (keys.org_a, keys.org_b):
        url = path.format(org=org, key=key_id)
        reply = client.request(method, url, json={"tier": None}, headers=keys.headers("member"))
        assert reply.status_code == 403, (url, reply.text)
