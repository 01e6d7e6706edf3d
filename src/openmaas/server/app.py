"""Building the ASGI application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from openmaas import __version__
from openmaas.core.clock import Clock, SystemClock
from openmaas.protocols.anthropic.errors import to_anthropic_error
from openmaas.protocols.zhipu.errors import to_zhipu_error
from openmaas.server.errors import install_error_handlers
from openmaas.server.middleware import RequestContextMiddleware
from openmaas.server.routes import admin as admin_routes
from openmaas.server.routes import anthropic as anthropic_routes
from openmaas.server.routes import openai as openai_routes
from openmaas.server.routes import platform as platform_routes
from openmaas.server.routes import zhipu as zhipu_routes
from openmaas.server.routes.openapi import install_openapi
from openmaas.server.state import AppState, Lifecycle
from openmaas.accounts.auth import Authenticator, load_master_key
from openmaas.billing.accountant import Billing
from openmaas.catalog.served import ModelCatalog, build_catalog
from openmaas.catalog.reloader import CatalogManager
from openmaas.serving.gateway import Gateway
from openmaas.billing.limiter import InProcessLimiter
from openmaas.settings import Settings
from openmaas.store.database import migrate, open_database
from openmaas.store.instance import acquire_server_lock
from openmaas.store.ledger import LedgerStore
from openmaas.store.repositories import ApiKeyRepository, UsageRepository

log = logging.getLogger("openmaas.server")

PACK_EXPIRY_SECONDS = 60.0


async def _expire_packs(billing: Billing) -> None:
    """Expire resource packs on start and every minute (holds check expiry themselves;
    this moves what is left of an expired pack out of the organization's accounts)."""
    while True:
        try:
            await billing.expire_packs()
        except Exception:  # the next round tries again
            log.exception("expiring resource packs failed")
        await asyncio.sleep(PACK_EXPIRY_SECONDS)


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
        try:
            server_lock = await acquire_server_lock(database)  # before recovery: one per database
        except BaseException:
            await database.dispose()
            raise
        models = catalog or build_catalog(settings)
        usage = UsageRepository(database)
        life = lifecycle or Lifecycle()
        state_clock = clock or SystemClock()
        billing = Billing(
            database,
            LedgerStore(database, state_clock.now_ms),
            InProcessLimiter(),
            state_clock,
            refresh_seconds=settings.billing_refresh_seconds,
            checkpoint_seconds=settings.checkpoint_seconds,
        )
        recovered = await billing.recover()  # requests a killed process left in flight
        if recovered:
            log.warning("recovered %d requests left in flight by a previous process", recovered)
        master_key = load_master_key(settings)
        manager = CatalogManager(models, settings, database, master_key, state_clock)
        try:
            await manager.start()  # the catalog document's models join the settings' ones
        except BaseException:
            await server_lock.release()
            await database.dispose()
            raise
        app.state.openmaas = AppState(
            settings=settings,
            database=database,
            catalog=models,
            auth=Authenticator(ApiKeyRepository(database), master_key, state_clock.now_ms),
            usage=usage,
            gateway=Gateway(models, billing, state_clock, lambda: life.draining),
            clock=state_clock,
            lifecycle=life,
            catalog_manager=manager,
            master_key=master_key,
        )
        models.start_loading()
        housekeeping = asyncio.create_task(_expire_packs(billing))
        try:
            yield
        finally:
            housekeeping.cancel()
            await zhipu_routes.close(app)  # cancel async jobs: they record usage as they close
            # Requests cut off by the grace period are still closing: let them record usage.
            await app.state.openmaas.gateway.wait_idle(timeout=10.0)
            await manager.stop()
            await models.stop()
            await server_lock.release()
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
    app.include_router(admin_routes.router)
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
