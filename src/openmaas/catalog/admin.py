"""Changing the catalog: the stored document and upstream credentials (sealed at rest),
for the CLI and the admin API; every change goes through the unit of work
(``store/audit.py``), its audit row in the transaction that makes it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import PlainValidator, WithJsonSchema
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.accounts.secretbox import SecretBox
from openmaas.catalog.document import (
    CatalogRejected,
    document_version,
    parse_catalog,
)
from openmaas.catalog.reloader import CatalogFileManaged, CatalogManager, load_context
from openmaas.catalog.schema import (
    CREDENTIAL_PATTERN,
    CatalogDocument,
)
from openmaas.catalog.served import (
    CREDENTIAL_PURPOSE,
    ServedModel,
    settings_model_names,
)
from openmaas.core.admin_fields import AdminBody, refuse
from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.core.ledger_events import Event
from openmaas.routing.router import RoutedEngine
from openmaas.settings import Settings
from openmaas.store import catalog as catalog_store
from openmaas.store.audit import AuditedChanges, AuditRecord

_MAX_CREDENTIAL_CHARS = 16_384


def _credential_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise refuse("must be a non-empty string.")
    if len(value) > _MAX_CREDENTIAL_CHARS or any(c in value for c in "\r\n\0"):
        raise refuse(f"must be one line of at most {_MAX_CREDENTIAL_CHARS} characters.")
    return value


class EmptyCatalogRefused(InvalidRequest):
    """A document that declares no models, applied without saying so: it would remove every
    model of the catalog at once (an empty upload, a truncated file)."""

    def __init__(self) -> None:
        super().__init__(
            "The catalog document declares no models: applying it removes every model of the "
            "catalog (the settings' models stay). To do so, say it: ?allow_empty=true (admin "
            "API) or --allow-empty (openmaas catalog apply).",
            param="allow_empty",
        )


class CredentialValue(AdminBody):
    """``PUT /admin/v1/credentials/{name}``: the value, sealed before it is stored and never
    shown, logged or audited."""

    value: Annotated[
        str,
        PlainValidator(_credential_value),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": _MAX_CREDENTIAL_CHARS}),
    ]


@dataclass(frozen=True, slots=True)
class CurrentCatalog:
    source: str  # "file" or "database"
    path: str | None  # the file, when file-managed
    version: str | None  # SHA-256 of the document; None: none yet
    document: str | None
    applied_at_ms: int | None  # when the server applied it (None: not known here)


class CatalogAdmin:
    """Changes to the catalog document and the upstream credentials, each committed with
    its audit row by ``changes`` (as its actor). With ``manager`` (in the server) a change
    applies at once; otherwise (the CLI) the server's poll picks it up."""

    def __init__(
        self,
        changes: AuditedChanges,
        settings: Settings,
        master_key: bytes,
        *,
        manager: CatalogManager | None = None,
    ) -> None:
        self.changes = changes
        self.settings = settings
        self.manager = manager
        self._box = SecretBox(master_key, CREDENTIAL_PURPOSE)

    @property
    def database(self) -> AsyncEngine:
        return self.changes.database

    @property
    def file_managed(self) -> bool:
        return self.settings.catalog_file is not None

    def _source_name(self) -> str:
        return str(self.settings.catalog_file) if self.settings.catalog_file else "catalog"

    async def current(self) -> CurrentCatalog:
        path = str(self.settings.catalog_file) if self.settings.catalog_file else None
        source = "file" if path else "database"
        if self.manager is not None:
            m = self.manager
            return CurrentCatalog(source, path, m.version, m.document, m.applied_at_ms)
        if self.settings.catalog_file is not None:
            try:
                text = self.settings.catalog_file.read_text("utf-8")
            except OSError:
                return CurrentCatalog(source, path, None, None, None)
            return CurrentCatalog(source, path, document_version(text), text, None)
        async with self.database.connect() as conn:
            stored = await catalog_store.latest_document(conn)
        if stored is None:
            return CurrentCatalog(source, None, None, None, None)
        return CurrentCatalog(source, None, stored.version, stored.document, stored.created_at_ms)

    async def check(self, text: str, source: str | None = None) -> CatalogDocument:
        """The document checked as the server would: names the settings serve, credentials
        that exist and decrypt, files that exist."""
        ctx = await load_context(self.database, self._box, self.settings)
        return parse_catalog(
            text,
            source or self._source_name(),
            reserved=settings_model_names(self.settings),
            ctx=ctx,
        )

    async def apply(
        self, text: str, source: str | None = None, *, allow_empty: bool = False
    ) -> str:
        """Store ``text`` as the catalog (refused whole when invalid); its version. A
        document without models is refused (``EmptyCatalogRefused``) unless ``allow_empty``."""
        if self.file_managed:
            raise CatalogFileManaged(
                f"The catalog is managed by the file {self.settings.catalog_file} "
                "(OPENMAAS_CATALOG_FILE): edit that file instead."
            )
        if self.manager is not None:
            document = await self.manager.check(text)
        else:
            document = await self.check(text, source)
        if not document.models and not allow_empty:
            raise EmptyCatalogRefused()
        version = document_version(text)

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            old = await catalog_store.latest_document(conn)
            await catalog_store.insert_document(
                conn, version, text, self.changes.now_ms(), self.changes.actor
            )
            before = None if old is None else {"version": old.version}
            return AuditRecord("catalog.apply", "catalog", before, {"version": version})

        await self.changes.commit(write)
        if self.manager is not None:
            await self.manager.apply_text(text)
        return version

    # -- credentials --

    async def set_credential(self, name: str, credential: CredentialValue) -> bool:
        """Create or replace a credential; True when it is new. The value is sealed before
        it reaches the database and is never returned, logged or audited."""
        checked = _credential_name(name)
        sealed = self._box.seal(credential.value, checked)
        created: list[bool] = []

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            new = await catalog_store.put_credential(conn, checked, sealed, self.changes.now_ms())
            created.append(new)
            action = "credential.create" if new else "credential.replace"
            return AuditRecord(action, checked, None, {"name": checked})

        await self.changes.commit(write)
        await self._changed()
        return created[0]

    async def list_credentials(self) -> list[catalog_store.CredentialInfo]:
        async with self.database.connect() as conn:
            return await catalog_store.list_credentials(conn)

    async def delete_credential(self, name: str) -> None:
        checked = _credential_name(name)
        users = await self._credential_users(checked)
        if users:
            raise InvalidRequest(
                f"The credential '{checked}' is used by the catalog (deployment "
                f"{', '.join(sorted(users))}); change the catalog first.",
                "name",
            )

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            if not await catalog_store.delete_credential(conn, checked):
                raise NotFound(f"No credential named '{checked}'.")
            return AuditRecord("credential.delete", checked, {"name": checked}, None)

        await self.changes.commit(write)
        await self._changed()

    async def _credential_users(self, name: str) -> set[str]:
        current = await self.current()
        if not current.document:
            return set()
        try:
            document = parse_catalog(current.document, self._source_name())
        except CatalogRejected:
            return set()
        return {
            d.id for m in document.models for d in m.deployments if name in d.credentials_used()
        }

    async def _changed(self) -> None:
        if self.manager is not None:
            await self.manager.refresh()


def _credential_name(name: str) -> str:
    import re

    if not isinstance(name, str) or not re.match(CREDENTIAL_PATTERN, name):
        raise InvalidRequest(
            "A credential name is 1-100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            "name",
        )
    return name


def describe_model(model: ServedModel, aliases: Mapping[str, str]) -> dict[str, object]:
    """A model as the admin API shows it: its deployments with their state, circuit breaker
    and requests in flight."""
    engine = model.engine
    if isinstance(engine, RoutedEngine):
        outstanding = engine.outstanding()
        deployments = [
            {
                "id": m.id,
                "engine": type(m.engine).__name__,
                "data_class": m.deployment.data_class.value,
                "weight": m.deployment.weight,
                "priority": m.deployment.priority,
                "max_concurrency": m.deployment.max_concurrency,
                "state": m.engine.health().state.value,
                "breaker": engine.breaker_state(m.id).value,
                "outstanding": outstanding[m.id],
            }
            for m in engine.members
        ]
        fallbacks = [fb.model for fb in engine.fallbacks]
    else:
        deployments = [
            {
                "id": model.name,
                "engine": type(engine).__name__,
                "data_class": "local",
                "weight": 1,
                "priority": 0,
                "max_concurrency": None,
                "state": engine.health().state.value,
                "breaker": "closed",
                "outstanding": engine.capacity().in_flight,
            }
        ]
        fallbacks = []
    return {
        "id": model.name,
        "object": "model",
        "kind": model.kind.value,
        "source": model.source,
        "owned_by": model.owned_by,
        "context_length": model.context_length,
        "dimensions": model.dimensions,
        "capabilities": list(model.capabilities),
        "aliases": sorted(a for a, target in aliases.items() if target == model.name),
        "state": engine.health().state.value,
        "fallbacks": fallbacks,
        "deployments": deployments,
    }
