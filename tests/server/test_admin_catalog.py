"""``PUT /admin/v1/catalog`` and ``openmaas catalog apply`` refuse a document that declares
no models (it would remove every catalog model at once) unless told so explicitly:
``?allow_empty=true``, ``--allow-empty``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from openmaas.cli import main
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings

ONE_MODEL = """\
models:
  - name: kept
    deployments:
      - id: kept-1
        engine: fake
        script: {text: "kept words"}
"""


async def _first_run(settings: Settings) -> None:
    async with open_platform(settings) as platform:
        await platform.first_run()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Settings]]:
    settings = Settings(home=tmp_path / "home", embedded_models=False)
    asyncio.run(_first_run(settings))
    admin_key = settings.admin_key_file.read_text().strip()
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {admin_key}"}, settings


def _served(client: TestClient, headers: dict[str, str]) -> list[str]:
    return sorted(m["id"] for m in client.get("/admin/v1/models", headers=headers).json()["data"])


@pytest.mark.parametrize("empty", ["", "models: []\n", "# cleared\n"])
def test_an_empty_put_is_a_400_and_changes_nothing(
    site: tuple[TestClient, dict[str, str], Settings], empty: str
) -> None:
    client, headers, _ = site
    assert client.put("/admin/v1/catalog", content=ONE_MODEL, headers=headers).status_code == 200
    before = client.get("/admin/v1/catalog", headers=headers).json()
    audit = len(client.get("/admin/v1/audit", headers=headers).json()["data"])

    for query in ("", "?allow_empty=false"):
        refused = client.put(f"/admin/v1/catalog{query}", content=empty, headers=headers)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "allow_empty" and "every" in error["message"]
    assert client.get("/admin/v1/catalog", headers=headers).json() == before
    assert len(client.get("/admin/v1/audit", headers=headers).json()["data"]) == audit
    assert "kept" in _served(client, headers)

    allowed = client.put("/admin/v1/catalog?allow_empty=true", content=empty, headers=headers)
    assert allowed.status_code == 200, allowed.text
    assert "kept" not in _served(client, headers)


def test_the_cli_refuses_an_empty_file_unless_allowed(tmp_path: Path) -> None:
    env = {"OPENMAAS_HOME": str(tmp_path / "home"), "OPENMAAS_EMBEDDED_MODELS": "false"}
    full, empty = tmp_path / "catalog.yaml", tmp_path / "empty.yaml"
    full.write_text(ONE_MODEL)
    empty.write_text("")
    cli = CliRunner()
    assert cli.invoke(main, ["catalog", "apply", str(full)], env=env).exit_code == 0
    refused = cli.invoke(main, ["catalog", "apply", str(empty)], env=env)
    assert refused.exit_code == 1 and "--allow-empty" in refused.output
    shown = cli.invoke(main, ["catalog", "show"], env=env)
    assert "kept" in shown.output
    allowed = cli.invoke(main, ["catalog", "apply", str(empty), "--allow-empty"], env=env)
    assert allowed.exit_code == 0, allowed.output
    assert "kept" not in cli.invoke(main, ["catalog", "show"], env=env).output
