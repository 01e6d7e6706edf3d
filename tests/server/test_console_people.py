"""Members and invitations in the console (``console/people.py``): an admin invites
by email, the invited person signs up through the link (open sign-up off) or accepts it
signed in, roles change, members go; no one else reaches these pages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.accounts.people import OrgRole, PeopleAdmin
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.server.test_console import console_settings
from tests.support.people import (
    PASSWORD,
    World,
    another_browser,
    csrf_of,
    make_world,
    post_form,
    sign_in,
)
from tests.support.waiting import wait_until

NEW_PASSWORD = "a new person's password"


async def _with_admin(settings: Settings) -> World:
    world = await make_world(settings)
    async with open_platform(settings) as platform:
        people = PeopleAdmin(platform.changes("cli:test"), platform.clock, platform.master_key)
        await people.create_user("admin@example.com", PASSWORD)
        await people.add_member("admin@example.com", world.org_a, OrgRole.ADMIN)
    return world


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[TestClient, World]]:
    settings = console_settings(tmp_path)
    assert not settings.console_signup  # invitations work with open sign-up off
    world = asyncio.run(_with_admin(settings))
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        yield client, world


def _invite(client: TestClient, org: str, email: str, role: str) -> str:
    members = f"/console/orgs/{org}/members"
    made = post_form(client, members, f"{members}/invite", email=email, role=role)
    assert made.status_code == 201, made.text
    link = re.search(r'id="invite-link" class="mono" readonly value="([^"]+)"', made.text)
    assert link is not None
    found = link.group(1).replace("&amp;", "&")
    assert found.startswith("https://testserver/console/invitation?token=")
    return found.removeprefix("https://testserver")


def _token(link: str) -> str:
    return link.split("token=", 1)[1]


def test_an_admin_invites_a_person_who_signs_up_through_the_link_and_sees_the_org(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "admin@example.com")
    page = client.get(f"/console/orgs/{world.org_a}/members")
    assert page.status_code == 200 and "member@example.com" in page.text
    assert 'value="owner"' not in page.text.split('id="invite-role"')[1].split("</select>")[0]
    link = _invite(client, world.org_a, "new@example.com", "member")
    assert "new@example.com" in client.get(f"/console/orgs/{world.org_a}/members").text

    newcomer = another_browser(client)
    invitation = newcomer.get(link)
    assert invitation.status_code == 200 and "org-a" in invitation.text
    token = csrf_of(invitation)
    joined = newcomer.post(
        "/console/invitation/sign-up",
        data={
            "password": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "csrf": token,
            "token": _token(link),
        },  # fmt: skip
        follow_redirects=False,
    )
    assert joined.status_code == 303
    assert joined.headers["location"] == f"/console/orgs/{world.org_a}/keys"
    keys = newcomer.get(joined.headers["location"])
    assert keys.status_code == 200 and "org-a" in keys.text and "new@example.com" in keys.text
    assert newcomer.get(f"/console/orgs/{world.org_b}/keys").status_code == 404

    again = another_browser(client)
    assert again.get(link).status_code == 404  # used: it works once
    assert (
        "new@example.com"
        not in client.get(f"/console/orgs/{world.org_a}/members").text.split("Open invitations")[1]
    )


def test_a_signed_in_person_accepts_with_the_invited_email_only(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "ops@example.com")
    link = _invite(client, world.org_b, "lonely@example.com", "viewer")
    sign_in(client, "bob@example.com")  # not the invited email
    refused = post_form(client, link, "/console/invitation/accept", token=_token(link))
    assert refused.status_code == 403
    sign_in(client, "lonely@example.com")
    assert client.get(f"/console/orgs/{world.org_b}/keys").status_code == 404
    accepted = post_form(client, link, "/console/invitation/accept", token=_token(link))
    assert accepted.status_code == 303
    assert client.get(f"/console/orgs/{world.org_b}/keys").status_code == 200
    viewer = client.get(f"/console/orgs/{world.org_b}/keys").text
    assert 'name="name"' not in viewer  # a viewer changes nothing
    token = csrf_of(client.get("/console/password"))
    assert (
        client.post(
            "/console/invitation/accept", data={"csrf": token, "token": "nonsense"}
        ).status_code
        == 400
    )


def test_roles_change_members_go_and_the_last_owner_stays(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    members = f"/console/orgs/{world.org_a}/members"
    sign_in(client, "admin@example.com")
    page = client.get(members).text
    ids = dict(re.findall(r'data-member="([^"]+)">.*?/members/(usr_\w+)/role', page, re.S))
    viewer, member = ids["viewer@example.com"], ids["member@example.com"]
    changed = post_form(client, members, f"{members}/{viewer}/role", role="member")
    assert changed.status_code == 303
    assert re.search(r'data-member="viewer@example.com">.*?<option value="member" selected',
                     client.get(members).text, re.S)  # fmt: skip
    owner = post_form(client, members, f"{members}/{member}/role", role="owner")
    assert owner.status_code == 403  # an admin gives no role above their own
    removed = post_form(client, members, f"{members}/{member}/remove")
    assert removed.status_code == 303
    assert "member@example.com" not in client.get(members).text
    sign_in(client, "member@example.com")
    assert client.get(f"/console/orgs/{world.org_a}/keys").status_code == 404  # gone

    sign_in(client, "ops@example.com")  # an operator acts as owner
    made = post_form(client, members, f"{members}/{viewer}/role", role="owner")
    assert made.status_code == 303
    last = post_form(client, members, f"{members}/{viewer}/remove")
    assert last.status_code == 400 and "last owner" in last.text

    sign_in(client, "admin@example.com")
    touch_owner = post_form(client, members, f"{members}/{viewer}/remove")
    assert touch_owner.status_code == 403  # only an owner removes an owner


def test_only_owners_and_admins_reach_members_and_no_one_another_orgs(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    a, b = f"/console/orgs/{world.org_a}/members", f"/console/orgs/{world.org_b}/members"
    for person in ("member@example.com", "viewer@example.com"):
        sign_in(client, person)
        assert client.get(a).status_code == 403
        token = csrf_of(client.get("/console/password"))
        invite = client.post(f"{a}/invite", data={"email": "x@example.com", "role": "viewer",
                                                  "csrf": token})  # fmt: skip
        assert invite.status_code == 403
    sign_in(client, "admin@example.com")
    assert client.get(b).status_code == 404
    token = csrf_of(client.get(a))
    assert "Members" in client.get(a).text
    across = client.post(f"{b}/invite", data={"email": "x@example.com", "role": "viewer",
                                              "csrf": token})  # fmt: skip
    assert across.status_code == 404
    no_csrf = client.post(f"{a}/invite", data={"email": "x@example.com", "role": "viewer"})
    assert no_csrf.status_code == 403
    sign_in(client, "member@example.com")
    assert (
        f"/orgs/{world.org_a}/members" not in client.get(f"/console/orgs/{world.org_a}/keys").text
    )


def test_invitation_pages_in_chinese(console: tuple[TestClient, World]) -> None:
    client, world = console
    sign_in(client, "admin@example.com")
    link = _invite(client, world.org_a, "zh@example.com", "viewer")
    page = client.get(f"/console/orgs/{world.org_a}/members", headers={"accept-language": "zh-CN"})
    assert "成员" in page.text and "待接受的邀请" in page.text
    client.cookies.clear()
    invitation = client.get(link, headers={"accept-language": "zh-CN,zh;q=0.9"})
    assert "您受邀加入 org-a，角色为查看者（zh@example.com）。" in invitation.text
