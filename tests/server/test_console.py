"""The console (server/console/pages.py) under a TestClient: signing in and out, cookie
flags, session fixation, CSRF, lockout, password change, the pages in both languages, and
the CSP header."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.people import PASSWORD, World, csrf_of, make_world, post_form, sign_in
from tests.support.waiting import wait_until

FAKES = {"fake-chat": {"text": "one two three"}}


def console_settings(tmp_path: Path, **more: object) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url="sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db"),
        embedded_models=False,
        fake_models=FAKES,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[TestClient, World]]:
    settings = console_settings(tmp_path, console_lockout_failures=3)
    world = asyncio.run(make_world(settings))
    app = create_app(settings)
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=True) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        yield client, world


def test_sign_in_sets_a_new_httponly_samesite_secure_session_cookie(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    client.cookies.set("openmaas_session", "chosen-by-an-attacker", path="/console")
    signed = sign_in(client, "member@example.com")
    assert signed.status_code == 303
    cookie = next(c for c in signed.headers.get_list("set-cookie") if "openmaas_session=" in c)
    token = cookie.split(";")[0].split("=", 1)[1]
    assert token != "chosen-by-an-attacker" and len(token) >= 40
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=lax" in flags and "secure" in flags
    assert "path=/console" in flags
    page = client.get("/console/orgs/" + world.org_a + "/keys")
    assert page.status_code == 200 and "member@example.com" in page.text


def test_over_plain_http_the_cookie_is_not_secure(tmp_path: Path) -> None:
    settings = console_settings(tmp_path)
    asyncio.run(make_world(settings))
    with TestClient(create_app(settings)) as client:  # http://testserver
        signed = sign_in(client, "member@example.com")
        cookie = next(c for c in signed.headers.get_list("set-cookie") if "openmaas_session" in c)
        assert "secure" not in cookie.lower() and "httponly" in cookie.lower()


def test_a_wrong_password_says_so_and_repeated_failures_lock_the_account(
    console: tuple[TestClient, World],
) -> None:
    client, _ = console
    wrong = sign_in(client, "member@example.com", "not the password")
    assert wrong.status_code == 401 and "The email or the password is not right." in wrong.text
    assert "openmaas_session" not in client.cookies
    sign_in(client, "member@example.com", "not the password")
    locked = sign_in(client, "member@example.com", "not the password")
    assert "Too many failed sign-ins. Try again in 15 minutes" in locked.text
    still = sign_in(client, "member@example.com")
    assert still.status_code == 401 and "Too many failed sign-ins" in still.text


def test_every_unsafe_request_needs_the_sessions_csrf_token(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    no_token = client.post(keys, data={"name": "x"}, follow_redirects=False)
    assert no_token.status_code == 403
    wrong = client.post(keys, data={"name": "x", "csrf": "guess"}, follow_redirects=False)
    assert wrong.status_code == 403
    token = csrf_of(client.get(keys))
    other_site = client.post(
        keys,
        data={"name": "x", "csrf": token},
        headers={"origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert other_site.status_code == 403
    made = client.post(keys, data={"name": "x", "csrf": token}, follow_redirects=False)
    assert made.status_code == 201
    # the sign-in form too: its token is a cookie of its own, double-submitted
    client.cookies.clear()
    forged = client.post(
        "/console/sign-in",
        data={"email": "member@example.com", "password": PASSWORD, "csrf": "forged"},
        follow_redirects=False,
    )
    assert forged.status_code == 403


def test_a_key_is_shown_once_listed_with_its_creator_and_revoked(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    made = post_form(client, keys, keys, name="laptop")
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    token = made.text.split('id="new-key" class="mono" readonly value="')[1].split('"')[0]
    key_id = token.split(".")[0]
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    listing = client.get(keys).text
    assert token not in listing and key_id in listing and "member@example.com" in listing
    assert "CLI or admin key" in listing  # the key made by the CLI
    revoked = post_form(client, keys, f"{keys}/{key_id}/revoke")
    assert revoked.status_code == 303
    shown = client.get(revoked.headers["location"]).text
    assert f"Key {key_id} is revoked" in shown

    def refused() -> bool:
        reply = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        return reply.status_code == 401

    wait_until(refused, what="the revoked key refused")


def test_sign_out_ends_the_session(console: tuple[TestClient, World]) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    token = client.cookies["openmaas_session"]
    out = post_form(client, "/console/password", "/console/sign-out")
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
    client.cookies.set("openmaas_session", token, path="/console")  # replayed
    again = client.get(f"/console/orgs/{world.org_a}/keys", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"].startswith("/console/sign-in")


def test_a_password_change_ends_every_session(console: tuple[TestClient, World]) -> None:
    client, world = console
    sign_in(client, "viewer@example.com")
    old = client.cookies["openmaas_session"]
    wrong = post_form(
        client, "/console/password", "/console/password",
        current="nope nope nope", new="a new passphrase", new2="a new passphrase",
    )  # fmt: skip
    assert wrong.status_code == 400 and "The current password is not right." in wrong.text
    changed = post_form(
        client, "/console/password", "/console/password",
        current=PASSWORD, new="a new passphrase", new2="a new passphrase",
    )  # fmt: skip
    assert changed.headers["location"] == "/console/sign-in?changed=1"
    client.cookies.set("openmaas_session", old, path="/console")
    assert client.get("/console/password", follow_redirects=False).status_code == 303
    assert sign_in(client, "viewer@example.com").status_code == 401
    assert sign_in(client, "viewer@example.com", "a new passphrase").status_code == 303


def test_pages_in_chinese_by_the_browsers_language_or_the_switch(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    balance = f"/console/orgs/{world.org_a}/balance"
    english = client.get(balance, headers={"accept-language": "en-US,en;q=0.9"})
    assert '<html lang="en">' in english.text and "CN¥1,234.50" in english.text
    chinese = client.get(balance, headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert '<html lang="zh-CN">' in chinese.text and "可用" in chinese.text
    assert "¥1,234.50" in chinese.text and "CN¥" not in chinese.text
    switched = post_form(client, balance, "/console/language", lang="zh-CN", next=balance)
    assert switched.headers["location"] == balance
    assert "可用" in client.get(balance, headers={"accept-language": "en"}).text
    away = post_form(client, balance, "/console/language", lang="en", next="https://evil.example")
    assert away.headers["location"] == "/console"  # only console pages


def test_models_with_prices_in_both_languages(console: tuple[TestClient, World]) -> None:
    client, world = console
    sign_in(client, "viewer@example.com")
    models = f"/console/orgs/{world.org_a}/models"
    page = client.get(models, headers={"accept-language": "en"}).text
    assert "fake-chat" in page and "CN¥2.00" in page and "CN¥0.50" in page and "CN¥8.00" in page
    page = client.get(models, headers={"accept-language": "zh"}).text
    assert "输入 / 百万 token" in page and "¥8.00" in page


def test_console_pages_carry_a_strict_csp_and_no_inline_code(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    for path in ("/console/sign-in", f"/console/orgs/{world.org_a}/keys", "/console/nowhere"):
        reply = client.get(path)
        csp = reply.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert "<script>" not in reply.text and " style=" not in reply.text
        assert " on" + "click=" not in reply.text


def test_sign_up_is_off_by_default_and_makes_an_owner_when_on(tmp_path: Path) -> None:
    settings = console_settings(tmp_path)
    asyncio.run(make_world(settings))
    with TestClient(create_app(settings)) as client:
        assert client.get("/console/sign-up").status_code == 404
    on = settings.model_copy(update={"console_signup": True})
    with TestClient(create_app(on)) as client:
        made = post_form(
            client, "/console/sign-up", "/console/sign-up",
            email="new@example.com", password=PASSWORD, password2=PASSWORD,
        )  # fmt: skip
        assert made.status_code == 303
        page = client.get(made.headers["location"])
        assert "new@example.com" in page.text and "Your role: owner" in page.text


def test_the_static_files_are_served_by_the_server_itself(
    console: tuple[TestClient, World],
) -> None:
    client, _ = console
    assert "DOMContentLoaded" in client.get("/console/static/console.js").text
    assert ":focus-visible" in client.get("/console/static/console.css").text


def test_operators_read_the_audit_log_with_each_persons_changes(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    post_form(client, keys, keys, name="audited")
    assert "/console/audit" not in client.get(keys).text  # no link for non-operators
    sign_in(client, "ops@example.com")
    page = client.get("/console/audit", params={"action": "key.create"}).text
    assert "(member@example.com)" in page and "audited" in page
    assert "user.create" not in page  # filtered by action
    everything = client.get("/console/audit").text
    assert "user.create" in everything and "member.set" in everything and "cli:test" in everything
    assert "No entries match." in client.get("/console/audit", params={"actor": "nobody"}).text


def test_signing_in_returns_to_the_page_asked_for_and_only_to_a_console_page(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    balance = f"/console/orgs/{world.org_a}/balance"
    asked = client.get(balance, follow_redirects=False)
    assert asked.headers["location"] == f"/console/sign-in?next={balance}"
    page = client.get(asked.headers["location"])
    action = page.text.split('<form method="post" action="')[2].split('"')[0]
    signed = client.post(
        action,
        data={"email": "member@example.com", "password": PASSWORD, "csrf": csrf_of(page)},
        follow_redirects=False,
    )
    assert signed.headers["location"] == balance
    client.cookies.clear()
    page = client.get("/console/sign-in", params={"next": "//evil.example/x"})
    signed = client.post(
        "/console/sign-in?next=//evil.example/x",
        data={"email": "member@example.com", "password": PASSWORD, "csrf": csrf_of(page)},
        follow_redirects=False,
    )
    assert signed.headers["location"] == "/console"


def test_a_key_made_with_a_monthly_budget_shows_it_and_a_bad_budget_makes_no_key(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    bad = post_form(client, keys, keys, name="broke", budget="a lot")
    assert bad.status_code == 400 and "The budget must be an amount" in bad.text
    assert ">broke<" not in client.get(keys).text
    made = post_form(client, keys, keys, name="capped", budget="5")
    assert made.status_code == 201
    row = client.get(keys).text.split(">capped<")[1].split("</tr>")[0]
    assert "CN¥0.00 of CN¥5.00" in row
    sign_in(client, "ops@example.com")
    assert "billing.budget_set" in client.get("/console/audit", params={"actor": "user:"}).text
