"""The ``openmaas`` command and per-organization usage, against the live server."""

from __future__ import annotations

import httpx
import openai

from tests.e2e.live import LiveServer


def test_keys_create_list_revoke(live: LiveServer) -> None:
    key = live.new_key(name="ci-bot")
    key_id, secret = key.split(".")
    assert key.count(".") == 1
    listing = live.cli("keys", "list").stdout
    assert key_id in listing and "ci-bot" in listing
    assert secret not in listing
    live.cli("keys", "revoke", key_id)
    assert key_id in live.cli("keys", "list").stdout
    unknown = live.cli("keys", "revoke", "om0123456789abcdef", check=False)
    assert unknown.returncode != 0 and "No API key" in unknown.stderr


def test_keys_for_an_unknown_org_are_refused(live: LiveServer) -> None:
    result = live.cli("keys", "create", "--org", "nobody", "--name", "x", check=False)
    assert result.returncode != 0 and "No organization" in result.stderr


def test_each_organization_sees_only_its_own_usage(live: LiveServer) -> None:
    live.cli("orgs", "create", "acme")
    live.cli("orgs", "create", "globex")
    assert "acme" in live.cli("orgs", "list").stdout
    acme = live.new_key(org="acme", name="a")
    globex = live.new_key(org="globex", name="g")

    def chat(key: str, words: str, n: int) -> None:
        client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=key, max_retries=0)
        for _ in range(n):
            client.chat.completions.create(
                model="fake-echo", messages=[{"role": "user", "content": words}]
            )

    chat(acme, "one two", 2)
    chat(globex, "one two three", 1)

    def usage(key: str) -> dict:
        response = httpx.get(
            f"{live.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200
        return response.json()

    acme_usage, globex_usage = usage(acme), usage(globex)
    assert acme_usage["organization"] != globex_usage["organization"]
    assert [
        (d["model"], d["requests"], d["prompt_tokens"], d["completion_tokens"])
        for d in acme_usage["data"]
    ] == [("fake-echo", 2, 4, 10)]
    assert [(d["model"], d["requests"], d["prompt_tokens"]) for d in globex_usage["data"]] == [
        ("fake-echo", 1, 3)
    ]

    table = live.cli("usage", "--org", "acme").stdout
    assert "fake-echo" in table and "10" in table
    bad_date = httpx.get(
        f"{live.base_url}/v1/usage",
        params={"start_date": "yesterday"},
        headers={"Authorization": f"Bearer {acme}"},
    )
    assert bad_date.status_code == 400 and bad_date.json()["error"]["param"] == "start_date"
