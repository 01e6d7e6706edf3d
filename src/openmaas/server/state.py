"""Everything the routes need, built once per application and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from openmaas.accounts.auth import Authenticator
from openmaas.billing.accountant import Accountant
from openmaas.catalog.reloader import CatalogManager
from openmaas.catalog.served import ModelCatalog
from openmaas.core.clock import Clock
from openmaas.platform import Platform
from openmaas.server.telemetry.metrics import Metrics
from openmaas.serving.gateway import Gateway
from openmaas.settings import Settings
from openmaas.store.repositories import UsageRepository

if TYPE_CHECKING:  # imported only when traces are on
    from openmaas.server.telemetry.traces import Tracing


@dataclass
class Lifecycle:
    """Set when the process begins to shut down: readiness fails, cut-off work is tagged."""

    draining: bool = False


@dataclass
class AppState:
    platform: Platform  # the services, built once by the composition root
    auth: Authenticator
    usage: UsageRepository
    gateway: Gateway
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    metrics: Metrics | None = None  # None: no OPENMAAS_METRICS_TOKEN, nothing counted
    tracing: Tracing | None = None  # None: OPENMAAS_TRACES off, nothing traced

    @property
    def settings(self) -> Settings:
        return self.platform.settings

    @property
    def database(self) -> AsyncEngine:
        return self.platform.database

    @property
    def clock(self) -> Clock:
        return self.platform.clock

    @property
    def accountant(self) -> Accountant:
        return self.platform.accountant

    @property
    def catalog(self) -> ModelCatalog:
        assert self.platform.catalog is not None  # the server's platform serves
        return self.platform.catalog

    @property
    def catalog_manager(self) -> CatalogManager | None:
        return self.platform.catalog_manager


def app_state(request: Request) -> AppState:
    return request.app.state.openmaas  # type: ignore[no-any-return]


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]  # type: ignore[no-any-return]
