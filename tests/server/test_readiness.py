"""/readyz: ready once nothing is loading; a failed model is reported, not fatal."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings


def test_a_failed_model_is_reported_without_making_the_server_unready(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        embedded_models=False,
        fake_models={"fine": {"text": "ok"}, "broken": {"fail_on_load": True}},
    )
    settings.home.mkdir()
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 200
        assert ready.json()["engines"] == {"fine": "ready", "broken": "failed"}
