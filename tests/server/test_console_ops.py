"""The console's operator pages (``console/ops.py``): organizations, deployments,
the catalog editor, prices and users, for operators only, each change made through the
platform's own services and audited with the person as the actor."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from openmaas.server.app import create_app
from openmaas.server.routes.access import CONSOLE_ROLES
from openmaas.settings import Settings
from openmaas.store.audit import read_audit
from openmaas.store.people.users import UserRepository
from openmaas.store.schema import audit_log
from tests.server.test_console import console_settings
from tests.support.app import app_state
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

OPS = "/console/operator"
CATALOG = """models:
  - name: chat-a
    kind: chat
    deployments:
      - id: one
        engine: fake
"""


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[TestClient, World, Settings]]:
    settings = console_settings(tmp_path)
    world = asyncio.run(make_world(settings))
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        sign_in(client, "ops@example.com")
        yield client, world, settings


def _audit(client: TestClient) -> list[tuple[str, str, str]]:
    """Every audit entry (actor, action, target), read on the application's loop."""

    async def read() -> list[tuple[str, str, str]]:
        entries = await read_audit(app_state(client).platform.database, 10_000)
        return [(e.actor, e.action, e.target) for e in reversed(entries)]

    assert client.portal is not None
    return client.portal.call(read)


def _user_id(client: TestClient, email: str) -> str:
    async def read() -> str:
        return (await UserRepository(app_state(client).platform.database).find(email)).id

    assert client.portal is not None
    return client.portal.call(read)


def test_an_operator_creates_an_org_tops_it_up_sets_its_terms_and_grants_a_pack(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, world, settings = console
    listing = client.get(f"{OPS}/orgs")
    assert listing.status_code == 200
    assert "org-a" in listing.text and "CN¥1,234.50" in listing.text  # A's balance

    made = post_form(client, f"{OPS}/orgs", f"{OPS}/orgs", name="globex", currency="USD")
    assert made.status_code == 303
    page = client.get(made.headers["location"])
    assert "globex" in page.text and "The organization is created." in page.text
    org = made.headers["location"].split("/")[-1].split("?")[0]

    done = post_form(client, f"{OPS}/orgs/{org}", f"{OPS}/orgs/{org}/topup", amount="250.5")
    assert done.status_code == 303
    assert 'data-figure="available">$250.50' in client.get(f"{OPS}/orgs/{org}").text

    terms = post_form(
        client,
        f"{OPS}/orgs/{org}",
        f"{OPS}/orgs/{org}/terms",
        credit_limit="100",
        data_policy="local_only",
        prompt_logging="on",
    )
    assert terms.status_code == 303
    shown = client.get(f"{OPS}/orgs/{org}").text
    assert 'data-figure="credit">$100.00' in shown and "local only" in shown
    assert 'data-figure="prompt-logging">on: prompts and answers logged' in shown
    assert 'data-figure="available">$350.50' in shown

    bad_tier = post_form(client, f"{OPS}/orgs/{org}", f"{OPS}/orgs/{org}/terms", tier="Gold")
    assert bad_tier.status_code == 400 and "Gold" in bad_tier.text  # no such tier: refused

    pack = post_form(
        client,
        f"{OPS}/orgs/{org}",
        f"{OPS}/orgs/{org}/packs",
        models="fake-chat",
        tokens="1,000",
        expires_at="2099-01-01",
    )
    assert pack.status_code == 303
    assert "1,000" in client.get(f"{OPS}/orgs/{org}").text

    promo = post_form(
        client, f"{OPS}/orgs/{org}", f"{OPS}/orgs/{org}/topup", amount="-5", kind="promo"
    )
    assert promo.status_code == 400  # the service's own check: nothing written

    ops = f"user:{_user_id(client, 'ops@example.com')}"
    mine = [(action, target) for actor, action, target in _audit(client) if actor == ops]
    assert [a for a, _t in mine] == [
        "org.create",
        "billing.topup",
        "org.update",
        "billing.pack_grant",
    ]
    del world


def test_the_catalog_editor_shows_each_error_on_its_line_and_saves_as_the_api_does(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, _world, settings = console
    broken = CATALOG.replace("kind: chat", "kind: chat\n    context_length: lots")
    checked = post_form(client, f"{OPS}/catalog", f"{OPS}/catalog", document=broken, check="1")
    assert checked.status_code == 400
    bad = re.findall(r'<tr class="bad" data-line="(\d+)">', checked.text)
    assert bad == ["4"]  # the line of context_length, with its error beside it
    assert "context_length" in checked.text.split('data-line="4"')[1].split("</tr>")[0]
    assert "Errors in the document: 1." in checked.text

    empty = post_form(client, f"{OPS}/catalog", f"{OPS}/catalog", document="models: []\n")
    assert empty.status_code == 400 and "declares no models" in empty.text

    valid = post_form(client, f"{OPS}/catalog", f"{OPS}/catalog", document=CATALOG, check="1")
    assert valid.status_code == 200 and "1 models" in valid.text

    saved = post_form(client, f"{OPS}/catalog", f"{OPS}/catalog", document=CATALOG)
    assert saved.status_code == 303
    assert "chat-a" in client.get(f"{OPS}/catalog").text
    models = client.get(f"{OPS}/models").text
    assert 'data-model="chat-a"' in models and "closed" in models  # its circuit
    assert any(a == "catalog.apply" and actor.startswith("user:") for actor, a, _ in _audit(client))


def test_prices_are_listed_and_set(console: tuple[TestClient, World, Settings]) -> None:
    client, _world, _settings = console
    page = client.get(f"{OPS}/prices")
    assert page.status_code == 200 and "fake-chat" in page.text and "in force" in page.text
    set_ = post_form(
        client,
        f"{OPS}/prices",
        f"{OPS}/prices",
        model="chat-b",
        currency="CNY",
        input="1",
        cached_input="0.25",
        output="3",
    )
    assert set_.status_code == 303
    assert "chat-b" in client.get(f"{OPS}/prices").text
    missing = post_form(client, f"{OPS}/prices", f"{OPS}/prices", model="chat-c", input="1")
    assert missing.status_code == 400 and "cached_input" in missing.text


def test_an_operator_makes_an_operator_and_disables_a_user_who_is_signed_out(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, _world, settings = console
    other = another_browser(client)
    assert sign_in(other, "member@example.com").status_code == 303
    assert other.get("/console").status_code == 200
    assert other.get(f"{OPS}/users").status_code == 403  # not yet

    page = client.get(f"{OPS}/users").text
    member = re.search(r'data-user="member@example.com">\s*<td>member@example.com '
                       r'<span class="mono help">(usr_\w+)', page).group(1)  # type: ignore[union-attr]  # fmt: skip
    made = post_form(client, f"{OPS}/users", f"{OPS}/users/{member}/operator", operator="1")
    assert made.status_code == 303
    assert other.get(f"{OPS}/users").status_code == 200  # an operator now

    off = post_form(client, f"{OPS}/users", f"{OPS}/users/{member}/disabled", disabled="1")
    assert off.status_code == 303
    assert other.get("/console", follow_redirects=False).status_code == 303  # signed out
    assert sign_in(other, "member@example.com", PASSWORD).status_code == 401

    ops = _user_id(client, "ops@example.com")
    myself = post_form(client, f"{OPS}/users", f"{OPS}/users/{ops}/disabled", disabled="1")
    assert myself.status_code == 400  # an operator does not lock themselves out
    for field in ("operator", "disabled"):
        odd = post_form(client, f"{OPS}/users", f"{OPS}/users/{member}/{field}", **{field: "yes"})
        assert odd.status_code == 400 and f"&#39;{field}&#39; must be 0 or 1." in odd.text
    actions = [a for actor, a, _t in _audit(client) if actor == f"user:{ops}"]
    assert actions == ["user.operator", "user.disable"]


def test_only_operators_reach_the_operator_pages_and_every_post_needs_the_csrf_token(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, world, _settings = console
    for path in ("orgs", f"orgs/{world.org_a}", "models", "catalog", "prices", "users"):
        assert client.get(f"{OPS}/{path}").status_code == 200
    no_token = client.post(f"{OPS}/orgs", data={"name": "sneaky"})
    assert no_token.status_code == 403
    wrong = client.post(f"{OPS}/orgs/{world.org_a}/topup", data={"amount": "9", "csrf": "x"})
    assert wrong.status_code == 403
    for person in ("member@example.com", "viewer@example.com", "bob@example.com"):
        sign_in(client, person)
        token = csrf_of(client.get("/console/password"))
        for path in ("orgs", f"orgs/{world.org_a}", "models", "catalog", "prices", "users"):
            assert client.get(f"{OPS}/{path}").status_code == 403
        topup = client.post(f"{OPS}/orgs/{world.org_a}/topup", data={"amount": "9", "csrf": token})
        assert topup.status_code == 403
    client.cookies.clear()
    assert client.get(f"{OPS}/orgs", follow_redirects=False).status_code == 303  # sign in


def test_every_new_post_needs_a_session_and_its_csrf_token_and_writes_nothing_without(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, world, _settings = console
    ours = [
        route.split(" ", 1)[1]
        for route in CONSOLE_ROLES
        if route.startswith("POST ")
        and ("/operator/" in route or "/members" in route or "/invitation" in route)  # fmt: skip
    ]
    assert len(ours) == 15
    ops = _user_id(client, "ops@example.com")
    fills = {"{org}": world.org_a, "{user_id}": ops, "{invitation_id}": "inv_x"}
    token = csrf_of(client.get("/console/password"))
    before = len(_audit(client))
    form = {"name": "x", "amount": "5", "operator": "1", "disabled": "0", "role": "viewer",
            "email": "x@example.com", "credit_limit": "5", "password": "p" * 12}  # fmt: skip
    for route in ours:
        path = route
        for name, value in fills.items():
            path = path.replace(name, value)
        assert client.post(path, data=form).status_code == 403, f"{route}: no token"
        assert client.post(path, data={**form, "csrf": "guess"}).status_code == 403, route
        elsewhere = client.post(
            path, data={**form, "csrf": token}, headers={"origin": "https://evil.example"}
        )
        assert elsewhere.status_code == 403, f"{route}: another origin"
        signed_out = another_browser(client)
        assert signed_out.post(path, data={**form, "csrf": token}).status_code == 403, route
    assert len(_audit(client)) == before  # nothing was changed


def test_the_admin_api_answers_the_same_changes_to_admin_keys_only(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, world, _settings = console

    async def member_key() -> str:
        accounts = app_state(client).platform.accounts_admin("cli:test")
        return (await accounts.issue_key(world.org_a, "member")).token

    assert client.portal is not None
    member = {"authorization": f"Bearer {client.portal.call(member_key)}"}
    for method, path, body in (
        ("GET", "/admin/v1/orgs", None),
        ("POST", f"/admin/v1/orgs/{world.org_a}/topups", {"amount": "5"}),
        ("PATCH", f"/admin/v1/orgs/{world.org_a}", {"credit_limit": "5"}),
        ("PUT", "/admin/v1/catalog", None),
        (
            "POST",
            "/admin/v1/prices",
            {"model": "m", "input": "1", "cached_input": "1", "output": "1"},
        ),  # fmt: skip
    ):
        reply = client.request(method, path, json=body, headers=member)
        assert reply.status_code == 403, f"{method} {path}: {reply.status_code}"


def test_a_suspended_organizations_member_keys_are_refused_until_it_is_resumed(
    console: tuple[TestClient, World, Settings],
) -> None:
    client, world, settings = console

    async def keys() -> tuple[str, str]:
        accounts = app_state(client).platform.accounts_admin("cli:test")
        member = await accounts.issue_key(world.org_a, "member")
        admin = await accounts.issue_key(world.org_a, "admin", role="admin")
        return member.token, admin.token

    assert client.portal is not None
    member_token, admin_token = client.portal.call(keys)
    member = {"authorization": f"Bearer {member_token}"}
    admin = {"authorization": f"Bearer {admin_token}"}
    assert client.get("/v1/models", headers=member).status_code == 200

    page = f"{OPS}/orgs/{world.org_a}"
    off = post_form(client, page, f"{page}/suspension", suspended="1")
    assert off.status_code == 303
    assert "data-suspended" in client.get(page).text
    assert "data-suspended" in client.get(f"{OPS}/orgs").text
    refused = client.get("/v1/models", headers=member)
    assert refused.status_code == 403 and "suspended" in refused.text
    chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat, headers=member).status_code == 403
    assert client.get("/v1/models", headers=admin).status_code == 200  # admin keys run it all

    on = post_form(client, page, f"{page}/suspension", suspended="0")
    assert on.status_code == 303
    assert client.get("/v1/models", headers=member).status_code == 200

    suspension = f"/admin/v1/orgs/{world.org_a}/suspension"
    assert client.put(suspension, headers=member).status_code == 403  # a member key: never
    assert client.put(suspension, headers=admin).status_code == 204
    assert client.get("/v1/models", headers=member).status_code == 403
    assert client.delete(suspension, headers=admin).status_code == 204
    assert client.get("/v1/models", headers=member).status_code == 200
    ops = f"user:{_user_id(client, 'ops@example.com')}"
    done = [
        (actor, a) for actor, a, t in _audit(client) if a.startswith("org.s") or a == "org.resume"
    ]
    assert [a for _actor, a in done] == ["org.suspend", "org.resume"] * 2
    assert done[0][0] == ops and done[2][0].startswith("key:")
    del settings


def test_the_audit_page_and_api_filter_in_the_database_so_an_old_change_is_found(
    console: tuple[TestClient, World, Settings],
) -> None:
    """An entry behind 1,500 newer ones is found by its action and actor, on the page and
    through the admin API; ``%`` and ``_`` in a filter are the characters themselves."""
    client, world, _settings = console

    async def seed() -> str:
        rows = [{"at_ms": 1, "actor": "cli:old_hand", "action": "org.tier", "target": "org_x"}]
        rows += [
            {"at_ms": 2 + n, "actor": "cli:busy", "action": "price.set", "target": f"m{n}"}
            for n in range(1_500)
        ]
        platform = app_state(client).platform
        key = await platform.accounts_admin("cli:test").issue_key(world.org_a, "ops", "admin")
        async with platform.database.begin() as conn:
            await conn.execute(insert(audit_log), rows)
        return key.token

    assert client.portal is not None
    admin = {"Authorization": "Bearer " + client.portal.call(seed)}
    page = client.get("/console/audit", params={"action": "org.tier", "actor": "old_hand"})
    assert page.status_code == 200 and "org_x" in page.text and "cli:old_hand" in page.text
    assert "cli:busy" not in page.text
    for wild in ({"actor": "%"}, {"actor": "old%hand"}, {"action": "org_tier"}):
        assert "org_x" not in client.get("/console/audit", params=wild).text

    found = client.get(
        "/admin/v1/audit", params={"action": "org.", "actor": "old_"}, headers=admin
    ).json()["data"]
    assert [(e["actor"], e["target"]) for e in found] == [("cli:old_hand", "org_x")]
    too_long = client.get("/admin/v1/audit", params={"actor": "x" * 81}, headers=admin)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "actor"
