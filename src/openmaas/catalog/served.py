"""The model catalog: which public model names exist and which engine serves each.

The catalog a server runs is the models its settings declare (embedded, ``local_models``,
``fake_models``, ``model_aliases``: the built-in document of ``catalog/builtin.py``, each
served by its one deployment's engine) plus those of the catalog document
(``docs/catalog.md``), each a ``RoutedEngine`` over its deployments. :class:`ModelCatalog`
is the one object the routes and the gateway read; ``catalog/reloader.py`` swaps what it
holds when the document changes (``replace``: one attribute, atomic), and
``catalog/admin.py`` is what the CLI and the admin API change it with (the stored
document, upstream credentials).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from openmaas.catalog.builtin import (
    build_engine,
    settings_context,
    settings_document,
    settings_model_names,
)
from openmaas.catalog.schema import ModelSpec
from openmaas.core.errors import ConfigurationError, InvalidRequest, ModelNotFound
from openmaas.engines.base import Engine, EngineState, ModelKind
from openmaas.settings import Settings

__all__ = [
    "CREDENTIAL_PURPOSE",
    "ModelCatalog",
    "ServedModel",
    "build_catalog",
    "settings_model_names",  # catalog/builtin.py's, where the CLI and the admin look for it
]

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

    @classmethod
    def from_spec(cls, spec: ModelSpec, engine: Engine, source: str = "settings") -> ServedModel:
        """The model ``spec`` declares, served by ``engine``."""
        return cls(
            spec.name,
            engine,
            owned_by=spec.owned_by,
            context_length=spec.context_length,
            dimensions=spec.dimensions,
            capabilities=tuple(spec.capabilities),
            source=source,
        )


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

    def allows(self, models: Collection[str] | None, name: str) -> bool:
        """Whether a key restricted to ``models`` (None: every model) may use the served
        model ``name``: named there itself or by one of its aliases."""
        if models is None or name in models:
            return True
        aliases = self._view.aliases
        return any(aliases.get(allowed) == name for allowed in models)

    def usable(self, models: Collection[str] | None) -> tuple[ServedModel, ...]:
        """The served models a key restricted to ``models`` may use (what it is listed)."""
        return tuple(m for m in self._view.models.values() if self.allows(models, m.name))

    def check_allowed(self, models: Collection[str] | None, name: str) -> None:
        """Refuse a model the key may not use as one that does not exist (404): the key is
        not told what else the server serves."""
        if not self.allows(models, name):
            raise ModelNotFound(name)

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

    def all_settled(self) -> bool:
        """No engine is still loading. One that failed (a model file missing, an upstream
        down) is reported as failed and refuses its own requests; it does not make the
        whole server unready, which would take every other model out of service too."""
        return all(
            m.engine.health().state is not EngineState.LOADING for m in self._view.models.values()
        )

    async def stop(self) -> None:
        for task in self._loading:
            task.cancel()
        await asyncio.gather(*self._loading, return_exceptions=True)
        for model in self._view.models.values():
            await model.engine.stop()


def build_catalog(settings: Settings) -> ModelCatalog:
    """The catalog of the models the settings declare: the built-in document's models
    (``catalog/builtin.py``), each served by its one deployment's engine."""
    document = settings_document(settings)
    ctx = settings_context(settings)
    models = [ServedModel.from_spec(spec, build_engine(spec, ctx)) for spec in document.models]
    aliases = {alias: spec.name for spec in document.models for alias in spec.aliases}
    return ModelCatalog(models, aliases)


# -- the catalog document, applied without a restart ---------------------------------------

CREDENTIAL_PURPOSE = "upstream-credentials"
