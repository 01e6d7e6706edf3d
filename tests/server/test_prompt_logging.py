"""Prompt logging (``serving/transcripts.py``): off for every organization until an operator
turns it on for one (admin API, CLI, console); then each of that organization's generations
is logged once, on the ``openmaas.prompts`` logger, with its messages and the answer sent,
streamed or not, in every protocol; never another organization's, never an embedding."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.cli import main
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.serving.transcripts import PROMPT_LOGGER
from openmaas.settings import Settings

FAKES = {"fake-echo": {"text": "one two three four", "reasoning": "thinking first"}}
SECRET_A = "org A asks about the lighthouse 51c2"
SECRET_B = "org B asks about the harbour 9e07"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", embedded_models=False, fake_models=FAKES)


async def _keys(settings: Settings) -> dict[str, str]:
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("cli:test")
        a = await accounts.create_org(NewOrganization(name="org-a"))
        b = await accounts.create_org(NewOrganization(name="org-b"))
        return {
            "a": (await accounts.issue_key(a.id, "app")).token,
            "b": (await accounts.issue_key(b.id, "app")).token,
            "admin": (await accounts.issue_key(a.id, "ops", "admin")).token,
            "org_a": a.id,
        }


def _prompt_logs(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.prompt_log for r in caplog.records if r.name == PROMPT_LOGGER]  # type: ignore[attr-defined]


def _chat(client: TestClient, key: str, text: str, stream: bool = False) -> None:
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": text}], "stream": stream}
    reply = client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert reply.status_code == 200


def test_only_the_organization_an_operator_chose_is_logged_prompt_and_answer(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    keys = asyncio.run(_keys(settings))
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        _chat(client, keys["a"], SECRET_A)  # off by default: nothing logged
        assert _prompt_logs(caplog) == []

        turned = client.patch("/admin/v1/orgs/org-a", json={"prompt_logging": True}, headers=admin)
        assert turned.status_code == 200 and turned.json()["prompt_logging"] is True
        refused = client.patch(
            "/admin/v1/orgs/org-a", json={"prompt_logging": "yes"}, headers=admin
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt_logging"

        _chat(client, keys["a"], SECRET_A)
        _chat(client, keys["a"], SECRET_A + " streamed", stream=True)
        _chat(client, keys["b"], SECRET_B)
        reply = client.post(
            "/v1/messages",
            json={"model": "fake-echo", "max_tokens": 50, "stream": True,
                  "messages": [{"role": "user", "content": SECRET_A + " anthropic"}]},
            headers={"x-api-key": keys["a"]},
        )  # fmt: skip
        assert reply.status_code == 200
        bearer = {"Authorization": f"Bearer {keys['a']}"}
        zhipu = client.post(
            "/api/paas/v4/chat/completions",
            json={
                "model": "fake-echo",
                "messages": [{"role": "user", "content": SECRET_A + " zhipu"}],
            },
            headers=bearer,
        )
        assert zhipu.status_code == 200
        responses = client.post(
            "/v1/responses",
            json={"model": "fake-echo", "input": SECRET_A + " responses", "store": False},
            headers=bearer,
        )
        assert responses.status_code == 200
        embedded = client.post(
            "/v1/embeddings",
            json={"model": "no-such-embedder", "input": SECRET_A},
            headers={"Authorization": f"Bearer {keys['a']}"},
        )
        assert embedded.status_code == 404

        logs = _prompt_logs(caplog)
        assert [log["messages"] for log in logs] == [
            [{"role": "user", "content": SECRET_A}],
            [{"role": "user", "content": SECRET_A + " streamed"}],
            [{"role": "user", "content": SECRET_A + " anthropic"}],
            [{"role": "user", "content": SECRET_A + " zhipu"}],
            [{"role": "user", "content": SECRET_A + " responses"}],
        ]
        endpoints = [log["endpoint"] for log in logs]
        assert endpoints[:3] == ["chat.completions", "chat.completions", "messages"]
        assert len(set(endpoints)) == 4  # Zhipu's and the Responses API's endpoints too
        for log in logs:
            assert log["org_id"] == keys["org_a"] and log["termination"] == "finished"
            [choice] = log["choices"]  # type: ignore[misc]
            assert choice["text"] == FAKES["fake-echo"]["text"]
            assert choice["reasoning"] == FAKES["fake-echo"]["reasoning"]
        logged = json.dumps(logs) + caplog.text
        assert SECRET_B not in logged  # org B never logged

        client.patch("/admin/v1/orgs/org-a", json={"prompt_logging": False}, headers=admin)
        _chat(client, keys["a"], "after it was turned off")
        assert len(_prompt_logs(caplog)) == 5
        audit = client.get("/admin/v1/audit", params={"action": "org.update"}, headers=admin).json()
        assert [e["after"].get("prompt_logging") for e in audit["data"]][:2] == [False, True]


def test_the_cli_turns_prompt_logging_on_and_off(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(_keys(settings))
    monkeypatch.setenv("OPENMAAS_HOME", str(settings.home))
    monkeypatch.setenv("OPENMAAS_EMBEDDED_MODELS", "false")
    cli = CliRunner()
    on = cli.invoke(main, ["orgs", "set", "org-a", "--prompt-logging", "on"])
    assert on.exit_code == 0 and "prompt_logging=on" in on.output
    off = cli.invoke(main, ["orgs", "set", "org-a", "--prompt-logging", "off"])
    assert off.exit_code == 0 and "prompt_logging=off" in off.output
    bad = cli.invoke(main, ["orgs", "set", "org-a", "--prompt-logging", "maybe"])
    assert bad.exit_code != 0
