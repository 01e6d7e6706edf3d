"""People for console tests: organizations A and B, an operator, a member and a viewer of
A, a member of B and a person of no organization (all with the password ``PASSWORD``), and
a browser-like client that signs in and sends each form's CSRF token."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi.testclient import TestClient
from httpx import Response

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import OrgRole, PeopleAdmin
from openmaas.billing.admin_bodies import NewFunds, NewPrice
from openmaas.platform import open_platform
from openmaas.settings import Settings

PASSWORD = "correct horse battery"
PEOPLE = {
    "ops@example.com": None,  # the operator: no membership, every organization
    "member@example.com": ("org-a", OrgRole.MEMBER),
    "viewer@example.com": ("org-a", OrgRole.VIEWER),
    "bob@example.com": ("org-b", OrgRole.MEMBER),
    "lonely@example.com": (),
}
_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass(frozen=True)
class World:
    org_a: str
    org_b: str
    key_a: str  # a key of A made by the CLI (its id)
    key_b: str  # a key of B made by the CLI (its id)


async def make_world(settings: Settings) -> World:
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("cli:test")
        org_a = await accounts.create_org(NewOrganization(name="org-a"))
        org_b = await accounts.create_org(NewOrganization(name="org-b"))
        key_a = await accounts.issue_key(org_a.id, "cli-a")
        key_b = await accounts.issue_key(org_b.id, "cli-b")
        billing = platform.billing_admin("cli:test")
        await billing.set_price(
            NewPrice.parse(
                {"model": "fake-chat", "input": "2", "cached_input": "0.5", "output": "8"}
            )
        )
        await billing.top_up(org_a.id, NewFunds.parse({"amount": "1234.5"}))
        people = PeopleAdmin(platform.changes("cli:test"), platform.clock, platform.master_key)
        for email, membership in PEOPLE.items():
            await people.create_user(email, PASSWORD, operator=membership is None)
            if membership:
                await people.add_member(email, membership[0], membership[1])
        return World(org_a.id, org_b.id, key_a.key.id, key_b.key.id)


def csrf_of(page: Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> Response:
    """Sign ``email`` in on ``client`` (after signing out whoever was): the answer to the
    form's POST."""
    client.cookies.clear()
    page = client.get("/console/sign-in")
    return client.post(
        "/console/sign-in",
        data={"email": email, "password": password, "csrf": csrf_of(page)},
        follow_redirects=False,
    )


def post_form(client: TestClient, page_path: str, action: str, **fields: str) -> Response:
    """Open ``page_path``, then POST ``fields`` to ``action`` with the page's CSRF token."""
    token = csrf_of(client.get(page_path))
    return client.post(action, data={**fields, "csrf": token}, follow_redirects=False)


def another_browser(client: TestClient) -> TestClient:
    """A second browser (its own cookies) on the app ``client`` serves, on the same event
    loop: a TestClient of its own would run each request on a loop of its own, where the
    app's database connections and locks, made on ``client``'s loop, can wait forever."""
    other = TestClient(client.app, base_url=str(client.base_url))
    other.portal = client.portal
    return other
