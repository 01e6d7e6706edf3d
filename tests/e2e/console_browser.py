"""What the console's browser tests share: Debian's headless Chromium driven by Playwright
(``/usr/bin/chromium``, installed by scripts/test-services.sh; never Playwright's own
download), a live server with an operator made by the CLI, signing in, and screenshots
for docs/screenshots/.

Without chromium (or the ``playwright`` package) the tests skip, saying why, except under
CI (``CI`` set), where they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.live import LiveServer

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
    """Chromium for the module's tests (import it into a test module to use it)."""
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


def start_with_operator(server: LiveServer) -> LiveServer:
    """Start ``server`` and make the operator ``EMAIL`` with the CLI, as a newcomer would."""
    server.start()
    made = subprocess.run(
        [sys.executable, "-m", "openmaas", "users", "create", "--email", EMAIL, "--operator",
         "--password-stdin"],
        env=server.env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return server


def open_page(browser: Any, live: LiveServer, locale: str, viewport: dict[str, int]) -> Any:
    context = browser.new_context(locale=locale, viewport=viewport, base_url=live.base_url)
    return context.new_page()


def sign_in(page: Any, email_label: str, password_label: str, button: str) -> None:
    """The operator signs in from the console's front page, in the page's language."""
    page.goto("/console")
    assert page.url.endswith("/console/sign-in")
    page.get_by_label(email_label).fill(EMAIL)
    page.get_by_label(password_label, exact=True).fill(PASSWORD)
    page.get_by_role("button", name=button).click()
    page.wait_for_url("**/console/orgs/*/keys")


def shot(page: Any, name: str, **options: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, **options)
