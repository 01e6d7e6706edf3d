"""The console's operator pages, members and invitations in a real browser (Playwright
driving Debian's ``/usr/bin/chromium``, as ``test_console_browser.py``) against a live
server: an operator made by the CLI tops up an organization and sets its tier, edits the
catalog and sees an error on its line, invites a person who signs up through the
invitation (open sign-up off) and sees the organization; the platform overview shows the
requests of a key; both languages; phone width.
Screenshots of the new pages go to docs/screenshots/ (linked from docs/console.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.console_browser import (
    DESKTOP,
    EMAIL,
    PASSWORD,
    PHONE,
    open_page,
    shot,
    start_with_operator,
)
from tests.e2e.live import FAKE_MODELS, LiveServer
from tests.support.waiting import wait_until

NEWCOMER = "new.person@example.com"
NEW_PASSWORD = "a password of my own"
BROKEN = """models:
  - name: chat-a
    kind: chat
    context_length: lots
    deployments:
      - id: one
        engine: fake
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of its own (open sign-up off), an operator made by the CLI and a tier."""
    server = LiveServer(
        tmp_path_factory.mktemp("console-ops") / "home",
        embedded_models=False,
        fake_models=FAKE_MODELS,
    )
    start_with_operator(server)
    server.cli("tiers", "set", "Gold", "--rpm", "600")
    server.cli("prices", "set", "fake-echo", "--input", "2", "--cached-input", "0.5",
               "--output", "8")  # fmt: skip
    yield server
    server.stop()


def _sign_in(page: Any, email: str, password: str, labels: tuple[str, str, str]) -> None:
    page.goto("/console/sign-in")
    page.get_by_label(labels[0]).fill(email)
    page.get_by_label(labels[1], exact=True).fill(password)
    page.get_by_role("button", name=labels[2], exact=True).click()
    page.wait_for_url("**/console/orgs/*/keys")


EN = ("Email", "Password", "Sign in")
ZH = ("邮箱", "密码", "登录")


def test_an_operator_tops_up_sets_a_tier_edits_the_catalog_and_invites(
    browser: Any,
    live: LiveServer,
) -> None:
    page = open_page(browser, live, "en-US", DESKTOP)
    _sign_in(page, EMAIL, PASSWORD, EN)
    page.get_by_role("link", name="Organizations", exact=True).click()
    page.get_by_role("heading", name="Organizations", exact=True).wait_for()
    page.get_by_role("link", name="default", exact=True).click()
    page.get_by_label("Amount in CNY").fill("500")
    page.get_by_role("button", name="Add funds", exact=True).click()
    page.get_by_role("status").get_by_text("The top-up is credited.").wait_for()
    assert page.locator("[data-figure=available]").inner_text() == "CN¥500.00"
    page.locator("#tier").select_option("Gold")
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_role("status").get_by_text("The terms are saved.").wait_for()
    assert page.locator("[data-figure=tier]").inner_text() == "Gold"
    shot(page, "ops-org-en")
    page.get_by_role("link", name="Organizations", exact=True).click()
    page.locator("tr[data-org=default]").get_by_text("Gold").wait_for()
    shot(page, "ops-orgs-en")

    page.get_by_role("link", name="Catalog", exact=True).click()
    page.get_by_label("Document", exact=True).fill(BROKEN)
    page.get_by_role("button", name="Check", exact=True).click()
    bad = page.locator("tr.bad")
    bad.wait_for()
    assert bad.get_attribute("data-line") == "4"  # context_length: lots
    assert "context_length: lots" in bad.inner_text()
    assert "context_length" in bad.locator("td.issue").inner_text()
    shot(page, "ops-catalog-en")
    page.get_by_label("Document", exact=True).fill(BROKEN.replace("lots", "4096"))
    page.get_by_role("button", name="Save and apply", exact=True).click()
    page.get_by_role("status").get_by_text("Saved and applied").wait_for()
    page.get_by_role("link", name="Deployments", exact=True).click()
    page.locator("[data-model=chat-a]").wait_for()
    shot(page, "ops-models-en")
    page.get_by_role("link", name="Prices", exact=True).click()
    page.get_by_role("cell", name="fake-echo").first.wait_for()
    shot(page, "ops-prices-en")
    page.get_by_role("link", name="Users", exact=True).click()
    page.locator(f"tr[data-user='{EMAIL}']").wait_for()
    shot(page, "ops-users-en")

    page.goto("/console")
    page.get_by_role("link", name="Members", exact=True).click()
    page.get_by_label("Email", exact=True).fill(NEWCOMER)
    page.get_by_label("Role", exact=True).select_option("member")
    page.get_by_role("button", name="Invite", exact=True).click()
    link = page.locator("#invite-link")
    url = link.input_value()
    assert "/console/invitation?token=" in url
    page.get_by_role("button", name="Copy", exact=True).click()
    shot(page, "members-en", mask=[link])
    page.context.close()

    newcomer = open_page(browser, live, "zh-CN", DESKTOP)  # open sign-up is off: the link works
    newcomer.goto(url)
    newcomer.get_by_role("heading", name="邀请", exact=True).wait_for()
    assert "default" in newcomer.locator("main").inner_text()
    shot(newcomer, "invitation-zh-CN")
    newcomer.get_by_label("密码", exact=True).fill(NEW_PASSWORD)
    newcomer.get_by_label("再次输入密码").fill(NEW_PASSWORD)
    newcomer.get_by_role("button", name="创建账号", exact=True).click()
    newcomer.wait_for_url("**/console/orgs/*/keys")
    who = newcomer.locator(".who").inner_text()
    assert NEWCOMER in who and "default" in who and "成员" in who
    newcomer.goto(url)  # used: it works once
    newcomer.get_by_text("此邀请无效").wait_for()
    newcomer.context.close()


def test_the_operator_pages_in_chinese_and_at_phone_width(
    browser: Any,
    live: LiveServer,
) -> None:
    page = open_page(browser, live, "zh-CN", DESKTOP)
    _sign_in(page, EMAIL, PASSWORD, ZH)
    page.get_by_role("link", name="组织", exact=True).click()
    page.get_by_role("heading", name="组织", exact=True).wait_for()
    shot(page, "ops-orgs-zh-CN")
    page.get_by_role("link", name="default", exact=True).click()
    page.get_by_role("heading", name="充值", exact=True).wait_for()
    shot(page, "ops-org-zh-CN")
    page.get_by_role("link", name="目录编辑", exact=True).click()
    page.get_by_label("文档", exact=True).fill(BROKEN)
    page.get_by_role("button", name="检查", exact=True).click()
    page.locator("tr.bad").wait_for()
    shot(page, "ops-catalog-zh-CN")
    page.get_by_role("link", name="部署", exact=True).click()
    page.get_by_role("heading", name="模型与部署", exact=True).wait_for()
    shot(page, "ops-models-zh-CN")
    page.get_by_role("link", name="价格", exact=True).first.click()
    page.get_by_role("heading", name="价格", exact=True).wait_for()
    shot(page, "ops-prices-zh-CN")
    page.get_by_role("link", name="用户", exact=True).click()
    page.get_by_role("heading", name="用户", exact=True).wait_for()
    shot(page, "ops-users-zh-CN")
    page.goto("/console")
    page.get_by_role("link", name="成员", exact=True).click()
    page.get_by_role("heading", name="成员", exact=True).wait_for()
    shot(page, "members-zh-CN")
    members = page.url
    page.context.close()

    phone = open_page(browser, live, "zh-CN", PHONE)
    _sign_in(phone, EMAIL, PASSWORD, ZH)
    org = members.split("/orgs/")[1].split("/")[0]
    for path in ("operator/orgs", f"operator/orgs/{org}", "operator/catalog",
                 "operator/models", "operator/prices", "operator/users",
                 f"orgs/{org}/members"):  # fmt: skip
        phone.goto(f"/console/{path}")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} scrolls sideways at phone width ({width}px)"
    phone.goto(f"/console/operator/orgs/{org}")
    shot(phone, "ops-org-phone-zh-CN")
    phone.context.close()


def test_the_platform_overview_shows_the_requests_in_both_languages(
    browser: Any,
    live: LiveServer,
) -> None:
    live.cli("billing", "topup", "default", "100")  # the requests are priced
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=live.new_key(), max_retries=0)
    for _ in range(3):
        client.chat.completions.create(
            model="fake-echo", messages=[{"role": "user", "content": "hi"}]
        )
    page = open_page(browser, live, "en-US", DESKTOP)
    _sign_in(page, EMAIL, PASSWORD, EN)
    page.get_by_role("link", name="Overview", exact=True).click()
    page.get_by_role("heading", name="Platform overview", exact=True).wait_for()

    def rolled_up() -> bool:  # the roll-ups fold new records every OPENMAAS_ROLLUP_SECONDS
        page.reload()
        return bool(page.locator("[data-figure=requests]").inner_text() != "0")

    wait_until(rolled_up, what="the requests in the platform overview", timeout=60, interval=1)
    assert page.locator("[data-figure=revenue-CNY]").inner_text().startswith("CN¥")
    assert page.locator("[data-overview=orgs]").get_by_role("link", name="default").count() == 1
    shot(page, "operator-overview-en")
    page.get_by_label("Language").select_option("zh-CN")
    page.get_by_role("heading", name="平台概览", exact=True).wait_for()
    shot(page, "operator-overview-zh-CN")
    page.context.close()

    phone = open_page(browser, live, "zh-CN", PHONE)
    _sign_in(phone, EMAIL, PASSWORD, ZH)
    phone.goto("/console/operator")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the overview scrolls sideways at phone width ({width}px)"
    phone.context.close()
