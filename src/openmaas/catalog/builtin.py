"""The models the settings declare, as a built-in catalog document.

``OPENMAAS_EMBEDDED_MODELS`` (with ``CHAT_SLOTS``, ``CHAT_CONTEXT``, ``EMBEDDING_SLOTS``,
``THREADS``, ``EMBEDDING_THREADS``, ``ENGINE_QUEUE``), ``OPENMAAS_LOCAL_MODELS``,
``OPENMAAS_FAKE_MODELS`` and ``OPENMAAS_MODEL_ALIASES`` become a :class:`CatalogDocument`
of the catalog's own schema (``catalog/schema.py``): each model one deployment, of kind
``embedded``, ``llamacpp`` or ``fake``, built by the same deployment classes as a catalog
file's. :func:`settings_document` builds it without touching any model file;
``catalog/served.py``'s ``build_catalog`` builds its engines.

A settings model has one deployment and no routing options, so it is served by that
deployment's engine directly, not through a router: its usage records name no deployment
or route, as before. A catalog document may not reuse a name or alias declared here.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from openmaas.catalog.document import (
    CatalogRejected,
    check_document,
    describe_error,
    field_path,
)
from openmaas.catalog.schema import ID_PATTERN, BuildContext, CatalogDocument, ModelSpec
from openmaas.core.errors import ConfigurationError
from openmaas.engines.base import Engine, share_queue
from openmaas.settings import Settings

SOURCE = "settings"


def settings_context(settings: Settings) -> BuildContext:
    """What building the settings' engines uses: their defaults and the model cache."""
    return BuildContext(
        engine_queue=settings.engine_queue,
        engine_queue_share=settings.engine_queue_share,
        threads=settings.threads,
        check_paths=False,  # a missing file fails that model's load (503), not the start
        cache_dir=settings.cache_dir,
        engine_socket=settings.engine_socket,
    )


def settings_document(settings: Settings) -> CatalogDocument:
    """The models the settings declare, checked by the catalog's schema and cross-checks;
    ``ConfigurationError`` names the setting of anything refused."""
    models: list[tuple[str, dict[str, Any]]] = []  # (the setting that declares it, model)
    if settings.embedded_models:
        models += _embedded(settings)
    for name, local in settings.local_models.items():
        fields = local.model_dump(exclude={"kind"}, exclude_none=True)
        deployment = {"engine": "llamacpp", **fields}
        model: dict[str, Any] = {"name": name, "kind": local.kind, "owned_by": "local"}
        model |= {"context_length": local.context, "deployments": [deployment]}
        models.append(("OPENMAAS_LOCAL_MODELS", model))
    for name, script in settings.fake_models.items():
        deployment = {"engine": "fake", "script": script}
        model = {"name": name, "owned_by": "fake", "deployments": [deployment]}
        models.append(("OPENMAAS_FAKE_MODELS", model))
    _give_ids([model for _, model in models])
    _attach_aliases([model for _, model in models], settings.model_aliases)
    specs = [_spec(setting, model) for setting, model in models]
    document = CatalogDocument(models=specs)
    try:
        check_document(document, SOURCE)
    except CatalogRejected as exc:
        problems = "; ".join(issue.message for issue in exc.issues)
        raise ConfigurationError(f"The models the settings declare clash: {problems}.") from None
    return document


def settings_model_names(settings: Settings) -> set[str]:
    """The names and aliases the settings serve, without building any engine (a catalog
    document may not reuse them)."""
    document = settings_document(settings)
    return {m.name for m in document.models} | {a for m in document.models for a in m.aliases}


def build_engine(spec: ModelSpec, ctx: BuildContext) -> Engine:
    """The engine of a settings model: its one deployment's, served directly; with an
    engine host (``OPENMAAS_ENGINE_SOCKET``), an in-process model is the host's."""
    [deployment] = spec.deployments
    if ctx.engine_socket is not None and deployment.in_process:
        engine = deployment.build_hosted(spec.name, spec.model_kind, ctx.engine_socket, ctx)
    else:
        engine = deployment.build(spec.name, spec.model_kind, ctx)
    return share_queue(engine, ctx.engine_queue_share)


def _embedded(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    from openmaas.engines import embedded

    chat = {
        "name": embedded.CHAT_MODEL,
        "kind": "chat",
        "owned_by": "HuggingFaceTB",
        "context_length": settings.chat_context,
        "deployments": [
            {
                "engine": "embedded",
                "model": embedded.CHAT_MODEL,
                "slots": settings.chat_slots,
                "context": settings.chat_context,
                "threads": settings.threads,
            }
        ],
    }
    embedding = {
        "name": embedded.EMBEDDING_MODEL,
        "kind": "embedding",
        "owned_by": "sentence-transformers",
        "context_length": embedded.EMBEDDING_CONTEXT,
        "dimensions": embedded.EMBEDDING_DIMENSIONS,
        "deployments": [
            {
                "engine": "embedded",
                "model": embedded.EMBEDDING_MODEL,
                "slots": settings.embedding_slots,
                "threads": settings.resolved_embedding_threads,
            }
        ],
    }
    return [("OPENMAAS_EMBEDDED_MODELS", chat), ("OPENMAAS_EMBEDDED_MODELS", embedding)]


def _give_ids(models: list[dict[str, Any]]) -> None:
    """Each deployment's id: its model's name where that is a valid id, else the name with
    the characters an id may not have replaced; unique."""
    taken: set[str] = set()
    for model in models:
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", model["name"]).strip("-_.")[:100] or "model"
        ident, n = base, 1
        while ident in taken or not re.match(ID_PATTERN, ident):
            n += 1
            ident = f"{base}-{n}"
        taken.add(ident)
        model["deployments"][0]["id"] = ident


def _attach_aliases(models: list[dict[str, Any]], aliases: dict[str, str]) -> None:
    by_name = {model["name"]: model for model in models}
    for alias, target in aliases.items():
        if alias in by_name:
            raise ConfigurationError(f"Model alias '{alias}' hides a served model's name.")
        if target not in by_name:
            raise ConfigurationError(f"Model alias '{alias}' names no served model '{target}'.")
        by_name[target].setdefault("aliases", []).append(alias)


def _spec(setting: str, model: dict[str, Any]) -> ModelSpec:
    try:
        return ModelSpec.model_validate(model)
    except ValidationError as exc:
        tag = model["deployments"][0]["engine"]  # pydantic names the union's member
        problems = "; ".join(
            f"{field_path(p for p in error['loc'] if p != tag)}: {describe_error(error)}"
            for error in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"{setting}: the model '{model['name']}': {problems}") from None
