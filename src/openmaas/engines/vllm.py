"""Managed vLLM: OpenMaaS starts ``vllm serve`` for a model, supervises it, and relays to it.

The engine owns one ``vllm serve`` child process at a time, on 127.0.0.1 and a port chosen
free at each start, and delegates every request to an ``OpenAIHttpEngine`` pointed at it
(``openai_http.py``: streaming relay, exact usage, error mapping). ``docs/engines.md``
("Managed vLLM") is the operator's guide.

Lifecycle (``health()``):

- ``start()``: LOADING while vLLM loads the model; READY once ``GET /health`` answers 200 and
  ``GET /v1/models`` lists the served name; FAILED (the reason kept, ``VllmNotInstalled`` or
  ``VllmStartFailed`` raised, no process left) when vLLM is not installed, exits while
  starting, or is not healthy within ``startup_timeout_s``.
- Supervision: when the process exits, or fails ``health_failures`` health checks in a row,
  while READY, the engine goes LOADING (new requests get ``EngineNotReady``; requests in
  flight fail with ``UpstreamUnavailable`` before their first token, ``EngineFailure``
  after), the process group is killed, and vLLM is started again after an exponential
  backoff. After ``RestartPolicy.max_restarts`` restarts without a stable run: FAILED.
- ``stop()``: SIGTERM to vLLM's process group, SIGKILL after ``stop_grace_s``; STOPPED.

No orphans. vLLM runs under a small guard process (``vllm_process._GUARD``, plain Python, no
imports of ours): the guard is spawned in a new session, starts vLLM in a process group of
its own, and holds the read end of a pipe whose write end only the gateway holds. When the
gateway stops the engine, or dies in any way (``kill -9`` included: the kernel closes the
pipe), or when vLLM exits by itself, the guard terminates vLLM's whole process group (vLLM's
engine core and tensor-parallel workers are in it): SIGTERM, then SIGKILL after the grace.
The group is killed while vLLM is still an unreaped zombie, so its id cannot have been
reused. (``prctl(PR_SET_PDEATHSIG)`` alone would reach only the direct child, not vLLM's own
workers, and fires when the forking *thread* ends, not the process.)

Secrets. A fresh API key is generated at each start and given to vLLM as ``VLLM_API_KEY``
in its environment (not ``--api-key``: command lines are readable by every local user) and
to the relay as its bearer token. vLLM's output is relayed into our logs at debug, one
record per line, with the key replaced by ``***``. The child's environment has no
``OPENMAAS_*`` variables (our own secrets live there), ``HF_HUB_OFFLINE=1`` and
``TRANSFORMERS_OFFLINE=1`` (nothing is downloaded at run time: point ``model`` at local
weights) and vLLM's usage statistics off (``VLLM_NO_USAGE_STATS=1``, ``DO_NOT_TRACK=1``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmaas.aio import finish_despite_cancellation
from openmaas.core.errors import (
    EngineNotReady,
    SetupError,
    UpstreamUnavailable,
)
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    GenerationRequest,
    StreamEvent,
)
from openmaas.engines.base import (
    Capacity,
    EngineHealth,
    EngineState,
    EngineStream,
    ModelKind,
    SlotCounter,
    UsageTracker,
    refuse_choices,
)
from openmaas.engines.upstream.openai_http import OpenAIHttpConfig, OpenAIHttpEngine, Timeouts
from openmaas.engines.upstream.openai_wire import ThinkingStyle
from openmaas.engines.vllm_process import (
    HOST,
    VllmProcess,
    describe_exit,
    free_port,
)

__all__ = [
    "HOST",
    "ManagedVllmEngine",
    "RestartPolicy",
    "VllmConfig",
    "VllmNotInstalled",
    "VllmStartFailed",
    "vllm_command",
]

log = logging.getLogger("openmaas.engines.vllm")

_MODULE = "vllm.entrypoints.cli.main"  # ``python -m`` form of the ``vllm`` command
_OWNED_FLAGS = frozenset({"--host", "--port", "--api-key", "--served-model-name", "--model"})
_POLL_S = 0.2  # how often a starting vLLM is asked whether it is healthy


class VllmNotInstalled(SetupError):
    """No ``vllm`` executable and no ``vllm`` module: the engine stays FAILED."""


class VllmStartFailed(SetupError):
    """vLLM exited while starting, or was not healthy within the startup timeout."""


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a vLLM that died while serving is started again: after ``backoff_initial_s``,
    times ``backoff_multiplier`` for each further attempt, at most ``backoff_max_s``; after
    ``max_restarts`` attempts without a run of ``stable_after_s`` seconds: FAILED."""

    max_restarts: int = 5
    backoff_initial_s: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 60.0
    stable_after_s: float = 600.0  # READY this long forgets the earlier restarts

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise ValueError("restart counts and delays must not be negative")
        if self.backoff_multiplier < 1 or self.stable_after_s < 0:
            raise ValueError("backoff_multiplier must be at least 1")

    def delay(self, attempt: int) -> float:
        """Seconds before restart ``attempt`` (1, 2, ...)."""
        delay = self.backoff_initial_s * self.backoff_multiplier ** (attempt - 1)
        return min(delay, self.backoff_max_s)


@dataclass(frozen=True, slots=True)
class VllmConfig:
    """One managed ``vllm serve``, built from a catalog document's ``engine: vllm``
    deployment (``catalog/schema.py``'s ``VllmDeployment``, the one parser of its fields).
    ``model`` is what vLLM takes as its model: a directory with the weights (or a Hugging
    Face id already in the local cache; nothing is downloaded). ``env`` is left out of the
    repr (it may name devices and paths only, but is treated as secret like every engine
    setting that reaches a process)."""

    model: str
    served_model_name: str | None = None  # the name vLLM serves (default: the public name)
    command: tuple[str, ...] | None = None  # runs vLLM's CLI; default: `vllm` or python -m
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    tool_call_parser: str | None = None  # e.g. "glm45" (adds --enable-auto-tool-choice)
    reasoning_parser: str | None = None  # e.g. "glm45"
    extra_args: tuple[str, ...] = ()  # any other `vllm serve` options, verbatim
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # e.g. CUDA_VISIBLE_DEVICES
    api_key: bool = True  # protect vLLM's port with a key generated at each start
    startup_timeout_s: float = 1800.0  # large models take minutes to load
    stop_grace_s: float = 30.0  # SIGTERM → SIGKILL
    health_interval_s: float = 10.0  # while READY: GET /health this often
    health_failures: int = 3  # failed checks in a row that count as dead
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # The relay's settings (openai_http.OpenAIHttpConfig):
    kind: ModelKind = ModelKind.CHAT
    slots: int = 64  # requests at once (vLLM batches them)
    queue: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    deployment: str | None = None  # the deployment's id (default: the public name)
    thinking_style: ThinkingStyle = ThinkingStyle.CHAT_TEMPLATE_KWARGS
    tokenizer_path: Path | None = None  # default: {model}/tokenizer.json when it exists

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is required")
        if self.command is not None and not self.command:
            raise ValueError("command must name a program")
        for arg in self.extra_args:
            if arg.split("=", 1)[0] in _OWNED_FLAGS:
                raise ValueError(f"extra_args may not set {arg.split('=', 1)[0]}: the engine does")
        if self.startup_timeout_s <= 0 or self.stop_grace_s < 0:
            raise ValueError("startup_timeout_s must be positive and stop_grace_s not negative")
        if self.health_interval_s <= 0 or self.health_failures < 1:
            raise ValueError("health_interval_s must be positive and health_failures ≥ 1")
        if self.slots < 1 or self.queue < 0:
            raise ValueError("slots must be at least 1 and queue not negative")


def vllm_command(command: Sequence[str] | None = None) -> tuple[str, ...]:
    """The program (and its leading arguments) that runs vLLM's CLI; ``serve MODEL ...`` is
    appended. ``command``'s first word must be an executable path or found on PATH; without
    ``command``: ``vllm`` on PATH, else this Python's ``-m vllm.entrypoints.cli.main`` when
    the ``vllm`` module is importable. Raises ``VllmNotInstalled``."""
    if command:
        found = shutil.which(command[0])
        if found is None:
            raise VllmNotInstalled(
                f"vLLM is not installed: the command '{command[0]}' was not found or is not "
                "executable."
            )
        return (found, *command[1:])
    found = shutil.which("vllm")
    if found is not None:
        return (found,)
    if importlib.util.find_spec("vllm") is not None:
        return (sys.executable, "-m", _MODULE)
    raise VllmNotInstalled(
        "vLLM is not installed: no 'vllm' command on PATH and no 'vllm' module in this Python "
        "(pip install vllm on a GPU machine, or set the engine's command)."
    )


# -- the engine -----------------------------------------------------------------------------
class ManagedVllmEngine:
    """An :class:`~openmaas.engines.base.Engine` that owns its vLLM process: its own
    lifecycle (start, supervise, restart, stop) and admission against ``slots`` + ``queue``
    across the relays of successive processes."""

    def __init__(self, model: str, config: VllmConfig) -> None:
        self.model = model
        self.kind = config.kind
        self.config = config
        self._slots = SlotCounter(model, slots=config.slots, queue=config.queue)
        self._health = EngineHealth(EngineState.LOADING)
        self.deployment = config.deployment or model
        self.served_model_name = config.served_model_name or model
        self.restarts = 0  # restarts that reached READY, since the engine was built
        self._process: VllmProcess | None = None
        self._inner: OpenAIHttpEngine | None = None
        self._processes: set[VllmProcess] = set()  # spawned and not yet stopped
        self._retired: set[OpenAIHttpEngine] = set()  # relays of dead processes, in use
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"ManagedVllmEngine(model={self.model!r}, deployment={self.deployment!r}, "
            f"vllm_model={self.config.model!r}, state={self._health.state.value!r})"
        )

    @property
    def pid(self) -> int | None:
        """The pid of the current vLLM's guard (vLLM is its child), or None."""
        return self._process.pid if self._process is not None else None

    @property
    def base_url(self) -> str | None:
        """Where the current vLLM listens (``http://127.0.0.1:PORT/v1``), or None."""
        return f"{self._process.base}/v1" if self._process is not None else None

    def health(self) -> EngineHealth:
        return self._health

    def capacity(self) -> Capacity:
        return self._slots.capacity()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start vLLM and wait until it serves. On failure: FAILED with the reason, no
        process left, and ``VllmNotInstalled`` or ``VllmStartFailed`` raised."""
        if self._supervisor is not None and not self._supervisor.done():
            return  # already serving or restarting
        self._stopping = False
        self._health = EngineHealth(EngineState.LOADING, "starting vLLM")
        try:
            await self._load()
        except Exception as exc:
            reason = _reason(exc)
            state = EngineState.STOPPED if self._stopping else EngineState.FAILED
            self._health = EngineHealth(state, reason)
            log.error("vLLM did not start: %s", reason, extra=self._extra())
            raise

    async def stop(self) -> None:
        """Stop vLLM (also while it starts or restarts) and wait until it is gone."""
        self._stopping = True
        self._health = EngineHealth(EngineState.STOPPED, "stopping")  # admits nothing more
        await self._unload()
        self._health = EngineHealth(EngineState.STOPPED)

    async def _load(self) -> None:
        process, inner = await self._launch()
        if self._stopping:  # stop() was called meanwhile
            await self._discard(process, inner)
            return
        self._attach(process, inner)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _unload(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        inner, self._inner = self._inner, None
        self._process = None
        for process in list(self._processes):
            await self._forget(process)
        for relay in [r for r in (inner, *self._retired) if r is not None]:
            await relay.stop()
        self._retired.clear()

    async def _launch(self) -> tuple[VllmProcess, OpenAIHttpEngine]:
        """Spawn vLLM and wait until it serves; the process is stopped on any failure."""
        cfg = self.config
        program = vllm_command(cfg.command)
        port = free_port()
        key = secrets.token_urlsafe(32) if cfg.api_key else None
        process = VllmProcess(self, [*program, *self.serve_args(port)], port, key)
        self._processes.add(process)
        try:
            await process.spawn(self.child_env(key), cfg.stop_grace_s)
            log.info(
                "vLLM starting",
                extra={**self._extra(), "pid": process.pid, "port": port, "vllm_model": cfg.model},
            )
            await self._until_serving(process)
            inner = OpenAIHttpEngine(self.model, self._relay_config(process))
            await inner.start()
        except BaseException:
            # Even if this task is cancelled again meanwhile: no process is left behind.
            await finish_despite_cancellation(self._forget(process))
            raise
        log.info("vLLM ready", extra={**self._extra(), "pid": process.pid, "port": port})
        return process, inner

    async def _until_serving(self, process: VllmProcess) -> None:
        assert process.exited is not None
        loop = asyncio.get_running_loop()
        timeout = self.config.startup_timeout_s
        deadline = loop.time() + timeout
        while True:
            if process.exited.done():
                raise VllmStartFailed(
                    f"{describe_exit(process.exited.result())} while starting"
                    f"{_quote(process.last_words())}"
                )
            if await process.healthy() and await process.serves(self.served_model_name):
                return
            left = deadline - loop.time()
            if left <= 0:
                raise VllmStartFailed(
                    f"vLLM was not serving '{self.served_model_name}' within {timeout:g} s"
                    f"{_quote(process.last_words())}"
                )
            await asyncio.wait({process.exited}, timeout=min(_POLL_S, left))

    def serve_args(self, port: int) -> list[str]:
        """``serve MODEL`` and its options (everything after the program)."""
        cfg = self.config
        args = ["serve", cfg.model, "--host", HOST, "--port", str(port)]
        args += ["--served-model-name", self.served_model_name]
        if cfg.tensor_parallel_size is not None:
            args += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
        if cfg.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
        if cfg.max_model_len is not None:
            args += ["--max-model-len", str(cfg.max_model_len)]
        if cfg.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_call_parser]
        if cfg.reasoning_parser:
            args += ["--reasoning-parser", cfg.reasoning_parser]
        return [*args, *cfg.extra_args]

    def child_env(self, key: str | None) -> dict[str, str]:
        """vLLM's environment: ours without ``OPENMAAS_*``, ``config.env``, and ours last."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENMAAS_")}
        env.pop("VLLM_API_KEY", None)
        env.update(self.config.env)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        if key:
            env["VLLM_API_KEY"] = key
        return env

    def _relay_config(self, process: VllmProcess) -> OpenAIHttpConfig:
        cfg = self.config
        tokenizer = cfg.tokenizer_path
        if tokenizer is None and (Path(cfg.model) / "tokenizer.json").is_file():
            tokenizer = Path(cfg.model) / "tokenizer.json"
        return OpenAIHttpConfig(
            base_url=f"{process.base}/v1",
            upstream_model=self.served_model_name,
            api_key=process.key,
            kind=cfg.kind,
            slots=cfg.slots,
            queue=cfg.queue,
            timeouts=cfg.timeouts,
            deployment=self.deployment,
            thinking_style=cfg.thinking_style,
            tokenizer_path=tokenizer,
            cache_salt=True,  # a vLLM of ours: prefix caches kept per organization
        )

    def _attach(self, process: VllmProcess, inner: OpenAIHttpEngine) -> None:
        self._process, self._inner = process, inner
        self._health = EngineHealth(EngineState.READY)

    async def _forget(self, process: VllmProcess) -> None:
        await process.stop(self.config.stop_grace_s)
        self._processes.discard(process)

    async def _discard(self, process: VllmProcess, inner: OpenAIHttpEngine) -> None:
        await self._forget(process)
        await inner.stop()

    # -- supervision -------------------------------------------------------------------
    async def _supervise(self) -> None:
        policy = self.config.restart
        loop = asyncio.get_running_loop()
        attempts = 0  # restarts since the last stable run
        while True:
            process = self._process
            assert process is not None
            ready_at = loop.time()
            why = await self._watch(process)
            self._health = EngineHealth(EngineState.LOADING, f"{why}; restarting")
            log.warning("vLLM is down: %s", why, extra={**self._extra(), "pid": process.pid})
            await self._bury(process)
            if loop.time() - ready_at >= policy.stable_after_s:
                attempts = 0
            while True:
                attempts += 1
                if attempts > policy.max_restarts:
                    reason = f"{why}; gave up after {policy.max_restarts} restarts"
                    self._health = EngineHealth(EngineState.FAILED, reason)
                    log.error("vLLM failed: %s", reason, extra=self._extra())
                    return
                delay = policy.delay(attempts)
                self._health = EngineHealth(
                    EngineState.LOADING,
                    f"{why}; restart {attempts} of {policy.max_restarts} in {delay:g} s",
                )
                await asyncio.sleep(delay)
                try:
                    process, inner = await self._launch()
                except VllmNotInstalled as exc:
                    self._health = EngineHealth(EngineState.FAILED, str(exc))
                    log.error("vLLM failed: %s", exc, extra=self._extra())
                    return
                except Exception as exc:
                    why = _reason(exc)
                    log.warning("vLLM restart failed: %s", why, extra=self._extra())
                    continue
                self._attach(process, inner)
                self.restarts += 1
                break

    async def _watch(self, process: VllmProcess) -> str:
        """Return why ``process`` is no longer serving: it exited, or failed its checks."""
        assert process.exited is not None
        failures = 0
        while True:
            done, _ = await asyncio.wait({process.exited}, timeout=self.config.health_interval_s)
            if done:
                return f"{describe_exit(process.exited.result())}{_quote(process.last_words())}"
            if await process.healthy():
                failures = 0
                continue
            failures += 1
            if failures >= self.config.health_failures:
                return f"vLLM failed {failures} health checks in a row"

    async def _bury(self, process: VllmProcess) -> None:
        """Detach a dead (or sick) process: kill its group (its connections drop, so the
        requests in flight fail) and retire its relay once they have ended."""
        inner, self._inner = self._inner, None
        self._process = None
        await self._forget(process)
        if inner is not None:
            if inner.capacity().in_flight == 0:
                await inner.stop()
            else:
                self._retired.add(inner)

    async def _release_retired(self, inner: OpenAIHttpEngine) -> None:
        if inner in self._retired and inner.capacity().in_flight == 0:
            self._retired.discard(inner)
            await inner.stop()

    # -- serving -----------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> EngineStream:
        refuse_choices(request, self.model)
        return self._slots.admitted_stream(
            self._health, lambda tracker: self._stream(request, tracker)
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self._slots.admit(self._health)
        try:
            return await self._embed(request)
        finally:
            self._slots.release()

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        inner = self._inner
        if self._health.state is not EngineState.READY or inner is None:
            raise EngineNotReady(self.model, self._health.detail or self._health.state.value)
        return await inner.count_prompt_tokens(request)

    def _relay(self) -> OpenAIHttpEngine:
        inner = self._inner
        if inner is None:
            detail = self._health.detail or self._health.state.value
            raise UpstreamUnavailable(
                f"vLLM for '{self.model}' is not serving ({detail}).", deployment=self.deployment
            )
        return inner

    async def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        inner = self._relay()
        stream: EngineStream = inner.stream(request)
        try:
            async for event in stream:
                _copy_usage(stream.tracker, tracker)
                if isinstance(event, Finished):
                    tracker.upstream_cost = stream.tracker.upstream_cost
                yield event
        finally:
            try:
                await stream.aclose()
            finally:
                _copy_usage(stream.tracker, tracker)
                tracker.upstream_cost = stream.tracker.upstream_cost
                await self._release_retired(inner)

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        inner = self._relay()
        try:
            return await inner.embed(request)
        finally:
            await self._release_retired(inner)

    def _extra(self) -> dict[str, Any]:
        return {"model": self.model, "deployment": self.deployment}


def _copy_usage(source: UsageTracker, target: UsageTracker) -> None:
    target.prompt_tokens = source.prompt_tokens
    target.cached_tokens = source.cached_tokens
    target.completion_tokens = source.completion_tokens
    target.estimated = source.estimated


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SetupError) else f"{type(exc).__name__}: {exc}"


def _quote(last_words: str) -> str:
    return f" (its last output: {last_words})" if last_words else ""
