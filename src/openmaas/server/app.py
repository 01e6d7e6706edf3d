"""Building the ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from openmaas import __version__
from openmaas.core.clock import Clock, SystemClock
from openmaas.protocols.anthropic.errors import to_anthropic_error
from openmaas.protocols.zhipu.errors import to_zhipu_error
from openmaas.server.errors import install_error_handlers
from openmaas.server.middleware import RequestContextMiddleware
from openmaas.server.routes import anthropic as anthropic_routes
from openmaas.server.routes import openai as openai_routes
from openmaas.server.routes import platform as platform_routes
from openmaas.server.routes import zhipu as zhipu_routes
from openmaas.server.routes.openapi import install_openapi
from openmaas.server.state import AppState, Lifecycle
from openmaas.services.auth import Authenticator, load_master_key
from openmaas.services.catalog import ModelCatalog, build_catalog
from openmaas.services.gateway import Gateway
from openmaas.settings import Settings
from openmaas.store.database import migrate, open_database
from openmaas.store.repositories import ApiKeyRepository, UsageRepository


def create_app(
    settings: Settings,
    *,
    catalog: ModelCatalog | None = None,
    clock: Clock | None = None,
    lifecycle: Lifecycle | None = None,
) -> FastAPI:
    """The application. Engines load in the background once it starts (503 until ready)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_database(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        await migrate(database)
        models = catalog or build_catalog(settings)
        usage = UsageRepository(database)
        life = lifecycle or Lifecycle()
        state_clock = clock or SystemClock()
        app.state.openmaas = AppState(
            settings=settings,
            database=database,
            catalog=models,
            auth=Authenticator(
                ApiKeyRepository(database), load_master_key(settings), state_clock.now_ms
            ),
            usage=usage,
            gateway=Gateway(models, usage, state_clock, lambda: life.draining),
            clock=state_clock,
            lifecycle=life,
        )
        models.start_loading()
        try:
            yield
        finally:
            await zhipu_routes.close(app)  # cancel async jobs: they record usage as they close
            # Requests cut off by the grace period are still closing: let them record usage.
            await app.state.openmaas.gateway.wait_idle(timeout=10.0)
            await models.stop()
            await database.dispose()

    app = FastAPI(
        title="OpenMaaS",
        version=__version__,
        description="OpenAI-compatible API with keys and metering, over local models.",
        lifespan=lifespan,
    )
    app.include_router(openai_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(platform_routes.router)
    zhipu_routes.install(app)
    install_error_handlers(
        app, [("/v1/messages", to_anthropic_error), (zhipu_routes.PREFIX, to_zhipu_error)]
    )
    install_openapi(
        app,
        openai_routes.BODY_MODELS + anthropic_routes.BODY_MODELS + zhipu_routes.BODY_MODELS,
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
