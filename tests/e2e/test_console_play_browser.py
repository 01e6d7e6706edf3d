"""The key form, the playground and the SDK page in a real browser (Playwright driving
Debian's headless Chromium, as tests/e2e/test_console_browser.py does) against a live
server with the embedded model: a key restricted to one model with an expiry, made in the
console, works with the official ``openai`` SDK for that model and is refused another; the
playground streams an answer from the embedded model, and a reasoning model's reasoning
apart from its answer, with its tool call; the SDK page gives this server's base URLs; both
languages, phone width. Screenshots go to docs/screenshots/."""

from __future__ import annotations

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
from tests.e2e.live import CHAT_MODEL, LiveServer

REASONER = "fake-reasoner"
FAKES = {
    REASONER: {
        "text": "It is sunny in Beijing.",
        "reasoning": "The user asks about the weather.",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Beijing"}}],
    }
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with the embedded model and a fake reasoning model, an operator, money."""
    server = LiveServer(tmp_path_factory.mktemp("console-play") / "home", fake_models=FAKES)
    start_with_operator(server)
    server.cli("billing", "topup", "default", "100")
    yield server
    server.stop()


def _send(page: Any, prompt: str) -> Any:
    """Send ``prompt`` in the playground; the assistant's turn once its stream ended."""
    turns = page.locator(".turn.assistant")
    before = turns.count()
    page.locator("#play-prompt").fill(prompt)
    page.locator("#play-send").click()
    page.wait_for_function(
        "n => { const t = document.querySelectorAll('.turn.assistant');"
        " return t.length > n && !t[t.length - 1].hasAttribute('aria-busy'); }",
        arg=before,
        timeout=120_000,
    )
    return turns.last


def test_a_key_for_one_model_with_an_expiry_made_in_the_console(
    browser: Any,
    live: LiveServer,
) -> None:
    page = open_page(browser, live, "en-US", DESKTOP)
    sign_in(page, "Email", "Password", "Sign in")
    page.get_by_label("Name").fill("one model")
    page.get_by_label(CHAT_MODEL).check()
    page.get_by_label("Expires").select_option("7d")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key")
    token = secret.input_value()
    row = page.locator("tr", has_text="one model")
    assert CHAT_MODEL in row.inner_text() and "until " in row.inner_text()
    shot(page, "keys-restricted-en", mask=[secret])

    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=token, max_retries=0)
    assert [m.id for m in client.models.list()] == [CHAT_MODEL]
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(
            model=REASONER, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert refused.value.code == "model_not_found"
    page.context.close()


def test_the_playground_streams_answers_reasoning_apart_and_tool_calls(
    browser: Any,
    live: LiveServer,
) -> None:
    page = open_page(browser, live, "en-US", DESKTOP)
    sign_in(page, "Email", "Password", "Sign in")
    page.get_by_role("link", name="Playground").click()
    page.get_by_role("heading", name="Playground").wait_for()
    page.get_by_label("Model", exact=True).select_option(CHAT_MODEL)
    page.get_by_label("Max tokens").fill("12")
    assert '"max_tokens": 12' in page.locator("#code-curl").inner_text().replace(":12", ": 12")
    turn = _send(page, "Say hello in three words.")
    assert turn.locator(".answer").inner_text().strip()  # the embedded model's answer
    assert turn.locator(".error").count() == 0
    assert "completion tokens" in turn.locator(".usage").inner_text()
    assert page.get_by_role("status").inner_text().startswith("A playground key was made")

    page.get_by_label("Model", exact=True).select_option(REASONER)
    turn = _send(page, "What is the weather in Beijing?")
    assert turn.locator(".reasoning-text").inner_text() == "The user asks about the weather."
    assert turn.locator(".answer").inner_text() == "It is sunny in Beijing."  # apart
    page.get_by_label("Offer a tool (get_weather) to see tool calls").check()
    turn = _send(page, "And tomorrow?")
    calls = turn.locator(".tool-calls").inner_text()
    assert "get_weather(" in calls and "Beijing" in calls
    code = page.locator("#code-openai").inner_text()
    assert f'base_url="{live.base_url}/v1"' in code and f'model="{REASONER}"' in code
    assert "tools=" in code
    shot(page, "playground-en")
    page.get_by_role("link", name="SDKs").click()
    assert page.locator("#url-openai").inner_text() == f"{live.base_url}/v1"
    assert page.locator("#url-zhipu").inner_text() == f"{live.base_url}/api/paas/v4/"
    shot(page, "sdk-en")
    page.context.close()


def test_the_playground_and_sdk_page_in_chinese_and_at_phone_width(
    browser: Any,
    live: LiveServer,
) -> None:
    chinese = open_page(browser, live, "zh-CN", DESKTOP)
    sign_in(chinese, "邮箱", "密码", "登录")
    chinese.get_by_role("link", name="体验中心").click()
    chinese.get_by_role("heading", name="体验中心").wait_for()
    chinese.get_by_label("模型", exact=True).select_option(REASONER)
    turn = _send(chinese, "北京天气怎么样？")
    assert turn.locator(".reasoning summary").inner_text() == "思考过程"
    assert turn.locator(".answer").inner_text() == "It is sunny in Beijing."
    shot(chinese, "playground-zh-CN")
    chinese.get_by_role("link", name="SDK 接入").click()
    chinese.get_by_role("heading", name="在代码中调用 API").wait_for()
    shot(chinese, "sdk-zh-CN")
    chinese.context.close()

    phone = open_page(browser, live, "zh-CN", PHONE)
    sign_in(phone, "邮箱", "密码", "登录")
    for path in ("playground", "sdk", "keys"):
        phone.goto(phone.url.rsplit("/", 1)[0] + "/" + path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} scrolls sideways at phone width ({width}px)"
    phone.goto(phone.url.rsplit("/", 1)[0] + "/playground")
    phone.get_by_label("模型", exact=True).select_option(REASONER)
    _send(phone, "你好")
    shot(phone, "playground-phone-zh-CN")
    phone.context.close()
