"""The admin API for people (``routes/admin_people.py``): what the console's members and
users pages do, with an admin key, under the same rules (``accounts/people_roles.py``):
members and their roles, invitations whose token is shown once, operators and disabled
users; a member key reaches none of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import OrgRole, PeopleAdmin
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.people import PASSWORD, another_browser, post_form, sign_in


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(home=tmp_path / "home", embedded_models=False)

    async def seed() -> dict[str, str]:
        async with open_platform(settings) as platform:
            await platform.first_run()
            accounts = platform.accounts_admin("cli:test")
            org = await accounts.create_org(NewOrganization(name="acme"))
            member_key = await accounts.issue_key(org.id, "app")
            people = PeopleAdmin(platform.changes("cli:test"), platform.clock, platform.master_key)
            found = {"org": org.id, "member_key": member_key.token}
            for email, role in (("own@example.com", OrgRole.OWNER), ("pat@example.com", None)):
                user = await people.create_user(email, PASSWORD)
                found[email] = user.id
                if role is not None:
                    await people.add_member(user.id, org.id, role)
            return found

    world = asyncio.run(seed())
    world["admin"] = f"Bearer {settings.admin_key_file.read_text().strip()}"
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        client.headers["Authorization"] = world["admin"]
        yield client, world


def test_an_admin_key_invites_a_person_who_joins_and_is_then_managed_as_a_member(
    site: tuple[TestClient, dict[str, str]],
) -> None:
    client, world = site
    made = client.post(
        "/admin/v1/orgs/acme/invitations", json={"email": "Pat@Example.com", "role": "admin"}
    )
    assert made.status_code == 201, made.text
    invitation = made.json()
    assert invitation["status"] == "open" and invitation["email"] == "pat@example.com"
    assert invitation["link"] == (
        f"https://testserver/console/invitation?token={invitation['token']}"
    )
    listed = client.get("/admin/v1/orgs/acme/invitations").json()["data"]
    assert [i["id"] for i in listed] == [invitation["id"]]
    assert "token" not in listed[0] and invitation["token"] not in str(listed)  # shown once

    # the person accepts in the console, signed in, with the invited email
    browser = another_browser(client)
    sign_in(browser, "pat@example.com")
    page = invitation["link"].removeprefix("https://testserver")
    assert browser.get(page).status_code == 200
    joined = post_form(browser, page, "/console/invitation/accept", token=invitation["token"])
    assert joined.status_code in (200, 303), joined.text

    members = client.get(f"/admin/v1/orgs/{world['org']}/members").json()["data"]
    assert {(m["email"], m["role"]) for m in members} == {
        ("own@example.com", "owner"),
        ("pat@example.com", "admin"),
    }
    pat = world["pat@example.com"]
    changed = client.patch(f"/admin/v1/orgs/acme/members/{pat}", json={"role": "viewer"})
    assert changed.json() == {"user_id": pat, "org": world["org"], "role": "viewer"}
    assert client.delete(f"/admin/v1/orgs/acme/members/{pat}").status_code == 204
    gone = client.delete(f"/admin/v1/orgs/acme/members/{pat}")
    assert gone.status_code == 404
    actions = [e["action"] for e in client.get("/admin/v1/audit").json()["data"]]
    assert actions[:4] == ["member.remove", "member.set", "invitation.accept", "invitation.create"]


def test_the_rules_of_the_console_answer_the_api_too(
    site: tuple[TestClient, dict[str, str]],
) -> None:
    client, world = site
    owner = world["own@example.com"]
    last = client.delete(f"/admin/v1/orgs/acme/members/{owner}")
    assert last.status_code == 400 and "last owner" in last.json()["error"]["message"]
    lower = client.patch(f"/admin/v1/orgs/acme/members/{owner}", json={"role": "admin"})
    assert lower.status_code == 400 and "at least one owner" in lower.json()["error"]["message"]
    wrong = client.patch(f"/admin/v1/orgs/acme/members/{owner}", json={"role": "god"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "role"
    bad = client.post("/admin/v1/orgs/acme/invitations", json={"email": "not-an-address"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "email"
    assert client.get("/admin/v1/orgs/nowhere/members").status_code == 404
    assert client.delete("/admin/v1/orgs/acme/invitations/nope").status_code == 404
    made = client.post("/admin/v1/orgs/acme/invitations", json={"email": "x@example.com"}).json()
    assert made["role"] == "member"
    assert client.delete(f"/admin/v1/orgs/acme/invitations/{made['id']}").status_code == 204
    [revoked] = client.get("/admin/v1/orgs/acme/invitations").json()["data"]
    assert revoked["status"] == "revoked"
    closed = client.get(made["link"].removeprefix("https://testserver"))
    assert closed.status_code == 404  # the console no longer takes the token


def test_users_made_operators_and_disabled_by_an_admin_key(
    site: tuple[TestClient, dict[str, str]],
) -> None:
    client, world = site
    pat = world["pat@example.com"]
    browser = another_browser(client)
    sign_in(browser, "pat@example.com")
    assert browser.get("/console/operator/orgs").status_code == 403  # not an operator yet

    assert client.put(f"/admin/v1/users/{pat}/operator").status_code == 204
    assert browser.get("/console/operator/orgs").status_code == 200
    assert client.delete("/admin/v1/users/pat@example.com/operator").status_code == 204
    assert browser.get("/console/operator/orgs").status_code == 403

    assert client.put(f"/admin/v1/users/{pat}/disabled").status_code == 204
    assert browser.get("/console/orgs", follow_redirects=False).status_code == 303  # signed out
    users = {u["email"]: u for u in client.get("/admin/v1/users").json()["data"]}
    assert users["pat@example.com"]["disabled"] and not users["pat@example.com"]["operator"]
    assert users["own@example.com"]["memberships"] == [
        {"org": world["org"], "org_name": "acme", "role": "owner"}
    ]
    assert client.delete(f"/admin/v1/users/{pat}/disabled").status_code == 204
    assert not client.get("/admin/v1/users").json()["data"][1]["disabled"]
    assert client.put("/admin/v1/users/nobody/operator").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/v1/orgs/acme/members"),
        ("PATCH", "/admin/v1/orgs/acme/members/{user}"),
        ("DELETE", "/admin/v1/orgs/acme/members/{user}"),
        ("GET", "/admin/v1/orgs/acme/invitations"),
        ("POST", "/admin/v1/orgs/acme/invitations"),
        ("GET", "/admin/v1/users"),
        ("PUT", "/admin/v1/users/{user}/operator"),
        ("PUT", "/admin/v1/users/{user}/disabled"),
    ],
)
def test_a_member_key_of_the_organization_reaches_none_of_it(
    site: tuple[TestClient, dict[str, str]], method: str, path: str
) -> None:
    client, world = site
    url = path.format(user=world["own@example.com"])
    body = {"role": "viewer", "email": "a@example.com"} if method in ("PATCH", "POST") else None
    headers = {"Authorization": f"Bearer {world['member_key']}"}
    reply = client.request(method, url, json=body, headers=headers)
    assert reply.status_code == 403, reply.text
