"""Applying the catalog document without a restart (``docs/catalog.md``): the manager polls
its source (``OPENMAAS_CATALOG_FILE``, else the newest document stored in the database),
checks a change whole, starts what is new, swaps the catalog at once and retires what it
replaced once idle."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.secretbox import SecretBox, SecretBoxError
from openmaas.catalog.document import (
    CatalogRejected,
    build_router,
    document_version,
    engine_fingerprint,
    parse_catalog,
)
from openmaas.catalog.schema import (
    BuildContext,
    CatalogDocument,
    ModelSpec,
)
from openmaas.catalog.served import (
    CREDENTIAL_PURPOSE,
    ModelCatalog,
    ServedModel,
)
from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import ConfigurationError, InvalidRequest
from openmaas.engines.base import Engine
from openmaas.routing.router import RoutedEngine
from openmaas.settings import Settings
from openmaas.store import catalog as catalog_store

log = logging.getLogger("openmaas.catalog")

_SETTLE_SECONDS = 1.0  # a retired engine is stopped once idle this long (admissions in progress)


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
        engine_queue_share=settings.engine_queue_share,
        threads=settings.threads,
        cache_dir=settings.cache_dir,
        credential_names=frozenset(i.name for i in infos),
        credentials=values,
        credential_stamps={i.name: i.updated_at_ms for i in infos},
        unreadable=frozenset(unreadable),
        engine_socket=settings.engine_socket,  # with workers: local models are the host's
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
        if not text.strip():  # a file caught between its truncation and its new text, or
            return False  # emptied by mistake: every model would go (say `models: []`)
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
    return ServedModel.from_spec(entry.spec, entry.engine, source="catalog")


# -- administration: the stored document and the credentials (CLI and admin API) ----------
