"""Running the server: first-run bootstrap, uvicorn, graceful SIGTERM; with
``OPENMAAS_WORKERS`` > 1 (``openmaas serve --workers N``) a supervisor of N worker
processes and one engine host (``docs/engines.md``, "The engine host").

One worker (the default) is one process, exactly as before: the local models are loaded in
it. With N workers the supervisor

1. bootstraps the data directory, starts the engine host (``server/enginehost.py``) and
   waits until the settings' local models are loaded: they are loaded once, by the host
   alone, as are the catalog document's (the workers have the host load those they hold);
2. listens on the port with N sockets (``SO_REUSEPORT``: the kernel spreads connections
   over the workers; elsewhere one shared socket) and starts N workers
   (``server/worker.py``), each with its own composition root and the host's models;
3. restarts a worker or the host that dies (a worker's requests to the host's models get
   503 until the host is back); after ``kill -9`` of the supervisor every child stops by
   itself (its stdin ends);
4. on SIGTERM or SIGINT drains the workers (each as one process would), then stops the host.

For people, besides the JSON logs: the port is bound before anything is set up or printed
(a busy port is one line, no new admin key, no examples pointing at another server); the
first start's admin key is printed once, and only to a terminal (otherwise the output says
which 0600 file holds it); "OpenMaaS ready at http://HOST:PORT" goes to stderr once the
settings' models are loaded.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openmaas.accounts.admin import IssuedKey
from openmaas.catalog.builtin import settings_document
from openmaas.core.errors import ConfigurationError
from openmaas.platform import open_platform
from openmaas.server.app import check_tracing, create_app
from openmaas.server.processes import ChildProcess, EngineHostProcess, QuietServer, StopFlag
from openmaas.server.state import Lifecycle
from openmaas.server.telemetry.logs import configure_logging
from openmaas.server.telemetry.metrics import MULTIPROC_ENV, multiprocess_directory, worker_died
from openmaas.settings import Settings

log = logging.getLogger("openmaas.server")

WORKER_HEADER = "x-openmaas-worker"  # with several workers: the pid of the one that answered
_WATCH_S = 0.5  # how often the supervisor looks at its children
_RESTART_MAX_S = 30.0  # the longest wait between restarts of a child that keeps dying
_STOP_SLACK_S = 10.0


async def _first_run(settings: Settings) -> IssuedKey | None:
    async with open_platform(settings) as platform:
        return await platform.first_run()


def serve(settings: Settings) -> None:
    """``openmaas serve``. Raises ``ConfigurationError`` (one line for people) when it cannot
    start: the port is taken, say; then nothing was set up or printed before."""
    configure_logging(settings.log_level, traces=settings.traces != "off")
    check_tracing(settings)  # traces on without their extra: one line, before anything else
    # First what can fail on the settings alone: a bad model setting or a busy port ends
    # here, before a data directory or an admin key is made and printed.
    models = [model.name for model in settings_document(settings).models]
    listeners = _listen(settings)
    try:
        issued = asyncio.run(_first_run(settings))
        if issued is not None:
            announce_first_run(settings, issued, sys.stdout)
        if models:
            say(f"Loading models {', '.join(models)} ...")
        if settings.workers > 1:
            Supervisor(settings, listeners).run()
            return
        log.info("starting", extra={"host": settings.host, "port": settings.port})
        run_server(settings, listeners, on_ready=lambda: say_ready(settings))
    finally:
        for listener in listeners:
            listener.close()


def say(line: str) -> None:
    """A line for people on stderr, besides the JSON logs."""
    print(line, file=sys.stderr, flush=True)


def say_ready(settings: Settings) -> None:
    """The one line that says the server serves."""
    say(f"OpenMaaS ready at {base_url(settings)}")


def base_url(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def run_server(
    settings: Settings,
    sockets: Sequence[socket.socket] | None = None,
    name_worker: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """One serving process until SIGTERM: readiness fails at once, then a drained exit 0.
    ``on_ready`` is called once the settings' models are loaded (or failed to)."""
    lifecycle = Lifecycle()
    fastapi_app = create_app(settings, lifecycle=lifecycle)
    app: ASGIApp = fastapi_app
    if name_worker:
        app = _NameWorker(app)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        server_header=False,
    )

    def draining() -> None:
        lifecycle.draining = True

    started: Callable[[], Coroutine[Any, Any, None]] | None = None
    if on_ready is not None:
        announce = on_ready

        async def loaded() -> None:
            await fastapi_app.state.openmaas.platform.catalog.wait_loaded()
            announce()

        started = loaded
    server = QuietServer(config, on_exit=draining, on_started=started)
    server.run(sockets=list(sockets) if sockets else None)


class _NameWorker:
    """Adds ``x-openmaas-worker: <pid>`` to every response of this worker."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (WORKER_HEADER.encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, named)


# -- several workers --------------------------------------------------------------------------
class _Child:
    """A child process restarted when it dies, waiting longer after each quick death."""

    def __init__(
        self, process: ChildProcess, on_death: Callable[[int], None] | None = None
    ) -> None:
        self.process = process
        self.on_death = on_death  # told the pid of the process that died
        self.backoff = 0.0
        self.restart_at: float | None = None
        self.started_at = 0.0

    def start(self, now: float) -> None:
        self.process.start()
        self.started_at, self.restart_at = now, None

    def check(self, now: float) -> bool:
        """Restart the process if it died and its wait is over; True when it (re)started."""
        code = self.process.exit_code()
        if code is None or self.process.pid is None:
            return False
        if self.restart_at is None:
            lived = now - self.started_at
            self.backoff = (
                0.0 if lived > _RESTART_MAX_S else min(_RESTART_MAX_S, self.backoff * 2 or 0.5)
            )
            self.restart_at = now + self.backoff
            log.error(
                f"{self.process.name} exited; restarting it",
                extra={"pid": self.process.pid, "code": code, "after_s": self.backoff},
            )
            if self.on_death is not None:
                self.on_death(self.process.pid)
        if now < self.restart_at:
            return False
        self.start(now)
        return True


class Supervisor:
    """``openmaas serve --workers N``: the engine host and N workers (module docstring)."""

    def __init__(self, settings: Settings, listeners: list[socket.socket] | None = None) -> None:
        from openmaas.server.enginehost import socket_path

        self.settings = settings
        self.socket = socket_path(settings)
        self.worker_settings = settings.model_copy(update={"engine_socket": self.socket})
        self.stop = StopFlag()  # set by the signal handler: no lock (see StopFlag)
        # Always: even without local models in the settings, the catalog may declare some.
        self.host = _Child(EngineHostProcess(self.worker_settings, self.socket))
        self.workers: list[_Child] = []
        self.listeners: list[socket.socket] = listeners or []
        self.metrics_dir: Path | None = None  # the workers' metrics (with a metrics token)

    def run(self) -> None:
        original = {
            sig: signal.signal(sig, self._handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.listeners = self.listeners or _listen(self.settings)
            self.host.start(_now())
            assert isinstance(self.host.process, EngineHostProcess)
            if not self.host.process.wait_ready(self.stop):
                return
            metrics, on_death = self._metrics_across_workers()
            for index, listener in enumerate(self._listener_per_worker()):
                process = ChildProcess(
                    "openmaas.server.worker",
                    self.worker_settings,
                    f"worker {index}",
                    pass_fds=(listener.fileno(),),
                    environment=metrics,
                )
                self.workers.append(_Child(process, on_death))
                self.workers[-1].start(_now())
            log.info(
                "serving",
                extra={
                    "host": self.settings.host,
                    "port": self.settings.port,
                    "workers": len(self.workers),
                    "engine_host": self.host.process.pid,
                },
            )
            say_ready(self.settings)
            while not self.stop.wait(_WATCH_S):
                for child in [self.host, *self.workers]:
                    child.check(_now())
        finally:
            self._shutdown()
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _metrics_across_workers(
        self,
    ) -> tuple[dict[str, str] | None, Callable[[int], None] | None]:
        """With a metrics token: one directory for every worker's metrics (emptied now),
        named in their environment, and what marks a dead worker's there (docs/metrics.md)."""
        if not self.settings.metrics_token:
            return None, None
        directory = self.metrics_dir = multiprocess_directory(self.settings.home)
        return {MULTIPROC_ENV: str(directory)}, partial(worker_died, directory)

    def _listener_per_worker(self) -> list[socket.socket]:
        if len(self.listeners) == 1:
            return self.listeners * self.settings.workers
        return self.listeners

    def _shutdown(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        for worker in self.workers:
            worker.process.terminate()
        for worker in self.workers:
            worker.process.wait(grace + _STOP_SLACK_S)
        self.host.process.stop(grace)
        for listener in self.listeners:
            listener.close()
        if self.metrics_dir is not None:  # this run's metrics end with it
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


_now = time.monotonic


def _listen(settings: Settings) -> list[socket.socket]:
    """The listening sockets: one per worker with ``SO_REUSEPORT`` (the kernel balances
    connections between them), else one that all workers share."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    count = settings.workers if sys.platform.startswith("linux") else 1
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Without SO_REUSEPORT: fails if anyone holds the port, even a group of such sockets.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((settings.host, settings.port))
    except OSError as exc:
        raise ConfigurationError(_bind_refused(settings, exc)) from None
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((settings.host, settings.port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def _bind_refused(settings: Settings, exc: OSError) -> str:
    where = f"{settings.host}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use (another OpenMaaS, or another "
            "program, serves there). Stop it, or choose another port with --port or "
            "OPENMAAS_PORT."
        )
    return (
        f"cannot listen on {where}: {exc.strerror or exc}. Check OPENMAAS_HOST and OPENMAAS_PORT."
    )


def example_model(settings: Settings) -> str:
    """The model the welcome's examples use: the first chat model the settings declare (the
    embedded one by default), else a placeholder that says where to find the names."""
    chat = [model.name for model in settings_document(settings).models if model.kind == "chat"]
    return chat[0] if chat else "MODEL (see GET /v1/models)"


def announce_first_run(settings: Settings, issued: IssuedKey, out: TextIO) -> None:
    """The first start's welcome. The secret is printed once, and only when ``out`` is a
    terminal: a log file or a pipe gets where to find it instead."""
    terminal = out.isatty()
    out.write(welcome(settings, issued, show_secret=terminal))
    out.flush()
    if not terminal:
        log.info(
            "first start: admin API key created (not printed: the output is not a terminal)",
            extra={"key_id": issued.key.id, "key_file": str(settings.admin_key_file)},
        )


def welcome(settings: Settings, issued: IssuedKey, *, show_secret: bool = True) -> str:
    """The first start's text for people; with ``show_secret`` the key's secret appears in
    it exactly once (the examples read the key from its file)."""
    base = base_url(settings)
    key_file = settings.admin_key_file.resolve()
    model = example_model(settings)
    if show_secret:
        key = f"""Admin API key (shown once; also saved, readable only by you, in {key_file}):

    {issued.token}"""
    else:
        key = f"""Admin API key {issued.key.id}: saved, readable only by you, in {key_file}
(its secret is printed only to a terminal). Read it with: cat {key_file}"""
    return f"""
OpenMaaS is set up in {settings.home.resolve()}

{key}

Try it, once the server says "OpenMaaS ready at {base}":

    KEY=$(cat {key_file})
    curl {base}/v1/chat/completions \\
      -H "Authorization: Bearer $KEY" \\
      -H "Content-Type: application/json" \\
      -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

    from openai import OpenAI
    client = OpenAI(base_url="{base}/v1", api_key=open("{key_file}").read().strip())
    reply = client.chat.completions.create(
        model="{model}", messages=[{{"role": "user", "content": "Hello!"}}]
    )
    print(reply.choices[0].message.content)
"""
