"""The managed vLLM engine, with a stand-in ``vllm`` (tests/engines/fake_vllm.py): finding
vLLM, the command it runs, serving through it, supervision and restarts, stopping without
leaving a process behind. The last test runs the real vLLM where it and a GPU exist."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openmaas.core.errors import (
    EngineFailure,
    EngineNotReady,
    UpstreamUnavailable,
)
from openmaas.core.types import (
    Finished,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from openmaas.engines.base import EngineState, EngineStream
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.engines.vllm import (
    ManagedVllmEngine,
    RestartPolicy,
    VllmConfig,
    VllmNotInstalled,
    VllmStartFailed,
)
from openmaas.routing.router import Deployment, RoutedEngine
from tests.engines import fake_vllm
from tests.support.waiting import eventually

WAIT_S = 30.0  # the longest any condition is waited for
LONG = " ".join(f"w{i}" for i in range(40))


# -- helpers --------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def chat(text: str = "Say hello") -> GenerationRequest:
    return GenerationRequest(
        "req-1", "glm-test", messages=(Message(Role.USER, text),), sampling=SamplingParams()
    )


async def collect(stream: EngineStream) -> list[StreamEvent]:
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


class Engines:
    """Builds engines over the stand-in; after the test stops them and kills (SIGKILL) any
    process a stand-in recorded that is still alive."""

    def __init__(self, tmp_path: Path) -> None:
        self.record = tmp_path / "starts.jsonl"
        self.built: list[ManagedVllmEngine] = []

    def __call__(self, env: dict[str, str] | None = None, **config: Any) -> ManagedVllmEngine:
        config.setdefault("model", "/models/glm-test")
        config.setdefault("command", fake_vllm.command())
        config.setdefault("startup_timeout_s", WAIT_S)
        config.setdefault("stop_grace_s", 5.0)
        config.setdefault("health_interval_s", 0.1)
        config.setdefault("deployment", "dep-vllm")
        config.setdefault(
            "restart", RestartPolicy(max_restarts=3, backoff_initial_s=0.05, backoff_max_s=0.2)
        )
        config["env"] = {"FAKE_VLLM_RECORD": str(self.record), **(env or {})}
        engine = ManagedVllmEngine("glm-test", VllmConfig(**config))
        self.built.append(engine)
        return engine

    def starts(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def pids(self) -> list[int]:
        pids = []
        for start in self.starts():
            pids.append(start["pid"])
            if start["grandchild"]:
                pids.append(start["grandchild"])
        return pids

    async def cleanup(self) -> None:
        try:
            for engine in self.built:
                await engine.stop()
        finally:
            for pid in self.pids():
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture()
async def engines(tmp_path: Path) -> AsyncIterator[Engines]:
    factory = Engines(tmp_path)
    try:
        yield factory
    finally:
        await factory.cleanup()


# -- not installed --------------------------------------------------------------------------
async def test_a_missing_command_fails_with_the_reason_and_no_process(
    engines: Engines, tmp_path: Path
) -> None:
    engine = engines(command=(str(tmp_path / "no-such-vllm"),))
    with pytest.raises(VllmNotInstalled):
        await engine.start()
    health = engine.health()
    assert health.state is EngineState.FAILED
    assert "vLLM is not installed" in health.detail and "no-such-vllm" in health.detail
    assert engine.pid is None and engines.starts() == []
    with pytest.raises(EngineNotReady):
        engine.stream(chat())
    await engine.stop()
    assert engine.health().state is EngineState.STOPPED


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
async def test_without_vllm_on_path_or_importable_the_engine_fails(
    engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = engines(command=None)
    with pytest.raises(VllmNotInstalled):
        await engine.start()
    assert engine.health().state is EngineState.FAILED
    assert "no 'vllm' command on PATH" in engine.health().detail


async def test_the_router_keeps_serving_when_vllm_is_missing(
    engines: Engines, tmp_path: Path
) -> None:
    missing = engines(command=(str(tmp_path / "no-such-vllm"),))
    other = FakeEngine("glm-test", FakeScript(text="from the other deployment"))
    router = RoutedEngine(
        "glm-test", [Deployment("vllm", missing), Deployment("other", other, priority=1)]
    )
    await router.start()  # does not raise: one deployment is ready
    try:
        assert missing.health().state is EngineState.FAILED
        events = await collect(router.stream(chat()))
        assert text_of(events) == "from the other deployment"
    finally:
        await router.stop()


async def test_vllm_is_found_on_path(
    engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vllm.install(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    engine = engines(command=None)
    await engine.start()
    assert engine.health().state is EngineState.READY
    assert text_of(await collect(engine.stream(chat()))) == "Hello from fake vLLM."


# -- starting and serving -------------------------------------------------------------------
async def test_serves_a_chat_completion_with_the_usage_vllm_reports(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_PROMPT_TOKENS": "17"})
    await engine.start()
    assert engine.health().state is EngineState.READY
    assert engine.base_url is not None and engine.base_url.startswith("http://127.0.0.1:")

    stream = engine.stream(chat())
    events = await collect(stream)
    assert text_of(events) == "Hello from fake vLLM."
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.prompt_tokens == 17
    assert finished.usage.completion_tokens == 4  # one chunk per word
    assert not finished.usage.estimated
    assert stream.tracker.prompt_tokens == 17 and stream.tracker.completion_tokens == 4
    assert engine.capacity().in_flight == 0


async def test_the_command_line_and_environment(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAAS_SECRET_KEY", "our-own-secret")
    engine = engines(
        model="/models/GLM-4.5-Air",
        served_model_name="glm-4.5-air",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.9,
        max_model_len=4096,
        tool_call_parser="glm45",
        reasoning_parser="glm45",
        extra_args=("--enable-prefix-caching",),
    )
    await engine.start()
    [start] = engines.starts()
    argv = start["argv"]
    port = argv[argv.index("--port") + 1]
    assert argv == [
        "serve",
        "/models/GLM-4.5-Air",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--served-model-name",
        "glm-4.5-air",
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "4096",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "glm45",
        "--reasoning-parser",
        "glm45",
        "--enable-prefix-caching",
    ]
    assert engine.base_url == f"http://127.0.0.1:{port}/v1"
    # The key travels in the environment, never on the command line (readable by anyone).
    assert start["key_in_env"] and not any("api-key" in arg for arg in argv)
    assert start["env"] == {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    assert start["openmaas_env"] == []
    assert text_of(await collect(engine.stream(chat()))) == "Hello from fake vLLM."


async def test_vllm_output_is_logged_at_debug_without_the_key(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="openmaas.engines.vllm")
    engine = engines()
    await engine.start()
    lines = [r for r in caplog.records if r.name == "openmaas.engines.vllm.process"]
    assert lines and all(r.levelname == "DEBUG" for r in lines)
    assert any("api_key=***" in r.getMessage() for r in lines)
    assert re.search(r"api_key=(?!\*\*\*)", caplog.text) is None
    assert lines[0].__dict__["deployment"] == "dep-vllm"


async def test_an_exit_while_starting_fails_with_vllms_last_words(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_EXIT": "3"})
    with pytest.raises(VllmStartFailed):
        await engine.start()
    health = engine.health()
    assert health.state is EngineState.FAILED
    assert "exited with code 3 while starting" in health.detail
    assert "scripted failure at start" in health.detail
    assert not any(alive(pid) for pid in engines.pids())


async def test_startup_timeout_fails_and_leaves_no_process(engines: Engines) -> None:
    engine = engines(
        env={"FAKE_VLLM_FAIL_HEALTH": "1", "FAKE_VLLM_GRANDCHILD": "1"}, startup_timeout_s=1.0
    )
    with pytest.raises(VllmStartFailed):
        await engine.start()
    health = engine.health()
    assert health.state is EngineState.FAILED
    assert "was not serving 'glm-test' within 1 s" in health.detail
    [start] = engines.starts()
    assert not alive(start["pid"]) and not alive(start["grandchild"])
    assert engine.pid is None


async def test_a_slow_start_is_waited_for(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_START_DELAY": "1"})
    task = asyncio.create_task(engine.start())
    try:
        await eventually(
            lambda: bool(engines.starts()), timeout=WAIT_S, what="the stand-in started"
        )
        assert engine.health().state is EngineState.LOADING
        with pytest.raises(EngineNotReady):
            engine.stream(chat())
    finally:
        await task
    assert engine.health().state is EngineState.READY


# -- supervision ----------------------------------------------------------------------------
async def test_a_crash_fails_requests_retryably_then_vllm_is_restarted(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_CRASH_AFTER": "1"})
    await engine.start()
    first_pid = engine.pid
    assert text_of(await collect(engine.stream(chat()))) == "Hello from fake vLLM."

    with pytest.raises(UpstreamUnavailable) as caught:  # before the first byte: failover
        await collect(engine.stream(chat()))
    assert caught.value.deployment == "dep-vllm"

    await eventually(
        lambda: engine.restarts == 1 and engine.health().state is EngineState.READY,
        timeout=WAIT_S,
        what="vLLM restarted",
    )
    assert engine.pid != first_pid
    starts = engines.starts()
    assert len(starts) == 2 and not alive(starts[0]["pid"])
    assert text_of(await collect(engine.stream(chat()))) == "Hello from fake vLLM."


async def test_a_crash_mid_stream_is_an_engine_failure_with_the_tokens_counted(
    engines: Engines,
) -> None:
    engine = engines(env={"FAKE_VLLM_CRASH_AFTER": "0", "FAKE_VLLM_CRASH_AFTER_TOKENS": "2"})
    await engine.start()
    stream = engine.stream(chat())
    seen: list[StreamEvent] = []
    with pytest.raises(EngineFailure):
        async for event in stream:
            seen.append(event)
    await stream.aclose()
    assert text_of(seen) == "Hello from "
    assert stream.tracker.completion_tokens >= 2 and stream.tracker.estimated
    await eventually(lambda: engine.restarts == 1, timeout=WAIT_S, what="vLLM restarted")


async def test_the_process_group_dies_with_vllm(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_CRASH_AFTER": "0", "FAKE_VLLM_GRANDCHILD": "1"})
    await engine.start()
    with pytest.raises(UpstreamUnavailable):
        await collect(engine.stream(chat()))
    [first, *_] = engines.starts()
    await eventually(
        lambda: not alive(first["grandchild"]),
        timeout=WAIT_S,
        what="the crashed vLLM's worker is gone",
    )


async def test_restarts_stop_at_the_limit(engines: Engines) -> None:
    engine = engines(
        env={"FAKE_VLLM_CRASH_AFTER": "0"},
        restart=RestartPolicy(max_restarts=1, backoff_initial_s=0.05),
    )
    await engine.start()
    with pytest.raises(UpstreamUnavailable):
        await collect(engine.stream(chat()))
    await eventually(lambda: engine.restarts == 1, timeout=WAIT_S, what="vLLM restarted")
    await eventually(
        lambda: engine.health().state is EngineState.READY, timeout=WAIT_S, what="READY again"
    )
    with pytest.raises(UpstreamUnavailable):
        await collect(engine.stream(chat()))
    await eventually(
        lambda: engine.health().state is EngineState.FAILED, timeout=WAIT_S, what="gave up"
    )
    assert "gave up after 1 restarts" in engine.health().detail
    assert "exited with code 1" in engine.health().detail
    assert len(engines.starts()) == 2
    assert not any(alive(pid) for pid in engines.pids())


async def test_an_unhealthy_vllm_is_restarted(engines: Engines, tmp_path: Path) -> None:
    sick = tmp_path / "sick"
    engine = engines(env={"FAKE_VLLM_HEALTH_FILE": str(sick)}, health_failures=2)
    await engine.start()
    first_pid = engine.pid
    sick.touch()
    await eventually(
        lambda: engine.health().state is EngineState.LOADING, timeout=WAIT_S, what="noticed"
    )
    assert "failed 2 health checks in a row" in engine.health().detail
    sick.unlink()
    await eventually(
        lambda: engine.health().state is EngineState.READY, timeout=WAIT_S, what="READY again"
    )
    assert engine.restarts == 1 and engine.pid != first_pid
    assert not alive(engines.starts()[0]["pid"])
    assert text_of(await collect(engine.stream(chat()))) == "Hello from fake vLLM."


# -- stopping -------------------------------------------------------------------------------
async def test_stop_leaves_no_process_behind(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_GRANDCHILD": "1"})
    await engine.start()
    guard = engine.pid
    assert guard is not None
    [start] = engines.starts()
    assert start["pgid"] == start["pid"] != guard  # vLLM leads a process group of its own
    await engine.stop()
    assert engine.health().state is EngineState.STOPPED
    assert not alive(guard) and not alive(start["pid"]) and not alive(start["grandchild"])
    with pytest.raises(EngineNotReady):
        engine.stream(chat())


async def test_stop_ends_the_streams_in_flight(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_TOKEN_DELAY": "0.5", "FAKE_VLLM_TEXT": LONG})
    await engine.start()
    stream = engine.stream(chat())
    first = await stream.__anext__()
    assert isinstance(first, TextDelta)
    await engine.stop()
    with pytest.raises(EngineFailure):  # after the first token: never retried
        async for _ in stream:
            pass
    await stream.aclose()
    assert stream.tracker.completion_tokens >= 1
    assert engine.capacity().in_flight == 0


async def test_stop_kills_a_vllm_that_ignores_sigterm(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_IGNORE_TERM": "1"}, stop_grace_s=0.5)
    await engine.start()
    [start] = engines.starts()
    await engine.stop()
    assert not alive(start["pid"])


async def test_stop_while_starting_leaves_no_process(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_START_DELAY": "60"})
    task = asyncio.create_task(engine.start())
    await eventually(lambda: bool(engines.starts()), timeout=WAIT_S, what="the stand-in started")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await engine.stop()
    assert not alive(engines.starts()[0]["pid"])


_GATEWAY = """
import asyncio, sys
from openmaas.engines.vllm import ManagedVllmEngine, VllmConfig

async def main():
    engine = ManagedVllmEngine("glm-test", VllmConfig(
        model="/models/glm-test", command=tuple(sys.argv[1:3]),
        env={"FAKE_VLLM_RECORD": sys.argv[3], "FAKE_VLLM_GRANDCHILD": "1"},
        stop_grace_s=2.0))
    await engine.start()
    print("ready", flush=True)
    await asyncio.sleep(600)  # a gateway that serves until it is killed

asyncio.run(main())
"""


async def test_vllm_dies_with_a_gateway_killed_by_sigkill(engines: Engines) -> None:
    """No engine.stop(), no atexit: the guard sees its pipe close and ends vLLM's group."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    gateway = subprocess.Popen(
        [sys.executable, "-c", _GATEWAY, *fake_vllm.command(), str(engines.record)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert gateway.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(gateway.stdout.readline), WAIT_S)
        assert line.strip() == b"ready"
        [start] = engines.starts()
        gateway.kill()
        gateway.wait(timeout=WAIT_S)
        await eventually(
            lambda: not alive(start["pid"]) and not alive(start["grandchild"]),
            timeout=WAIT_S,
            what="vLLM and its worker are gone",
        )
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


# -- the real vLLM --------------------------------------------------------------------------
def _gpu_present() -> bool:
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _gpu_present(), reason="needs vllm and a GPU")
async def test_real_vllm_serves_a_tiny_model(tmp_path: Path) -> None:
    """Set OPENMAAS_TEST_VLLM_MODEL to a local model directory (or a Hugging Face id in the
    local cache: nothing is downloaded) of a small chat model; default Qwen2.5-0.5B-Instruct."""
    model = os.environ.get("OPENMAAS_TEST_VLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    engine = ManagedVllmEngine(
        "tiny",
        VllmConfig(
            model=model,
            served_model_name="tiny",
            gpu_memory_utilization=0.5,
            max_model_len=2048,
            startup_timeout_s=600,
        ),
    )
    try:
        await engine.start()
        request = GenerationRequest(
            "req-gpu",
            "tiny",
            messages=(Message(Role.USER, "Say hello in one word."),),
            sampling=SamplingParams(max_tokens=16, temperature=0.0),
        )
        events = await collect(engine.stream(request))
        finished = events[-1]
        assert isinstance(finished, Finished) and not finished.usage.estimated
        assert finished.usage.prompt_tokens > 0 and finished.usage.completion_tokens > 0
    finally:
        pid = engine.pid
        await engine.stop()
        assert pid is None or not alive(pid)


async def test_a_killed_guard_leaves_no_vllm_behind(engines: Engines) -> None:
    engine = engines(env={"FAKE_VLLM_GRANDCHILD": "1"})
    await engine.start()
    guard = engine.pid
    assert guard is not None
    [first] = engines.starts()
    os.kill(guard, signal.SIGKILL)  # the guard cannot clean up: the engine does
    await eventually(
        lambda: engine.health().state is EngineState.LOADING, timeout=WAIT_S, what="noticed"
    )
    assert "guard was killed by SIGKILL" in engine.health().detail
    await eventually(lambda: engine.restarts == 1, timeout=WAIT_S, what="vLLM restarted")
    assert not alive(first["pid"]) and not alive(first["grandchild"])
    assert engine.health().state is EngineState.READY
