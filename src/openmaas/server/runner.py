"""Running the server process: first-run bootstrap, uvicorn, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import click
import uvicorn

from openmaas.accounts.admin import IssuedKey
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.server.logs import configure_logging
from openmaas.server.state import Lifecycle
from openmaas.settings import Settings

log = logging.getLogger("openmaas.server")


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown begins (readiness fails at once)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._lifecycle.draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, but a drained shutdown exits 0 instead of re-raising the signal."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def _first_run(settings: Settings) -> IssuedKey | None:
    async with open_platform(settings) as platform:
        return await platform.first_run()


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    issued = asyncio.run(_first_run(settings))
    if issued is not None:
        click.echo(welcome(settings, issued))
    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle=lifecycle)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        server_header=False,
    )
    log.info("starting", extra={"host": settings.host, "port": settings.port})
    _DrainingServer(config, lifecycle).run()


def welcome(settings: Settings, issued: IssuedKey) -> str:
    base = f"http://{settings.host}:{settings.port}"
    token = issued.token
    return f"""
OpenMaaS is set up in {settings.home.resolve()}

Admin API key (shown once; also saved, readable only by you, in {settings.admin_key_file}):

    {token}

Try it:

    curl {base}/v1/chat/completions \\
      -H "Authorization: Bearer {token}" \\
      -H "Content-Type: application/json" \\
      -d '{{"model": "smollm2-135m-instruct", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

    from openai import OpenAI
    client = OpenAI(base_url="{base}/v1", api_key="{token}")
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{{"role": "user", "content": "Hello!"}}]
    )
    print(reply.choices[0].message.content)
"""
