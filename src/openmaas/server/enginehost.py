"""The engine host process: ``python -m openmaas.server.enginehost``.

It loads the settings' local models once, and the catalog document's local deployments
while workers hold them (``enginehost/app.py``), and serves them on a Unix socket
(``OPENMAAS_ENGINE_SOCKET``, default ``engine.sock`` in the data directory), created with
mode 0600: only the user that runs OpenMaaS can connect, and nothing listens on TCP.
``openmaas serve --workers N`` starts it with ``--settings-stdin``: the settings arrive as
one JSON line on stdin, and the end of stdin (the supervisor stopped or died, even by
``kill -9``) stops the host. Run by hand (or by systemd) it reads ``OPENMAAS_*``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from openmaas.core.errors import ConfigurationError
from openmaas.enginehost.app import EngineHost, create_host_app, held_builder, local_engines
from openmaas.server.heap import trim_heap_every
from openmaas.server.processes import QuietServer, read_settings_line, stop_at_eof
from openmaas.server.telemetry.logs import configure_logging
from openmaas.settings import Settings

log = logging.getLogger("openmaas.enginehost")

SOCKET_NAME = "engine.sock"
_SUN_PATH_MAX = 107  # bytes of a Unix socket's path (Linux: 108 with the final NUL)


def socket_path(settings: Settings) -> Path:
    """Where the engine host listens: the setting, else ``engine.sock`` in the data dir."""
    return (settings.engine_socket or settings.home / SOCKET_NAME).absolute()


def bind_socket(path: Path) -> socket.socket:
    """A Unix socket bound at ``path`` with mode 0600 from its creation on. A socket file
    left by a host that died is replaced; one that a live host listens on is refused."""
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigurationError(
            f"The engine host's socket path {path} is longer than {_SUN_PATH_MAX} bytes; "
            "set OPENMAAS_ENGINE_SOCKET to a shorter path."
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.is_socket():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # nobody listens: a dead host's
            else:
                raise ConfigurationError(f"An engine host already listens on {path}.")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(umask)
    os.chmod(path, 0o600)
    return sock


def host_app(
    host: EngineHost, settings: Settings, trim: Callable[[], object] | None = None
) -> Starlette:
    """The engine host's app: it trims its heap as a server process does (server/heap.py;
    ``trim``: glibc's ``malloc_trim`` unless given), every ``OPENMAAS_MEMORY_TRIM_SECONDS``.
    The local models run here, so what a hostile prompt leaves of llama.cpp's memory is
    freed here."""
    return create_host_app(host, [lambda: trim_heap_every(settings.memory_trim_seconds, trim)])


def serve_host(settings: Settings, *, until_stdin_closes: bool = False) -> None:
    """Load the local models and serve them on the socket until SIGTERM (or stdin's end)."""
    path = socket_path(settings)
    sock = bind_socket(path)
    try:
        host = EngineHost(
            local_engines(settings),
            build_held=held_builder(settings),
            drain_seconds=settings.catalog_drain_seconds,
        )
        config = uvicorn.Config(
            host_app(host, settings),
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
            server_header=False,
        )
        server = QuietServer(config)
        if until_stdin_closes:
            stop_at_eof()
        log.info("engine host starting", extra={"socket": str(path), "models": list(host.engines)})
        server.run(sockets=[sock])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m openmaas.server.enginehost")
    parser.add_argument(
        "--settings-stdin",
        action="store_true",
        help="read the settings as one JSON line on stdin; stop when stdin ends",
    )
    args = parser.parse_args(argv)
    settings = read_settings_line() if args.settings_stdin else Settings()
    configure_logging(settings.log_level)
    serve_host(settings, until_stdin_closes=args.settings_stdin)


if __name__ == "__main__":
    main()
