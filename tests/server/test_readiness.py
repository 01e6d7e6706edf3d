"""/readyz: ready once nothing is loading; a failed model is reported, not fatal."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.waiting import wait_until


def test_a_failed_model_is_reported_without_making_the_server_unready(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        embedded_models=False,
        fake_models={"fine": {"text": "ok"}, "broken": {"fail_on_load": True}},
    )
    settings.home.mkdir()
    with TestClient(create_app(settings)) as client:
        ready = wait_until(
            lambda: (r := client.get("/readyz")).status_code == 200 and r, what="readiness"
        )
        assert ready.json()["engines"] == {"fine": "ready", "broken": "failed"}
