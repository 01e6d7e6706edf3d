"""The console in a real browser: Playwright driving Debian's headless Chromium
(``/usr/bin/chromium``, installed by scripts/test-services.sh; never Playwright's own
download) against a live server. An operator made by the CLI signs in, creates a key, the
key works with the official ``openai`` SDK, is revoked in the browser and then refused;
the pages in both languages; phone width. Screenshots of the main pages go to
docs/screenshots/ (linked from the README and docs/console.md).

Without chromium (or the ``playwright`` package) the tests skip, saying why, except under
CI (``CI`` set), where they fail."""

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
    sign_in,
    start_with_operator,
)
from tests.e2e.live import FAKE_MODELS, LiveServer
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of its own, with an operator made by the CLI, a price and some money."""
    server = LiveServer(
        tmp_path_factory.mktemp("console") / "home", embedded_models=False, fake_models=FAKE_MODELS
    )
    start_with_operator(server)
    server.cli("prices", "set", "fake-echo", "--input", "2", "--cached-input", "0.5",
               "--output", "8")  # fmt: skip
    server.cli("billing", "topup", "default", "1234.5")
    yield server
    server.stop()


def test_an_operator_creates_a_key_uses_it_and_revokes_it(browser: Any, live: LiveServer) -> None:
    page = open_page(browser, live, "en-US", DESKTOP)
    page.goto("/console/sign-in")
    shot(page, "sign-in-en")
    sign_in(page, "Email", "Password", "Sign in")
    page.get_by_role("heading", name="API keys").wait_for()

    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key")
    token = secret.input_value()
    assert token.startswith("om") and "." in token
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    shot(page, "keys-en", mask=[secret])

    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=token, max_retries=0)
    reply = client.chat.completions.create(
        model="fake-echo", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "one two three four five"

    page.goto(page.url)  # the list again: the secret is never shown twice
    assert token not in page.content()
    row = page.locator("tr", has_text="laptop")
    assert EMAIL in row.inner_text()  # its creator
    row.get_by_role("button", name="Revoke key laptop").click()
    assert (
        page.get_by_role("status").inner_text().endswith("every server refuses it within a second.")
    )

    def refused() -> bool:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        return False

    wait_until(refused, what="the revoked key refused by the server")
    page.context.close()


def test_the_pages_in_both_languages_and_at_phone_width(browser: Any, live: LiveServer) -> None:
    english = open_page(browser, live, "en-US", DESKTOP)
    sign_in(english, "Email", "Password", "Sign in")
    english.get_by_role("link", name="Models").click()
    english.get_by_role("cell", name="CN¥8.00").wait_for()
    shot(english, "models-en")
    english.get_by_role("link", name="Balance").click()
    assert english.locator("[data-figure=available]").inner_text() == "CN¥1,234.50"
    shot(english, "balance-en")
    english.get_by_role("link", name="Audit log").click()  # the platform's: operators only
    english.get_by_role("cell", name="user.create").first.wait_for()
    shot(english, "audit-en")
    english.go_back()  # to the balance
    english.get_by_label("Language").select_option("zh-CN")  # the switch, kept in a cookie
    english.get_by_role("heading", name="余额").wait_for()  # the same page, in Chinese
    english.context.close()

    chinese = open_page(browser, live, "zh-CN", DESKTOP)  # the browser's language
    chinese.goto("/console/sign-in")
    chinese.get_by_role("heading", name="登录").wait_for()
    shot(chinese, "sign-in-zh-CN")
    sign_in(chinese, "邮箱", "密码", "登录")
    chinese.get_by_role("heading", name="API 密钥").wait_for()
    shot(chinese, "keys-zh-CN")
    chinese.get_by_role("link", name="模型").click()
    chinese.get_by_role("cell", name="¥8.00").first.wait_for()
    shot(chinese, "models-zh-CN")
    chinese.get_by_role("link", name="余额").click()
    assert chinese.locator("[data-figure=available]").inner_text() == "¥1,234.50"
    shot(chinese, "balance-zh-CN")
    chinese.get_by_role("link", name="审计日志").click()
    chinese.get_by_role("cell", name="key.revoke").first.wait_for()
    shot(chinese, "audit-zh-CN")
    chinese.context.close()

    phone = open_page(browser, live, "zh-CN", PHONE)
    sign_in(phone, "邮箱", "密码", "登录")
    for path in ("keys", "models", "balance"):
        phone.goto(phone.url.rsplit("/", 1)[0] + "/" + path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} scrolls sideways at phone width ({width}px)"
    phone.goto(phone.url.rsplit("/", 1)[0] + "/keys")
    shot(phone, "keys-phone-zh-CN")
    phone.context.close()


def test_signing_in_and_the_pages_work_by_keyboard(browser: Any, live: LiveServer) -> None:
    page = open_page(browser, live, "en-US", DESKTOP)
    page.goto("/console/sign-in")
    assert page.evaluate("document.activeElement.id") == "email"  # focused on arrival
    page.keyboard.type(EMAIL)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/orgs/*/keys")
    page.keyboard.press("Tab")  # the first stop of every page: the skip link
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")  # then the page's own controls, with their labels
    assert page.evaluate("document.activeElement.labels[0].textContent") == "Name"
    page.keyboard.type("by keyboard")
    page.keyboard.press("Enter")
    page.locator("#new-key").wait_for()
    page.context.close()
