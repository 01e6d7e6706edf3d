"""Everything the routes need, built once per application and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from openmaas.core.clock import Clock
from openmaas.accounts.auth import Authenticator
from openmaas.catalog.served import ModelCatalog
from openmaas.catalog.reloader import CatalogManager
from openmaas.serving.gateway import Gateway
from openmaas.settings import Settings
from openmaas.store.repositories import UsageRepository


@dataclass
class Lifecycle:
    """Set when the process begins to shut down: readiness fails, cut-off work is tagged."""

    draining: bool = False


@dataclass
class AppState:
    settings: Settings
    database: AsyncEngine
    catalog: ModelCatalog
    auth: Authenticator
    usage: UsageRepository
    gateway: Gateway
    clock: Clock
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    catalog_manager: CatalogManager | None = None  # the catalog document, reloaded live
    master_key: bytes = field(default=b"", repr=False)


def app_state(request: Request) -> AppState:
    return request.app.state.openmaas  # type: ignore[no-any-return]


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]  # type: ignore[no-any-return]
