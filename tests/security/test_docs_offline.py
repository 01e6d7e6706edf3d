"""/docs and /redoc work without the internet: every script, style and icon they load is
served by this server (the pinned fastapi-offline files), none from a CDN."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from tests.security.world import security_settings

REFERENCE = re.compile(
    r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url|redoc_url)\s*:\s*['"]([^'"]+)"""
)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_page_loads_nothing_from_another_host(tmp_path: Path, page: str) -> None:
    client = TestClient(create_app(security_settings(tmp_path)))  # no lifespan: no engines
    reply = client.get(page)
    assert reply.status_code == 200
    html = reply.text
    assert re.findall(r"https?://", html) == [], "the page names another host"
    referenced = [a or b for a, b in REFERENCE.findall(html)]
    assets = [r for r in referenced if r.startswith("/docs-assets/")]
    assert any(a.endswith(".js") for a in assets), referenced
    for asset in referenced:
        assert asset.startswith("/"), asset  # this server's own paths only
        if asset == "/openapi.json":
            continue
        served = client.get(asset)
        assert served.status_code == 200 and served.content, asset


def test_swagger_ui_asks_no_validator_service(tmp_path: Path) -> None:
    """Swagger UI would send the document's URL to validator.swagger.io for its badge."""
    html = TestClient(create_app(security_settings(tmp_path))).get("/docs").text
    assert '"validatorUrl": null' in html
