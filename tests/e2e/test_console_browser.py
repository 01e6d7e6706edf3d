"""The console in a real browser: Playwright driving Debian's headless Chromium
(``/usr/bin/chromium``, installed by scripts/test-services.sh; never Playwright's own
download) against a live server. An operator made by the CLI signs in, creates a key, the
key works with the official ``openai`` SDK, is revoked in the browser and then refused;
the pages in both languages; phone width. Screenshots of the main pages go to
docs/screenshots/ (linked from the README and docs/console.md).

Without chromium (or the ``playwright`` package) the tests skip, saying why, except under
CI (``CI`` set), where they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.live import FAKE_MODELS, LiveServer
from tests.support.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
EMAIL = "ops@example.com"
PASSWORD = "correct horse battery staple"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def _unavailable() -> str | None:
    if not CHROMIUM.exists():
        return (
            f"Debian's chromium is not installed ({CHROMIUM}); scripts/test-services.sh "
            "installs it as root, or run: sudo apt-get install -y chromium"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI the browser tests must run", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of its own, with an operator made by the CLI, a price and some money."""
    server = LiveServer(
        tmp_path_factory.mktemp("console") / "home", embedded_models=False, fake_models=FAKE_MODELS
    )
    server.start()
    made = subprocess.run(
        [sys.executable, "-m", "openmaas", "users", "create", "--email", EMAIL, "--operator",
         "--password-stdin"],
        env=server.env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    server.cli("prices", "set", "fake-echo", "--input", "2", "--cached-input", "0.5",
               "--output", "8")  # fmt: skip
    server.cli("billing", "topup", "default", "1234.5")
    yield server
    server.stop()


def _page(browser: Any, live: LiveServer, locale: str, viewport: dict[str, int]) -> Any:
    context = browser.new_context(locale=locale, viewport=viewport, base_url=live.base_url)
    return context.new_page()


def _sign_in(page: Any, email_label: str, password_label: str, button: str) -> None:
    page.goto("/console")
    assert page.url.endswith("/console/sign-in")
    page.get_by_label(email_label).fill(EMAIL)
    page.get_by_label(password_label, exact=True).fill(PASSWORD)
    page.get_by_role("button", name=button).click()
    page.wait_for_url("**/console/orgs/*/keys")


def _shot(page: Any, name: str, **options: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, **options)


def test_an_operator_creates_a_key_uses_it_and_revokes_it(browser: Any, live: LiveServer) -> None:
    page = _page(browser, live, "en-US", DESKTOP)
    page.goto("/console/sign-in")
    _shot(page, "sign-in-en")
    _sign_in(page, "Email", "Password", "Sign in")
    page.get_by_role("heading", name="API keys").wait_for()

    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key")
    token = secret.input_value()
    assert token.startswith("om") and "." in token
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    _shot(page, "keys-en", mask=[secret])

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
    english = _page(browser, live, "en-US", DESKTOP)
    _sign_in(english, "Email", "Password", "Sign in")
    english.get_by_role("link", name="Models").click()
    english.get_by_role("cell", name="CN¥8.00").wait_for()
    _shot(english, "models-en")
    english.get_by_role("link", name="Balance").click()
    assert english.locator("[data-figure=available]").inner_text() == "CN¥1,234.50"
    _shot(english, "balance-en")
    english.get_by_role("link", name="Audit log").click()  # the platform's: operators only
    english.get_by_role("cell", name="user.create").first.wait_for()
    _shot(english, "audit-en")
    english.go_back()  # to the balance
    english.get_by_label("Language").select_option("zh-CN")  # the switch, kept in a cookie
    english.get_by_role("heading", name="余额").wait_for()  # the same page, in Chinese
    english.context.close()

    chinese = _page(browser, live, "zh-CN", DESKTOP)  # the browser's language
    chinese.goto("/console/sign-in")
    chinese.get_by_role("heading", name="登录").wait_for()
    _shot(chinese, "sign-in-zh-CN")
    _sign_in(chinese, "邮箱", "密码", "登录")
    chinese.get_by_role("heading", name="API 密钥").wait_for()
    _shot(chinese, "keys-zh-CN")
    chinese.get_by_role("link", name="模型").click()
    chinese.get_by_role("cell", name="¥8.00").first.wait_for()
    _shot(chinese, "models-zh-CN")
    chinese.get_by_role("link", name="余额").click()
    assert chinese.locator("[data-figure=available]").inner_text() == "¥1,234.50"
    _shot(chinese, "balance-zh-CN")
    chinese.get_by_role("link", name="审计日志").click()
    chinese.get_by_role("cell", name="key.revoke").first.wait_for()
    _shot(chinese, "audit-zh-CN")
    chinese.context.close()

    phone = _page(browser, live, "zh-CN", PHONE)
    _sign_in(phone, "邮箱", "密码", "登录")
    for path in ("keys", "models", "balance"):
        phone.goto(phone.url.rsplit("/", 1)[0] + "/" + path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} scrolls sideways at phone width ({width}px)"
    phone.goto(phone.url.rsplit("/", 1)[0] + "/keys")
    _shot(phone, "keys-phone-zh-CN")
    phone.context.close()


def test_signing_in_and_the_pages_work_by_keyboard(browser: Any, live: LiveServer) -> None:
    page = _page(browser, live, "en-US", DESKTOP)
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
