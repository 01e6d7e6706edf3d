"""Building the ASGI application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

from openmaas import __version__
from openmaas.accounts.auth import Authenticator
from openmaas.billing.accountant import Accountant
from openmaas.catalog.served import ModelCatalog
from openmaas.core.clock import Clock
from openmaas.core.errors import ConfigurationError
from openmaas.core.ids import RequestIdGenerator
from openmaas.moderation import build_moderator
from openmaas.platform import open_platform
from openmaas.protocols.anthropic.errors import to_anthropic_error
from openmaas.protocols.openai.errors import to_responses_error
from openmaas.protocols.zhipu.errors import to_zhipu_error
from openmaas.server.console import pages as console_routes
from openmaas.server.direct import OpenMaaSApp
from openmaas.server.errors import install_error_handlers
from openmaas.server.heap import trim_heap_every
from openmaas.server.middleware import RequestContextMiddleware
from openmaas.server.routes import admin as admin_routes
from openmaas.server.routes import admin_people as admin_people_routes
from openmaas.server.routes import anthropic as anthropic_routes
from openmaas.server.routes import openai as openai_routes
from openmaas.server.routes import platform as platform_routes
from openmaas.server.routes import responses as responses_routes
from openmaas.server.routes import zhipu as zhipu_routes
from openmaas.server.routes.openapi import install_openapi
from openmaas.server.state import AppState, Lifecycle
from openmaas.server.telemetry.metrics import metrics_from_environment
from openmaas.serving.bounds import RequestBounds
from openmaas.serving.gateway import Gateway, cache_scope_key
from openmaas.settings import Settings
from openmaas.store.repositories import UsageRepository

if TYPE_CHECKING:  # imported only when traces are on
    from openmaas.server.telemetry.traces import Tracing

log = logging.getLogger("openmaas.server")

PACK_EXPIRY_SECONDS = 60.0
DOCS_ASSETS = "/docs-assets"
"""Where the Swagger UI and ReDoc scripts are served from (the files of the pinned
``fastapi-offline`` package): /docs and /redoc load nothing from a CDN."""


async def _expire_packs(accountant: Accountant) -> None:
    """Expire resource packs on start and every minute (holds check expiry themselves;
    this moves what is left of an expired pack out of the organization's accounts)."""
    while True:
        try:
            await accountant.expire_packs()
        except Exception:  # the next round tries again
            log.exception("expiring resource packs failed")
        await asyncio.sleep(PACK_EXPIRY_SECONDS)


def check_tracing(settings: Settings) -> None:
    """``OPENMAAS_TRACES`` on needs the ``otel`` extra: one clear error at start if missing."""
    if settings.traces == "off":
        return
    try:
        import openmaas.server.telemetry.traces  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"OPENMAAS_TRACES={settings.traces} needs OpenTelemetry, which is not installed "
            f"(missing: {exc.name}); install the extra: pip install 'openmaas[otel]', or set "
            "OPENMAAS_TRACES=off."
        ) from None


def build_tracing(settings: Settings) -> Tracing | None:
    """The process's tracing when ``OPENMAAS_TRACES`` is on; off, None and nothing of it
    (nor of OpenTelemetry) is imported."""
    if settings.traces == "off":
        return None
    check_tracing(settings)
    from openmaas.server.telemetry.traces import Tracing

    return Tracing.from_settings(settings)


def create_app(
    settings: Settings,
    *,
    catalog: ModelCatalog | None = None,
    clock: Clock | None = None,
    lifecycle: Lifecycle | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The application. Engines load in the background once it starts (503 until ready).
    ``tracing``: traces to its exporter (tests); else as ``OPENMAAS_TRACES`` says."""
    if tracing is None:
        tracing = build_tracing(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        life = lifecycle or Lifecycle()
        async with open_platform(settings, clock=clock, catalog=catalog, serve=True) as platform:
            assert platform.catalog is not None
            metrics = metrics_from_environment() if settings.metrics_token else None
            app.state.openmaas = AppState(
                platform=platform,
                auth=Authenticator(
                    platform.keys,
                    platform.master_key,
                    platform.clock.now_ms,
                    jwt_max_lifetime_ms=round(settings.jwt_max_lifetime_seconds * 1000),
                ),
                usage=UsageRepository(platform.database),
                gateway=Gateway(
                    platform.catalog,
                    platform.accountant,
                    platform.clock,
                    lambda: life.draining,
                    RequestBounds.from_settings(settings),
                    cache_scope_key(platform.master_key),
                    meter=metrics,
                    moderator=build_moderator(
                        settings.moderation_list_paths,
                        settings.moderation_plugin,
                        settings.moderation_orgs,
                    ),
                ),
                lifecycle=life,
                metrics=metrics,
                tracing=tracing,
            )
            if platform.feed is not None:  # a revoked key's requests in flight are ended
                platform.feed.subscribe(app.state.openmaas.gateway.apply_changes)
            assert platform.async_jobs is not None
            zhipu_routes.open_jobs(app, platform.async_jobs)
            platform.catalog.start_loading()
            housekeeping = asyncio.create_task(_expire_packs(platform.accountant))
            trimming = asyncio.create_task(trim_heap_every(settings.memory_trim_seconds))
            sampling = (
                asyncio.create_task(metrics.sample_every(app.state.openmaas))
                if metrics is not None
                else None
            )
            try:
                yield
            finally:
                housekeeping.cancel()
                trimming.cancel()
                if sampling is not None:
                    sampling.cancel()
                await zhipu_routes.close(app)  # cancel async jobs: they record usage as they close
                # Requests cut off by the grace period are still closing: let them record usage.
                await app.state.openmaas.gateway.wait_idle(timeout=10.0)
                if tracing is not None:  # the spans still buffered are exported
                    await asyncio.to_thread(tracing.shutdown)

    app = OpenMaaSApp(
        title="OpenMaaS",
        version=__version__,
        description="OpenAI-compatible API with keys and metering, over local models.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_docs(app)
    app.include_router(openai_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(platform_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(admin_people_routes.router)
    zhipu_routes.install(app)
    console_routes.install(app, settings)  # /console: pages for people
    errors = install_error_handlers(
        app,
        [
            ("/v1/messages", to_anthropic_error),
            ("/v1/responses", to_responses_error),
            (zhipu_routes.PREFIX, to_zhipu_error),
        ],
    )
    install_openapi(
        app,
        openai_routes.BODY_MODELS
        + responses_routes.BODY_MODELS
        + anthropic_routes.BODY_MODELS
        + zhipu_routes.BODY_MODELS
        + list(admin_routes.BODY_MODELS)
        + list(admin_people_routes.BODY_MODELS),
    )
    ids = RequestIdGenerator()
    limit = settings.max_body_bytes
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=limit, new_request_id=ids, tracing=tracing
    )
    app.dispatch_directly(errors, limit, ids, tracing)
    return app


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, with their scripts, styles and icon served by this
    server from ``DOCS_ASSETS``: the pages work offline and send nothing to a third party."""
    files = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=files), name="docs-assets")
    redirect = "/docs/oauth2-redirect"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS}/{name}"

    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect,
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )

    async def swagger_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route(redirect, swagger_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
