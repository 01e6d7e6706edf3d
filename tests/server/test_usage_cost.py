"""What a priced request costs, as the caller sees it: /v1/usage adds up the charges."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.orgs import funded_key

CHAT = {"model": "fake-echo", "messages": [{"role": "user", "content": "three word prompt"}]}


def test_usage_reports_the_exact_cost_of_priced_requests(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        embedded_models=False,
        fake_models={"fake-echo": {"text": "one two three four"}},
    )
    key = asyncio.run(funded_key(settings, "fake-echo"))
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
        [row] = client.get("/v1/usage", headers=auth).json()["data"]
    # The fake reads 3 prompt tokens and writes 4: each line rounds up on its own, per
    # request (1.5 -> 2 micros, 5 micros), then requests add up exactly.
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (3, 9, 12)
    assert (row["cost"], row["currency"]) == ("0.000021", "CNY")


BAD_DAYS = ["20261201", "2026-W48-2", "2026-12-1", "2026-02-30", "2026-12-01T00:00", " 2026-12-01"]


def test_usage_dates_are_days_as_yyyy_mm_dd(tmp_path: Path) -> None:
    """A date in another ISO 8601 form (which Python's parser accepts) was compared with the
    stored days as a string: ``20261201`` sorts before every ``2026-..`` day."""
    settings = Settings(
        home=tmp_path / "home", embedded_models=False, fake_models={"fake-echo": {"text": "a"}}
    )
    key = asyncio.run(funded_key(settings, "fake-echo"))
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
        for name in ("start_date", "end_date"):
            for value in BAD_DAYS:
                reply = client.get("/v1/usage", params={name: value}, headers=auth)
                assert reply.status_code == 400, (name, value, reply.text)
                error = reply.json()["error"]
                assert error["param"] == name and "YYYY-MM-DD" in error["message"]
        [today] = client.get("/v1/usage", headers=auth).json()["data"]
        day = {"start_date": today["date"], "end_date": today["date"]}
        assert len(client.get("/v1/usage", params=day, headers=auth).json()["data"]) == 1
        after = {"start_date": "9999-12-31"}
        assert client.get("/v1/usage", params=after, headers=auth).json()["data"] == []


def test_the_cli_usage_dates_are_days_as_yyyy_mm_dd(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from openmaas.cli import main

    env = {"OPENMAAS_HOME": str(tmp_path / "home"), "OPENMAAS_EMBEDDED_MODELS": "false"}
    for option in ("--since", "--until"):
        for value in BAD_DAYS:
            result = CliRunner().invoke(main, ["usage", option, value], env=env)
            assert result.exit_code == 2 and "YYYY-MM-DD" in result.output, result.output
    assert CliRunner().invoke(main, ["usage", "--since", "2026-12-01"], env=env).exit_code == 0
