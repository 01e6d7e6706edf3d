"""The console's routes × roles (``access.CONSOLE_ROLES``): every served console route is
in the table, each person gets what it says, and no one reaches another organization."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.server.console.i18n import MESSAGES
from openmaas.server.routes.access import (
    CONSOLE_ROLES,
    POLICY,
    Access,
    ConsoleAccess,
    served_routes,
)
from tests.server.test_console import console_settings
from tests.support.people import World, csrf_of, make_world, sign_in
from tests.support.waiting import wait_until

PEOPLE = ("ops@example.com", "member@example.com", "viewer@example.com", "bob@example.com",
          "lonely@example.com", None)  # fmt: skip
SESSION_ROUTES = ("POST /console/sign-out", "POST /console/password", "POST /console/sign-in")
RANK = {"viewer": 1, "member": 2, "admin": 3, "owner": 4}
ROLE_IN_A = {
    "ops@example.com": "owner",  # an operator: every organization, as owner
    "member@example.com": "member",
    "viewer@example.com": "viewer",
}
ROLE_IN_B = {"ops@example.com": "owner", "bob@example.com": "member"}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, World]]:
    settings = console_settings(tmp_path_factory.mktemp("console"))
    world = asyncio.run(make_world(settings))
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        yield client, world


def test_every_served_console_route_is_in_the_table(tmp_path: Path) -> None:
    served = {r for r in served_routes(create_app(console_settings(tmp_path))) if "/console" in r}
    assert served - set(CONSOLE_ROLES) == set(), "console routes missing from CONSOLE_ROLES"
    assert set(CONSOLE_ROLES) - served == set(), "CONSOLE_ROLES entries nobody serves"
    assert {r for r, rule in POLICY.items() if rule is Access.CONSOLE} == set(CONSOLE_ROLES)


def test_both_languages_have_every_message() -> None:
    en = json.loads((MESSAGES / "en.json").read_text())
    zh = json.loads((MESSAGES / "zh-CN.json").read_text())
    assert set(en) == set(zh)
    assert all(re.findall(r"\{\w+\}", en[k]) == re.findall(r"\{\w+\}", zh[k]) for k in en)


def _path(route: str, world: World, org: str) -> str:
    path = route.split(" ", 1)[1]
    path = path.replace("{org}", org).replace("{key_id}", world.key_a)
    for name in ("{user_id}", "{invitation_id}"):  # none such: refused, not done
        path = path.replace(name, "nobody")
    return path.replace("{path:path}", "console.css")


def _expected(rule: ConsoleAccess, person: str | None, org_is_a: bool) -> set[int]:
    """The statuses ``person`` may get from a route of ``rule`` on org A (or B)."""
    if rule is ConsoleAccess.PUBLIC:
        return {200, 303, 400, 401, 404}  # a form sent empty: 400/401; sign-up off: 404
    if person is None:
        return {303, 403}  # GET: to sign in; POST: refused
    if rule is ConsoleAccess.SIGNED_IN:
        return {200, 303, 400}
    if rule is ConsoleAccess.OPERATOR:  # a form sent empty: 400; a change made: 303
        return {200, 303, 400} if person == "ops@example.com" else {403}
    role = (ROLE_IN_A if org_is_a else ROLE_IN_B).get(person)
    if role is None:
        return {404}  # another organization's pages do not exist for them
    if RANK[role] < RANK[rule.value]:
        return {403}
    return {200, 201, 303, 400}


@pytest.mark.parametrize("person", PEOPLE)
def test_each_person_gets_what_the_table_says(
    console: tuple[TestClient, World], person: str | None
) -> None:
    client, world = console
    wrong = []
    for org_is_a in (True, False):
        org = world.org_a if org_is_a else world.org_b
        for route, rule in sorted(CONSOLE_ROLES.items()):
            if route in (
                "POST /console/sign-out",
                "POST /console/password",
                "POST /console/sign-in",
            ):
                continue  # these end or make sessions: test_console.py
            if rule is ConsoleAccess.MEMBER and route.endswith("/revoke"):
                continue  # revoking: below, so that the key stays live for the rest
            client.cookies.clear()
            if person is not None:
                assert sign_in(client, person).status_code == 303
            token = csrf_of(
                client.get("/console/sign-in" if person is None else "/console/password")
            )
            method, path = route.split(" ", 1)[0], _path(route, world, org)
            data = {"csrf": token, "name": "matrix"} if method == "POST" else None
            reply = client.request(method, path, data=data, follow_redirects=False)
            if reply.status_code not in _expected(rule, person, org_is_a):
                wrong.append(f"{route} on {'A' if org_is_a else 'B'}: {reply.status_code}")
    assert wrong == []


def test_a_member_of_a_never_sees_bs_keys_and_a_viewer_changes_nothing(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    mine = client.get(f"/console/orgs/{world.org_a}/keys").text
    assert world.key_a in mine and world.key_b not in mine
    assert client.get(f"/console/orgs/{world.org_b}/keys").status_code == 404
    token = csrf_of(client.get(f"/console/orgs/{world.org_a}/keys"))
    theirs = f"/console/orgs/{world.org_a}/keys/{world.key_b}/revoke"  # B's key through A
    assert client.post(theirs, data={"csrf": token}).status_code == 404
    through_b = f"/console/orgs/{world.org_b}/keys/{world.key_b}/revoke"
    assert client.post(through_b, data={"csrf": token}).status_code == 404

    sign_in(client, "viewer@example.com")
    page = client.get(f"/console/orgs/{world.org_a}/keys").text
    assert world.key_a in page and "/revoke" not in page and 'name="name"' not in page
    token = csrf_of(client.get(f"/console/orgs/{world.org_a}/keys"))
    made = client.post(f"/console/orgs/{world.org_a}/keys", data={"csrf": token, "name": "x"})
    assert made.status_code == 403
    revoke = f"/console/orgs/{world.org_a}/keys/{world.key_a}/revoke"
    assert client.post(revoke, data={"csrf": token}).status_code == 403

    assert client.get("/console/audit").status_code == 403  # the platform's pages: operators

    sign_in(client, "bob@example.com")
    assert client.get(f"/console/orgs/{world.org_a}/balance").status_code == 404
    assert world.org_a not in client.get("/console", follow_redirects=True).text
