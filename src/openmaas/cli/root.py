"""The ``openmaas`` command group and ``openmaas serve``."""

from __future__ import annotations

from typing import Any

import click
from pydantic import ValidationError

from openmaas.core.errors import SetupError
from openmaas.settings import Settings


@click.group(help="OpenMaaS: an open-source Model-as-a-Service platform.")
@click.version_option(package_name="openmaas")
def main() -> None:
    pass


@main.command(help="Start the API server (settings from OPENMAAS_* variables).")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default 1); more also start one engine host for the local models.",
)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    from openmaas.server.runner import serve as run_server

    overrides: dict[str, Any] = {"host": host, "port": port, "workers": workers}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise click.ClickException(_bad_settings(exc)) from None
    try:
        run_server(settings)
    except SetupError as exc:  # one line for people: no traceback, exit status 1
        raise click.ClickException(exc.message) from None


def _bad_settings(exc: ValidationError) -> str:
    """``OPENMAAS_PORT='x': Input should be a valid integer``, one line for every problem."""
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        given = "" if error.get("type") == "missing" else f"={error.get('input')!r}"
        problems.append(f"OPENMAAS_{name}{given}: {error['msg']}")
    return "bad setting: " + "; ".join(problems)
