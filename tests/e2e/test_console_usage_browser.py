"""The usage and billing pages in a real browser (Playwright driving Debian's Chromium,
as tests/e2e/test_console_browser.py does): a key made in the console is used with the
official ``openai`` SDK against a live server, and its requests appear in the usage chart,
its table and the CSV; the billing page shows balance, pack and statement; both languages;
phone width. Screenshots go to docs/screenshots/ (linked from docs/console.md)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.console_browser import (
    DESKTOP,
    PHONE,
    open_page,
    shot,
    sign_in,
    start_with_operator,
)
from tests.e2e.live import FAKE_MODELS, LiveServer
from tests.support.waiting import wait_until

REQUESTS = 4  # chat completions made with the SDK (one of them streamed)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server that rolls usage up every half second, with an operator, a price, money and
    a resource pack."""
    server = LiveServer(
        tmp_path_factory.mktemp("console-usage") / "home",
        embedded_models=False,
        fake_models=FAKE_MODELS,
        rollup_seconds=0.5,
    )
    start_with_operator(server)
    server.cli("prices", "set", "fake-echo", "--input", "2", "--cached-input", "0.5",
               "--output", "8")  # fmt: skip
    server.cli("billing", "topup", "default", "1234.5")
    server.cli("billing", "packs", "grant", "default", "--model", "fake-slow", "--tokens",
               "1000000", "--expires", "2030-01-01")  # fmt: skip
    yield server
    server.stop()


def _requests_shown(page: Any) -> int:
    page.reload()
    return int(page.locator("[data-figure=requests]").inner_text().replace(",", ""))


def test_usage_made_with_the_sdk_appears_in_the_chart_and_the_csv(
    browser: Any, live: LiveServer
) -> None:
    page = open_page(browser, live, "en-US", DESKTOP)
    sign_in(page, "Email", "Password", "Sign in")
    page.get_by_label("Name").fill("charts")
    page.get_by_role("button", name="Create key").click()
    token = page.locator("#new-key").input_value()

    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=token, max_retries=0)
    for _ in range(REQUESTS - 1):
        client.chat.completions.create(
            model="fake-echo", messages=[{"role": "user", "content": "hi"}]
        )
    stream = client.chat.completions.create(
        model="fake-echo", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    page.get_by_role("link", name="Usage").click()
    page.get_by_role("heading", name="Usage").wait_for()
    wait_until(lambda: _requests_shown(page) == REQUESTS, what="the requests in the usage page")
    chart = page.get_by_role("img", name="Tokens per day, by model")
    assert chart.locator("rect title", has_text="fake-echo").count() == 1  # today's bar
    assert page.locator("table[data-usage=models] th", has_text="fake-echo").count() == 1
    assert page.locator("[data-figure=cost]").inner_text().startswith("CN¥")

    key_id = page.locator("#key option", has_text="charts").get_attribute("value")
    page.get_by_label("API key").select_option(key_id)
    with page.expect_navigation():  # the filtered page loaded before it is reloaded
        page.get_by_role("button", name="Show").click()
    assert _requests_shown(page) == REQUESTS  # every request was this key's
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8")))  # noqa: SIM115
    assert [r["model"] for r in rows] == ["fake-echo"]
    assert int(rows[0]["requests"]) == REQUESTS and int(rows[0]["errors"]) == 0
    assert int(rows[0]["output_tokens"]) == 5 * REQUESTS  # "one two three four five"
    page.goto(page.url.split("?")[0])
    shot(page, "usage-en")

    page.get_by_role("link", name="Billing").click()
    page.get_by_role("heading", name="Billing").wait_for()
    assert page.locator("table[data-billing=packs]").inner_text().count("fake-slow") == 1
    assert page.locator("table[data-billing=statement] tr").count() > 1
    shot(page, "billing-en")
    page.context.close()


def test_the_pages_in_chinese_and_at_phone_width(browser: Any, live: LiveServer) -> None:
    chinese = open_page(browser, live, "zh-CN", DESKTOP)
    sign_in(chinese, "邮箱", "密码", "登录")
    chinese.get_by_role("link", name="用量").click()
    chinese.get_by_role("heading", name="用量").wait_for()
    chinese.get_by_role("img", name="每日 tokens（按模型）").wait_for()
    assert chinese.locator("[data-figure=cost]").inner_text().startswith("¥")
    shot(chinese, "usage-zh-CN")
    chinese.get_by_role("link", name="账单").click()
    chinese.get_by_role("heading", name="账单").first.wait_for()
    shot(chinese, "billing-zh-CN")
    chinese.context.close()

    phone = open_page(browser, live, "zh-CN", PHONE)
    sign_in(phone, "邮箱", "密码", "登录")
    for path in ("usage", "billing"):
        phone.goto(phone.url.rsplit("/", 1)[0] + "/" + path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} scrolls sideways at phone width ({width}px)"
    phone.goto(phone.url.rsplit("/", 1)[0] + "/usage")
    shot(phone, "usage-phone-zh-CN")
    phone.context.close()
