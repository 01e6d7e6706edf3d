"""The model catalog: which public model names exist and which engine serves each.

The catalog a server runs is the models its settings serve (embedded, ``local_models``,
``fake_models``, ``model_aliases``) plus those of the catalog document (``docs/catalog.md``),
each a ``RoutedEngine`` over its deployments. :class:`ModelCatalog` is the one object the
routes and the gateway read; :class:`CatalogManager` swaps what it holds when the document
changes (``replace``: one attribute, atomic), and :class:`CatalogAdmin` is what the CLI and
the admin API change it with (the stored document, upstream credentials; audited).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import ConfigurationError, InvalidRequest, ModelNotFound, NotFound
from openmaas.core.secretbox import SecretBox, SecretBoxError
from openmaas.engines.base import Engine, EngineState, ModelKind
from openmaas.services.catalog_file import (
    CatalogRejected,
    build_router,
    document_version,
    engine_fingerprint,
    parse_catalog,
)
from openmaas.services.catalog_schema import (
    CREDENTIAL_PATTERN,
    BuildContext,
    CatalogDocument,
    ModelSpec,
)
from openmaas.services.router import RoutedEngine
from openmaas.settings import Settings
from openmaas.store import billing as billing_store
from openmaas.store import catalog as catalog_store

log = logging.getLogger("openmaas.catalog")


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    engine: Engine
    owned_by: str = "openmaas"
    created: int = 0
    context_length: int | None = None
    dimensions: int | None = None  # embedding models
    capabilities: tuple[str, ...] = ()
    source: str = "settings"  # or "catalog": declared in the catalog document

    @property
    def kind(self) -> ModelKind:
        return self.engine.kind


@dataclass(frozen=True, slots=True)
class _View:
    models: Mapping[str, ServedModel]
    aliases: Mapping[str, str]


def _view(models: Iterable[ServedModel], aliases: Mapping[str, str] | None) -> _View:
    by_name = {m.name: m for m in models}
    alias_map = dict(aliases or {})
    for alias, target in alias_map.items():
        if alias in by_name:
            raise ConfigurationError(f"Model alias '{alias}' hides a served model's name.")
        if target not in by_name:
            raise ConfigurationError(f"Model alias '{alias}' names no served model '{target}'.")
    return _View(by_name, alias_map)


class ModelCatalog:
    def __init__(
        self, models: Iterable[ServedModel], aliases: Mapping[str, str] | None = None
    ) -> None:
        self._view = _view(models, aliases)
        self._loading: list[asyncio.Task[None]] = []

    def replace(
        self, models: Iterable[ServedModel], aliases: Mapping[str, str] | None = None
    ) -> None:
        """Serve ``models`` from now on: new requests see all of the new set or all of the
        old (one attribute swap). Engines are neither started nor stopped here."""
        self._view = _view(models, aliases)

    @property
    def aliases(self) -> Mapping[str, str]:
        return self._view.aliases

    def resolve(self, name: str) -> str:
        """The served model's name for ``name``: itself, or what its alias points to.
        (``get`` does not follow aliases: a route resolves first, so the request, its
        usage record and its response all carry the served name.)"""
        return self._view.aliases.get(name, name)

    def list(self) -> list[ServedModel]:
        return list(self._view.models.values())

    def get(self, name: str) -> ServedModel:
        try:
            return self._view.models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def for_kind(self, name: str, kind: ModelKind) -> ServedModel:
        model = self.get(name)
        if model.kind is not kind:
            raise InvalidRequest(
                f"The model '{name}' is a {model.kind.value} model and cannot serve this endpoint.",
                param="model",
            )
        return model

    def start_loading(self) -> None:
        """Load every engine in the background; requests get 503 until theirs is ready."""
        for model in self._view.models.values():
            self._loading.append(asyncio.create_task(self._load(model)))

    async def wait_loaded(self) -> None:
        await asyncio.gather(*self._loading, return_exceptions=True)

    @staticmethod
    async def _load(model: ServedModel) -> None:
        try:
            await model.engine.start()
        except Exception:
            log.exception("engine for %s failed to load", model.name)
        else:
            log.info("engine ready", extra={"model": model.name})

    def all_ready(self) -> bool:
        return all(m.engine.health().state is EngineState.READY for m in self._view.models.values())

    async def stop(self) -> None:
        for task in self._loading:
            task.cancel()
        await asyncio.gather(*self._loading, return_exceptions=True)
        for model in self._view.models.values():
            await model.engine.stop()


def settings_model_names(settings: Settings) -> set[str]:
    """The names and aliases the settings serve, without building any engine (a catalog
    document may not reuse them)."""
    names = set(settings.local_models) | set(settings.fake_models) | set(settings.model_aliases)
    if settings.embedded_models:
        from openmaas.engines import embedded

        names |= {embedded.CHAT_MODEL, embedded.EMBEDDING_MODEL}
    return names


def build_catalog(settings: Settings) -> ModelCatalog:
    from openmaas.engines.fake import FakeEngine, FakeScript

    models: list[ServedModel] = []
    if settings.embedded_models:
        models.extend(_embedded_models(settings))
    models.extend(_local_models(settings))
    for name, script in settings.fake_models.items():
        models.append(ServedModel(name, FakeEngine(name, FakeScript(**script)), owned_by="fake"))
    return ModelCatalog(models, settings.model_aliases)


def _local_models(settings: Settings) -> list[ServedModel]:
    from openmaas.engines.glm_format import GlmFormatEngine
    from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
    from openmaas.glm import GlmFamily

    served: list[ServedModel] = []
    for name, spec in settings.local_models.items():
        engine: Engine = LlamaCppEngine(
            name,
            LlamaCppConfig(
                model_path=spec.path,
                kind=ModelKind(spec.kind),
                slots=spec.slots,
                queue=settings.engine_queue,
                context_per_slot=spec.context,
                threads=spec.threads or settings.threads,
                pooling=spec.pooling,
            ),
        )
        if spec.kind == "chat" and spec.chat_format != "gguf":
            engine = GlmFormatEngine(name, GlmFamily(spec.chat_format), engine)
        served.append(ServedModel(name, engine, owned_by="local", context_length=spec.context))
    return served


def _embedded_models(settings: Settings) -> list[ServedModel]:
    from openmaas.engines import embedded
    from openmaas.engines.bert_gguf import ensure_gguf
    from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

    chat_path = embedded.chat_model_path()  # fail fast at start if the package is missing
    minilm_dir = embedded.embedding_model_dir()
    cache_dir: Path = settings.cache_dir
    chat = LlamaCppEngine(
        embedded.CHAT_MODEL,
        LlamaCppConfig(
            model_path=chat_path,
            kind=ModelKind.CHAT,
            slots=settings.chat_slots,
            queue=settings.engine_queue,
            context_per_slot=settings.chat_context,
            threads=settings.threads,
        ),
    )
    embed = LlamaCppEngine(
        embedded.EMBEDDING_MODEL,
        LlamaCppConfig(
            model_path=lambda: ensure_gguf(minilm_dir, cache_dir),
            kind=ModelKind.EMBEDDING,
            slots=settings.embedding_slots,
            queue=settings.engine_queue,
            context_per_slot=512,
            threads=settings.resolved_embedding_threads,
            pooling="mean",
            tokenizer_path=minilm_dir / "tokenizer.json",
            max_input_tokens=embedded.EMBEDDING_MAX_TOKENS,
        ),
    )
    return [
        ServedModel(
            embedded.CHAT_MODEL,
            chat,
            owned_by="HuggingFaceTB",
            context_length=settings.chat_context,
        ),
        ServedModel(
            embedded.EMBEDDING_MODEL,
            embed,
            owned_by="sentence-transformers",
            context_length=512,
            dimensions=embedded.EMBEDDING_DIMENSIONS,
        ),
    ]


# -- the catalog document, applied without a restart ---------------------------------------

CREDENTIAL_PURPOSE = "upstream-credentials"
_SETTLE_SECONDS = 1.0  # a retired engine is stopped once idle this long (admissions in progress)
_MAX_CREDENTIAL_CHARS = 16_384


class CatalogFileManaged(InvalidRequest):
    """The catalog comes from ``OPENMAAS_CATALOG_FILE``: edit the file instead (HTTP 409)."""


async def load_context(
    database: AsyncEngine, box: SecretBox, settings: Settings, *, decrypt: bool = True
) -> BuildContext:
    """What checking and building deployments needs: the credentials (decrypted only when
    ``decrypt``), defaults from the settings."""
    async with database.connect() as conn:
        infos = await catalog_store.list_credentials(conn)
        sealed = (
            await catalog_store.sealed_credentials(conn, {i.name for i in infos}) if decrypt else {}
        )
    values: dict[str, str] = {}
    unreadable: set[str] = set()
    for name, text in sealed.items():
        try:
            values[name] = box.open(text, name)
        except SecretBoxError:
            unreadable.add(name)
    return BuildContext(
        engine_queue=settings.engine_queue,
        threads=settings.threads,
        credential_names=frozenset(i.name for i in infos),
        credentials=values,
        credential_stamps={i.name: i.updated_at_ms for i in infos},
        unreadable=frozenset(unreadable),
    )


class _FileSource:
    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._seen: tuple[int, int] | None = None
        self._text: str | None = None

    async def read(self) -> str | None:
        """The file's text (re-read only when its mtime or size changed); None if missing."""
        try:
            stat = await asyncio.to_thread(self.path.stat)
        except OSError:
            return None
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen or self._text is None:
            try:
                self._text = await asyncio.to_thread(self.path.read_text, "utf-8")
            except (OSError, UnicodeDecodeError):
                return None
            self._seen = seen
        return self._text


class _DatabaseSource:
    kind = "database"
    name = "catalog"

    def __init__(self, database: AsyncEngine) -> None:
        self.database = database

    async def read(self) -> str | None:
        async with self.database.connect() as conn:
            stored = await catalog_store.latest_document(conn)
        return None if stored is None else stored.document  # None: none stored yet


@dataclass(frozen=True, slots=True)
class _Entry:
    spec: ModelSpec
    fingerprint: str
    engine: RoutedEngine


class CatalogManager:
    """Keeps the catalog's document models in step with the source (``OPENMAAS_CATALOG_FILE``,
    else the newest document stored in the database), polled every
    ``OPENMAAS_CATALOG_POLL_SECONDS``. A change is checked whole first; a refused one is
    logged and the running catalog stays. An accepted one: unchanged models keep their
    engines; new and changed ones are started, then the catalog is swapped at once; the
    engines left out stop taking requests at that moment and are stopped once their last
    request has finished (at most ``OPENMAAS_CATALOG_DRAIN_SECONDS``)."""

    def __init__(
        self,
        catalog: ModelCatalog,
        settings: Settings,
        database: AsyncEngine,
        master_key: bytes,
        clock: Clock | None = None,
    ) -> None:
        self.catalog = catalog
        self._base = catalog.list()
        self._base_aliases = dict(catalog.aliases)
        self.reserved = frozenset({m.name for m in self._base} | set(self._base_aliases))
        self._settings = settings
        self._database = database
        self._box = SecretBox(master_key, CREDENTIAL_PURPOSE)
        self._clock = clock or SystemClock()
        self.source: _FileSource | _DatabaseSource = (
            _FileSource(settings.catalog_file)
            if settings.catalog_file
            else _DatabaseSource(database)
        )
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()
        self._applied_key: tuple[str, tuple[tuple[str, int], ...]] | None = None
        self._refused_key: tuple[str, tuple[tuple[str, int], ...]] | None = None
        self._retiring: dict[asyncio.Task[None], Engine] = {}
        self._poller: asyncio.Task[None] | None = None
        self.version: str | None = None  # SHA-256 of the applied document
        self.document: str | None = None
        self.applied_at_ms: int | None = None

    @property
    def file_managed(self) -> bool:
        return isinstance(self.source, _FileSource)

    def retiring(self) -> int:
        """Engines taken out of the catalog and not yet stopped."""
        return len(self._retiring)

    async def start(self) -> None:
        """Apply the source's document (its engines load with the catalog's), then poll.
        A refused file stops the start; a refused stored document is logged."""
        text = await self.source.read()
        if text is not None:
            try:
                await self.apply_text(text, start_engines=False)
            except CatalogRejected as exc:
                if self.file_managed:
                    raise ConfigurationError(exc.message) from None
                log.error("the stored catalog is refused", extra={"issues": _rendered(exc)})
        elif self.file_managed:
            raise ConfigurationError(f"The catalog file {self.source.name} cannot be read.")
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.catalog_poll_seconds)
            try:
                await self.refresh()
            except Exception:  # the next round tries again
                log.exception("catalog reload failed")

    async def refresh(self) -> bool:
        """Re-read the source and the credentials' dates; apply when either changed.
        True when a new catalog was applied."""
        text = await self.source.read()
        if text is None:
            return False
        async with self._database.connect() as conn:
            infos = await catalog_store.list_credentials(conn)
        key = (document_version(text), tuple(sorted((i.name, i.updated_at_ms) for i in infos)))
        if key in (self._applied_key, self._refused_key):
            return False
        try:
            await self.apply_text(text)
        except CatalogRejected as exc:
            self._refused_key = key
            log.error(
                "catalog change refused; the running catalog stays",
                extra={"source": self.source.name, "issues": _rendered(exc)},
            )
            return False
        return True

    async def check(self, text: str) -> CatalogDocument:
        ctx = await load_context(self._database, self._box, self._settings)
        return parse_catalog(text, self.source.name, reserved=self.reserved, ctx=ctx)

    async def apply_text(self, text: str, *, start_engines: bool = True) -> str:
        """Check ``text`` whole (``CatalogRejected``) and apply it; its version."""
        async with self._lock:
            ctx = await load_context(self._database, self._box, self._settings)
            document = parse_catalog(text, self.source.name, reserved=self.reserved, ctx=ctx)
            version = document_version(text)
            await self._install(document, ctx, start_engines)
            self._applied_key = (version, tuple(sorted(ctx.credential_stamps.items())))
            self.version, self.document = version, text
            self.applied_at_ms = self._clock.now_ms()
        return version

    async def _install(
        self, document: CatalogDocument, ctx: BuildContext, start_engines: bool
    ) -> None:
        entries: dict[str, _Entry] = {}
        fresh: list[_Entry] = []
        for spec in document.models:
            fingerprint = engine_fingerprint(spec, ctx)
            old = self._entries.get(spec.name)
            if old is not None and old.fingerprint == fingerprint:
                entries[spec.name] = _Entry(spec, fingerprint, old.engine)
            else:
                entries[spec.name] = entry = _Entry(spec, fingerprint, build_router(spec, ctx))
                fresh.append(entry)
        for entry in entries.values():
            entry.engine.fallbacks = tuple(entries[n].engine for n in entry.spec.routing.fallbacks)
        if start_engines and fresh:
            results = await asyncio.gather(
                *(e.engine.start() for e in fresh), return_exceptions=True
            )
            for entry, result in zip(fresh, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("model failed to start", extra={"model": entry.spec.name})
        aliases = dict(self._base_aliases)
        aliases.update({a: e.spec.name for e in entries.values() for a in e.spec.aliases})
        self.catalog.replace([*self._base, *(_served(e) for e in entries.values())], aliases)
        kept = {id(e.engine) for e in entries.values()}
        removed = [e for e in self._entries.values() if id(e.engine) not in kept]
        for entry in removed:
            self._retire(entry.spec.name, entry.engine)
        log.info(
            "catalog applied",
            extra={
                "models": len(entries),
                "started": [e.spec.name for e in fresh],
                "retired": [e.spec.name for e in removed],
            },
        )
        self._entries = entries

    def _retire(self, name: str, engine: RoutedEngine) -> None:
        task = asyncio.create_task(self._drain_and_stop(name, engine))
        self._retiring[task] = engine
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _drain_and_stop(self, name: str, engine: RoutedEngine) -> None:
        """Stop ``engine`` once no request has been on it for a moment (requests that
        looked the model up before the swap may still be in admission), or at the grace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.catalog_drain_seconds
        idle_since: float | None = None
        while (now := loop.time()) < deadline:
            if engine.capacity().in_flight:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= _SETTLE_SECONDS:
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("retired model still busy at the end of its grace", extra={"model": name})
        await engine.stop()
        log.info("retired model stopped", extra={"model": name})

    async def stop(self) -> None:
        """Stop polling and every retired engine (the catalog's own stop the rest)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        pending = dict(self._retiring)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(e.stop() for e in pending.values()), return_exceptions=True)


def _rendered(exc: CatalogRejected) -> list[str]:
    return [issue.render(exc.source) for issue in exc.issues]


def _served(entry: _Entry) -> ServedModel:
    spec = entry.spec
    return ServedModel(
        spec.name,
        entry.engine,
        owned_by=spec.owned_by,
        context_length=spec.context_length,
        dimensions=spec.dimensions,
        capabilities=tuple(spec.capabilities),
        source="catalog",
    )


# -- administration: the stored document and the credentials (CLI and admin API) ----------


@dataclass(frozen=True, slots=True)
class CurrentCatalog:
    source: str  # "file" or "database"
    path: str | None  # the file, when file-managed
    version: str | None  # SHA-256 of the document; None: none yet
    document: str | None
    applied_at_ms: int | None  # when the server applied it (None: not known here)


class CatalogAdmin:
    """Changes to the catalog document and the upstream credentials, each audited in the
    transaction that makes it (as ``actor``). With ``manager`` (in the server) a change
    applies at once; otherwise (the CLI) the server's poll picks it up."""

    def __init__(
        self,
        database: AsyncEngine,
        settings: Settings,
        master_key: bytes,
        actor: str,
        *,
        manager: CatalogManager | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.actor = actor
        self.manager = manager
        self.clock = clock or SystemClock()
        self._box = SecretBox(master_key, CREDENTIAL_PURPOSE)

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

    async def apply(self, text: str, source: str | None = None) -> str:
        """Store ``text`` as the catalog (refused whole when invalid); its version."""
        if self.file_managed:
            raise CatalogFileManaged(
                f"The catalog is managed by the file {self.settings.catalog_file} "
                "(OPENMAAS_CATALOG_FILE): edit that file instead."
            )
        if self.manager is not None:
            await self.manager.check(text)
        else:
            await self.check(text, source)
        version = document_version(text)
        async with self.database.begin() as conn:
            old = await catalog_store.latest_document(conn)
            await catalog_store.insert_document(
                conn, version, text, self.clock.now_ms(), self.actor
            )
            before = None if old is None else {"version": old.version}
            await self._audit(conn, "catalog.apply", "catalog", before, {"version": version})
        if self.manager is not None:
            await self.manager.apply_text(text)
        return version

    # -- credentials --

    async def set_credential(self, name: object, value: object) -> bool:
        """Create or replace a credential; True when it is new. The value is sealed before
        it reaches the database and is never returned, logged or audited."""
        checked = _credential_name(name)
        if not isinstance(value, str) or not value:
            raise InvalidRequest("'value' must be a non-empty string.", "value")
        if len(value) > _MAX_CREDENTIAL_CHARS or any(c in value for c in "\r\n\0"):
            raise InvalidRequest(
                f"'value' must be one line of at most {_MAX_CREDENTIAL_CHARS} characters.",
                "value",
            )
        sealed = self._box.seal(value, checked)
        async with self.database.begin() as conn:
            created = await catalog_store.put_credential(conn, checked, sealed, self.clock.now_ms())
            action = "credential.create" if created else "credential.replace"
            await self._audit(conn, action, checked, None, {"name": checked})
        await self._changed()
        return created

    async def list_credentials(self) -> list[catalog_store.CredentialInfo]:
        async with self.database.connect() as conn:
            return await catalog_store.list_credentials(conn)

    async def delete_credential(self, name: object) -> None:
        checked = _credential_name(name)
        users = await self._credential_users(checked)
        if users:
            raise InvalidRequest(
                f"The credential '{checked}' is used by the catalog (deployment "
                f"{', '.join(sorted(users))}); change the catalog first.",
                "name",
            )
        async with self.database.begin() as conn:
            if not await catalog_store.delete_credential(conn, checked):
                raise NotFound(f"No credential named '{checked}'.")
            await self._audit(conn, "credential.delete", checked, {"name": checked}, None)
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

    async def _audit(
        self, conn: object, action: str, target: str, before: object, after: object
    ) -> None:
        await billing_store.audit(
            conn,  # type: ignore[arg-type]
            self.clock.now_ms(),
            self.actor,
            action,
            target,
            before,
            after,
        )


def _credential_name(name: object) -> str:
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
