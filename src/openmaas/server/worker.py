"""One gateway worker of ``openmaas serve --workers N``: ``python -m openmaas.server.worker
--settings-stdin --fd=N``, started by the supervisor (``server/runner.py``).

It serves the API on the listening socket it inherits (file descriptor N) with its own
composition root; the settings' local models are the engine host's
(``OPENMAAS_ENGINE_SOCKET``, set by the supervisor). It stops with a drained shutdown on
SIGTERM, and when its stdin ends (the supervisor stopped or died).
"""

from __future__ import annotations

import argparse
import socket

from openmaas.server.processes import read_settings_line, stop_at_eof
from openmaas.server.runner import run_server
from openmaas.server.telemetry.logs import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m openmaas.server.worker")
    parser.add_argument("--settings-stdin", action="store_true", required=True)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket")
    args = parser.parse_args(argv)
    settings = read_settings_line()
    configure_logging(settings.log_level, traces=settings.traces != "off")
    stop_at_eof()
    listener = socket.socket(fileno=args.fd)
    run_server(settings, sockets=[listener], name_worker=True)


if __name__ == "__main__":
    main()
