"""``openmaas serve --workers 2``: two gateway workers answer on one port, the local models
are loaded once (by the engine host alone), the settings' and the catalog document's, a
catalog change reaches the host, a host that dies is restarted, and SIGTERM or ``kill -9``
of the supervisor leaves no process behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openmaas.engines.embedded import chat_model_path
from openmaas.engines.hosted import BASE_URL, HEALTH_PATH
from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

WORKER_HEADER = "x-openmaas-worker"


def _descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _with_chat_model(pids: set[int]) -> set[int]:
    """The processes that have the chat model's weights mapped: those running llama.cpp."""
    name = chat_model_path().name
    found = set()
    for pid in pids:
        try:
            if name in Path(f"/proc/{pid}/maps").read_text():
                found.add(pid)
        except OSError:
            continue
    return found


def _host_pid(live: LiveServer) -> int:
    assert live.process is not None
    [pid] = _with_chat_model(_descendants(live.process.pid))
    return pid


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("workers") / "home", workers=2)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def _chat(live: LiveServer, text: str, model: str = CHAT_MODEL) -> httpx.Response:
    return httpx.post(
        f"{live.base_url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 8,
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {live.admin_key}"},
        timeout=60,
    )


def _chats_until_both_workers_answer(live: LiveServer, model: str) -> set[int]:
    """Which workers answered chats, each billed exactly as answered: at least 12, and more
    (up to 60) while only one worker has answered. The workers share one listening socket and
    the kernel wakes whichever it likes, so a short run can all land on one worker."""
    answered_by: set[int] = set()
    for i in range(60):
        if i >= 12 and len(answered_by) > 1:
            break
        response = _chat(live, f"Say hello number {i}.", model=model)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        row = live.usage_row(response.headers["x-request-id"])
        assert row["completion_tokens"] == usage["completion_tokens"]
        answered_by.add(int(response.headers[WORKER_HEADER]))
    return answered_by


def test_two_workers_answer_and_the_models_are_loaded_once(two: LiveServer) -> None:
    assert two.process is not None
    workers = {int(httpx.get(f"{two.base_url}/healthz").headers[WORKER_HEADER]) for _ in range(40)}
    assert len(workers) == 2
    children = _descendants(two.process.pid)
    assert workers <= children
    # llama.cpp runs in one process: the engine host, neither worker nor the supervisor.
    [host] = _with_chat_model(children | {two.process.pid})
    assert host not in workers | {two.process.pid}

    assert _chats_until_both_workers_answer(two, CHAT_MODEL) == workers
    embedded = httpx.post(
        f"{two.base_url}/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": ["a river"]},
        headers={"Authorization": f"Bearer {two.admin_key}"},
        timeout=60,
    )
    assert embedded.status_code == 200 and embedded.json()["usage"]["prompt_tokens"] > 0


def _catalog(slots: int) -> str:
    return f"""\
models:
  - name: catalog-chat
    deployments:
      - {{id: packaged, engine: embedded, model: {CHAT_MODEL}, slots: {slots}}}
"""


def _host_models(live: LiveServer) -> dict[str, dict[str, object]]:
    """What the engine host serves, as it reports it on its socket."""
    transport = httpx.HTTPTransport(uds=str(live.home / "engine.sock"))
    with httpx.Client(base_url=BASE_URL, transport=transport, timeout=10) as client:
        models: dict[str, dict[str, object]] = client.get(HEALTH_PATH).json()["models"]
        return models


def test_a_catalog_model_is_loaded_once_by_the_host_and_follows_the_file(
    tmp_path: Path,
) -> None:
    live = LiveServer(
        tmp_path / "home",
        catalog=_catalog(slots=2),
        workers=2,
        embedded_models=False,
        catalog_poll_seconds=0.2,
    ).start()
    try:
        assert live.process is not None
        # The host loaded it, once, for both workers; no worker maps the weights.
        [(key, state)] = _host_models(live).items()
        assert state["model"] == "catalog-chat" and state["holders"] == 2
        assert state["state"] == "ready" and key.startswith("packaged~")
        [host] = _with_chat_model(_descendants(live.process.pid) | {live.process.pid})
        answered_by = _chats_until_both_workers_answer(live, "catalog-chat")
        assert len(answered_by) == 2 and host not in answered_by

        # A changed deployment: the workers hold the new one, the host loads it and
        # unloads the old one once neither worker holds it.
        live.catalog_file.write_text(_catalog(slots=1))

        def changed() -> bool:
            models = _host_models(live)
            return key not in models and [m["holders"] for m in models.values()] == [2]

        wait_until(changed, timeout=120, what="the host to serve only the new deployment")
        response = _chat(live, "Hello again.", model="catalog-chat")
        assert response.status_code == 200, response.text
        assert _with_chat_model(_descendants(live.process.pid)) == {host}
    finally:
        live.stop()


def test_a_host_that_dies_is_restarted(two: LiveServer) -> None:
    old = _host_pid(two)
    os.kill(old, signal.SIGKILL)
    # Meanwhile the workers answer 503 for the host's models; then the host is back.
    statuses: list[int] = []

    def answered() -> bool:
        statuses.append(_chat(two, "Hello again.").status_code)
        return statuses[-1] == 200

    wait_until(answered, timeout=60, what="the restarted engine host to answer", interval=0.2)
    assert set(statuses) <= {200, 503}
    assert _host_pid(two) != old


def test_sigterm_stops_the_workers_then_the_host(two: LiveServer) -> None:
    assert two.process is not None
    children = _descendants(two.process.pid)
    assert len(children) >= 3  # two workers and the host
    assert two.stop(signal.SIGTERM) == 0
    assert _alive(children) == set()
    assert not (two.home / "engine.sock").exists()


def test_kill_9_of_the_supervisor_leaves_no_process(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "home", workers=2).start()
    assert live.process is not None
    children = _descendants(live.process.pid)
    assert len(children) >= 3
    live.kill()
    wait_until(lambda: not _alive(children), timeout=60, what="the children to stop")


def test_two_signals_at_once_still_stop_the_supervisor(tmp_path: Path) -> None:
    """Two Ctrl-C, or SIGTERM sent to the supervisor and to its process group: the second
    signal arrives while the first one's handler runs. It must not deadlock the handler
    (it did: ``threading.Event.set`` re-entered from a signal handler waits on a lock its
    own thread holds), so the supervisor stops and reaps its children every time."""
    for attempt in range(3):
        live = LiveServer(
            tmp_path / f"home{attempt}",
            workers=1,
            embedded_models=False,
            fake_models={"fake-chat": {"text": "hi"}},
        ).start()
        assert live.process is not None
        children = _descendants(live.process.pid)
        for _ in range(2):
            live.process.send_signal(signal.SIGINT)
        assert live.wait_exit(60) == 0
        assert _alive(children) == set()
