"""The catalog on a live server: a file edited while a stream is in flight, the document
stored through the admin API and the CLI, and upstream credentials that never show."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.live import LiveServer
from tests.engines.upstream import Behaviour, Upstream
from tests.support.waiting import wait_until

SECRET = "sk-cloud-Zq81vT3mXw0"
WORDS = " ".join(f"w{i}" for i in range(40))


def relay_model(name: str, deployment: str, base_url: str, extra: str = "") -> str:
    return f"""\
  - name: {name}
    deployments:
      - id: {deployment}
        engine: openai
        base_url: {base_url}
        upstream_model: upstream-model
        data_class: local
{extra}"""


def fake_model(name: str, text: str) -> str:
    return f"""\
  - name: {name}
    deployments:
      - {{id: {name}-1, engine: fake, script: {{text: "{text}"}}}}
"""


def chat(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(Behaviour(text=WORDS, token_delay=0.05)) as server:
        yield server


@pytest.fixture(scope="module")
def file_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path_factory.mktemp("catalog-file") / "home",
        catalog="models:\n" + relay_model("relay", "relay-1", upstream.base_url),
        embedded_models="false",
        catalog_poll_seconds=0.2,
        catalog_drain_seconds=30,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def db_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path_factory.mktemp("catalog-db") / "home",
        embedded_models="false",
        catalog_poll_seconds=0.2,
        log_level="DEBUG",
    )
    server.start()
    yield server
    server.stop()


def admin_client(server: LiveServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )


def model_ids(client: httpx.Client) -> set[str]:
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_a_file_edit_applies_while_a_stream_is_in_flight(
    file_server: LiveServer, upstream: Upstream
) -> None:
    path = file_server.catalog_file
    with admin_client(file_server) as client:
        assert model_ids(client) == {"relay"}
        body = {
            "model": "relay",
            "stream": True,
            "messages": [{"role": "user", "content": "count"}],
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if '"content":"w0' in line.replace(" ", ""))
            # Mid-stream: "relay" is removed and "newcomer" appears.
            path.write_text("models:\n" + fake_model("newcomer", "fresh words"))
            wait_until(lambda: model_ids(client) == {"newcomer"}, what="the edit applied")
            refused = chat(client, "relay")
            assert refused.status_code == 404
            assert chat(client, "newcomer").json()["choices"][0]["message"]["content"] == (
                "fresh words"
            )
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        text = json.loads(first[6:])["choices"][0]["delta"].get("content", "")
        for line in rest[:-1]:
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice["delta"].get("content") or ""
        assert text.split() == WORDS.split()  # the stream in flight was never cut
        assert upstream.requests[-1].completed

        catalog = client.get("/admin/v1/catalog").json()
        assert catalog["source"] == "file" and catalog["path"] == str(path)
        assert catalog["document"] == path.read_text()

        # An invalid edit: logged with its line and field, the running catalog stays.
        path.write_text("models:\n  - name: newcomer\n    deployments:\n      - id: x\n")
        wait_until(lambda: "catalog change refused" in file_server.stderr, what="the refusal")
        assert f"{path}:4: models[0].deployments[0].engine: is required" in file_server.stderr
        assert client.get("/admin/v1/catalog").json()["version"] == catalog["version"]
        assert chat(client, "newcomer").status_code == 200

        # A file-managed catalog is not changed through the API: 409.
        conflict = client.put("/admin/v1/catalog", content="models: []\n")
        assert conflict.status_code == 409
        assert "OPENMAAS_CATALOG_FILE" in conflict.json()["error"]["message"]


def test_the_stored_catalog_through_the_admin_api_with_a_credential(
    db_server: LiveServer, upstream: Upstream
) -> None:
    document = f"""\
models:
  - name: cloud
    aliases: [cloud-latest]
    deployments:
      - id: cloud-1
        engine: openai
        base_url: {upstream.base_url}
        upstream_model: upstream-model
        credential: cloud-key
"""
    bodies: list[str] = []
    with admin_client(db_server) as client:

        def call(method: str, path: str, **kwargs: object) -> httpx.Response:
            response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
            bodies.append(response.text + json.dumps(dict(response.headers)))
            return response

        empty = call("GET", "/admin/v1/catalog").json()
        assert (empty["source"], empty["version"], empty["document"]) == ("database", None, None)

        invalid = call("PUT", "/admin/v1/catalog", content=document)
        assert invalid.status_code == 400
        assert invalid.json()["errors"] == [
            {
                "line": 9,
                "field": "models[0].deployments[0].credential",
                "message": "no credential named 'cloud-key' (openmaas credentials set cloud-key)",
            }
        ]
        assert (
            call("PUT", "/admin/v1/credentials/cloud-key", json={"value": SECRET}).status_code
            == 204
        )
        listed = call("GET", "/admin/v1/credentials").json()["data"]
        assert [c["name"] for c in listed] == ["cloud-key"] and set(listed[0]) == {
            "name",
            "created_at",
            "updated_at",
        }

        applied = call("PUT", "/admin/v1/catalog", content=document)
        assert applied.status_code == 200, applied.text
        assert applied.json()["document"] == document and len(applied.json()["version"]) == 64
        assert "cloud" in model_ids(client)

        message = {"model": "cloud", "messages": [{"role": "user", "content": "hi"}]}
        answer = call("POST", "/v1/chat/completions", json=message)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"

        models = call("GET", "/admin/v1/models").json()
        assert models["catalog_version"] == applied.json()["version"]
        [cloud] = [m for m in models["data"] if m["id"] == "cloud"]
        assert cloud["aliases"] == ["cloud-latest"] and cloud["source"] == "catalog"
        [deployment] = cloud["deployments"]
        assert deployment["id"] == "cloud-1" and deployment["data_class"] == "external"
        assert (deployment["state"], deployment["breaker"], deployment["outstanding"]) == (
            "ready",
            "closed",
            0,
        )

        in_use = call("DELETE", "/admin/v1/credentials/cloud-key")
        assert in_use.status_code == 400 and "used by the catalog" in in_use.text

        orgs = call("GET", "/admin/v1/orgs").json()["data"]
        patched = call(
            "PATCH", f"/admin/v1/orgs/{orgs[0]['id']}", json={"data_policy": "local_only"}
        )
        assert patched.status_code == 200 and patched.json()["data_policy"] == "local_only"
        wrong = call("PATCH", f"/admin/v1/orgs/{orgs[0]['id']}", json={"data_policy": "cloud"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "data_policy"
        # local only now: the external deployment is never used for this organization.
        assert call("POST", "/v1/chat/completions", json=message).status_code == 503

        audit = call("GET", "/admin/v1/audit", params={"limit": 20}).json()["data"]
        actions = [e["action"] for e in audit]
        for action in ("credential.create", "catalog.apply", "org.update"):
            assert action in actions

        # Every GET endpoint, after the credential has been used.
        paths = call("GET", "/openapi.json").json()["paths"]
        org = orgs[0]["id"]
        for path, operations in paths.items():
            if "get" not in operations:
                continue
            path = path.replace("{org}", org).replace("{model_id}", "cloud")
            path = path.replace("{model}", "cloud")
            if "{" not in path:
                call("GET", path)
        assert len(bodies) > 20

    assert all(SECRET not in body for body in bodies)
    logs = db_server.stdout + db_server.stderr
    assert "cloud-key" in logs or "catalog applied" in logs  # the logs were written...
    assert SECRET not in logs  # ...and never hold the value
    raw = b"".join(p.read_bytes() for p in db_server.home.glob("openmaas.db*") if p.is_file())
    assert SECRET.encode() not in raw


def test_the_cli_stores_a_catalog_the_running_server_applies(
    db_server: LiveServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  - name: x\n    deployments:\n      - {id: a, engine: fake, weight: 0}\n"
    )
    checked = db_server.cli("catalog", "check", str(bad), check=False)
    assert checked.returncode == 1
    assert checked.stderr.strip() == f"{bad}:4: models[0].deployments[0].weight: must be ≥ 1"
    applied = db_server.cli("catalog", "apply", str(bad), check=False)
    assert applied.returncode == 1 and "weight: must be ≥ 1" in applied.stderr

    good = tmp_path / "good.yaml"
    good.write_text(
        "models:\n"
        + fake_model("from-cli", "cli words")
        + "  - name: vectors\n    kind: embedding\n    deployments:\n"
        "      - {id: v-1, engine: openai, base_url: 'http://127.0.0.1:9/v1', upstream_model: e}\n"
    )
    assert "valid, 2 models, 2 deployments" in db_server.cli("catalog", "check", str(good)).stdout
    db_server.cli("catalog", "apply", str(good))
    with admin_client(db_server) as client:
        wait_until(lambda: "from-cli" in model_ids(client), what="the stored catalog applied")
        assert chat(client, "from-cli").json()["choices"][0]["message"]["content"] == "cli words"
        assert "cloud" not in model_ids(client)  # the API's document was replaced
    assert db_server.cli("catalog", "show").stdout == good.read_text()
    rows = [line.split("\t") for line in db_server.cli("models", "list").stdout.splitlines()]
    assert ["from-cli", "chat", "catalog", "from-cli-1", "local", ""] in rows
    assert ["vectors", "embedding", "catalog", "v-1", "external", ""] in rows
    rows = [line.split("\t") for line in db_server.cli("deployments", "list").stdout.splitlines()]
    assert rows[0][:4] == ["model", "id", "engine", "data class"]
    assert ["vectors", "v-1", "openai", "external", "1", "0", "-", "http://127.0.0.1:9/v1"] in rows

    # Credentials: the value from stdin, never argv; listed by name; deleted when unused.
    done = subprocess.run(
        [sys.executable, "-m", "openmaas", "credentials", "set", "spare-key"],
        input=SECRET + "\n",
        env=db_server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and SECRET not in done.stdout + done.stderr
    listed = db_server.cli("credentials", "list").stdout
    assert "spare-key" in listed and SECRET not in listed
    assert "deleted" in db_server.cli("credentials", "delete", "spare-key").stdout
    gone = db_server.cli("credentials", "delete", "spare-key", check=False)
    assert gone.returncode == 1 and "No credential named 'spare-key'" in gone.stderr

    policy = db_server.cli("orgs", "set", "default", "--data-policy", "burst").stdout
    assert "data_policy=burst" in policy
    audit = db_server.cli("audit", "--limit", "10").stdout
    assert "credential.delete" in audit and "catalog.apply" in audit and SECRET not in audit
