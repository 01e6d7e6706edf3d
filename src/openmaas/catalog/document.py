"""Reading a catalog document (YAML): every problem named by its line and field.

``parse_catalog(text, source)`` returns a :class:`CatalogDocument` or raises
:class:`CatalogRejected`, whose ``issues`` read like
``catalog.yaml:14: models[0].deployments[1].weight: must be ≥ 1``. Three passes, each
reporting all it finds:

1. YAML syntax (the parser's own line), duplicate keys, a document that is not a mapping;
2. the schema (``catalog/schema.py``): pydantic's error locations are walked down
   the composed node tree to the node's line;
3. cross-checks: unique model names, aliases and deployment ids; fallbacks that exist, are
   of the same kind and are not the model itself; engine kinds that can serve the model's
   kind; no clash with the models the settings serve; and, with a :class:`BuildContext`,
   what the running system must have (a credential by that name, a GGUF file at that path).

:func:`check_document` runs the cross-checks on a document built in code (the settings'
models: ``catalog/builtin.py``). :func:`build_router` then turns one checked model into a
``RoutedEngine`` over its deployments (its fallbacks are wired by the catalog, which owns
every model's router).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from openmaas.catalog.schema import (
    BuildContext,
    CatalogDocument,
    DeploymentBase,
    ModelSpec,
    engine_kind_names,
)
from openmaas.core.errors import InvalidRequest
from openmaas.engines.base import Engine, share_queue
from openmaas.routing.router import DataClass, Deployment, RoutedEngine, RouterConfig

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class CatalogIssue:
    line: int | None  # 1-based; None when the document has no such line
    field: str  # e.g. "models[0].deployments[1].weight"; "" for the whole document
    message: str

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


class CatalogRejected(InvalidRequest):
    """A catalog document that cannot be applied; ``issues`` says where and why."""

    def __init__(self, source: str, issues: Sequence[CatalogIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = [issue.render(source) for issue in self.issues]
        super().__init__("The catalog is invalid:\n" + "\n".join(lines), "catalog")


def document_version(text: str) -> str:
    """The version of a document: the SHA-256 of its text."""
    return hashlib.sha256(text.encode()).hexdigest()


def field_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# -- 1. YAML --------------------------------------------------------------------------


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        raise CatalogRejected(source, [CatalogIssue(line, "", f"YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise CatalogRejected(source, [CatalogIssue(None, "", f"YAML: {exc}")]) from None
    return node, data


def _duplicate_keys(node: yaml.Node | None, path: Path_ = ()) -> list[CatalogIssue]:
    issues: list[CatalogIssue] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                issues.append(
                    CatalogIssue(
                        key.start_mark.line + 1, field_path((*path, name)), "duplicate key"
                    )
                )
            seen.add(name)
            issues += _duplicate_keys(value, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues += _duplicate_keys(item, (*path, index))
    return issues


# -- 2. schema: locations to lines ----------------------------------------------------


class _Locator:
    """Maps a pydantic error location to (line, field path) through the composed nodes."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def find(self, loc: Sequence[str | int]) -> tuple[int | None, Path_]:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        path: list[str | int] = []
        for part in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                if _is_tag(node, part):  # a tagged union's tag (the engine kind): not a key
                    continue
                found = next(((k, v) for k, v in node.value if str(k.value) == part), None)
                path.append(part)
                if found is None:  # a missing field: the line of the mapping that lacks it
                    node = None
                    continue
                line = found[0].start_mark.line + 1
                node = found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                path.append(part)
                if part >= len(node.value):
                    node = None
                    continue
                node = node.value[part]
                line = node.start_mark.line + 1
            elif node is None:
                path.append(part)
            # else: a tagged-union tag (the engine kind) that is not in the document: skip
        return line, tuple(path)


def _is_tag(node: yaml.MappingNode, part: str) -> bool:
    keys = {str(k.value): v for k, v in node.value}
    engine = keys.get("engine")
    return part not in keys and isinstance(engine, yaml.ScalarNode) and engine.value == part


def describe_error(error: Any) -> str:
    """A pydantic error (one of ``ValidationError.errors()``) in the catalog's words."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "greater_than_equal":
        return f"must be ≥ {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"must be ≤ {ctx.get('le')}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return "is not a valid name (letters, digits and . _ - ; at most 100-200 characters)"
    if kind == "string_type":
        return "must be a string (in quotes)"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "union_tag_invalid":
        kinds = ", ".join(engine_kind_names())
        return f"unknown engine kind {ctx.get('tag')!r}; one of {kinds}"
    if kind == "union_tag_not_found":
        return "is required (the engine kind)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _schema_issues(exc: ValidationError, locator: _Locator) -> list[CatalogIssue]:
    issues: list[CatalogIssue] = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("engine")
        line, path = locator.find(loc)
        issues.append(CatalogIssue(line, field_path(path), describe_error(error)))
    return sorted(issues, key=lambda issue: issue.line or 0)


# -- 3. cross-checks ------------------------------------------------------------------


def _cross_issues(
    document: CatalogDocument,
    locator: _Locator,
    reserved: Iterable[str],
    ctx: BuildContext | None,
) -> list[CatalogIssue]:
    issues: list[CatalogIssue] = []

    def add(loc: Sequence[str | int], message: str) -> None:
        line, path = locator.find(loc)
        issues.append(CatalogIssue(line, field_path(path), message))

    taken = set(reserved)
    names: dict[str, ModelSpec] = {}
    deployment_ids: set[str] = set()
    for i, model in enumerate(document.models):
        if model.name in taken:
            clash = "a model the settings serve" if model.name in reserved else "taken"
            add(("models", i, "name"), f"'{model.name}' is already {clash}")
        taken.add(model.name)
        names.setdefault(model.name, model)
        for j, alias in enumerate(model.aliases):
            if alias in taken:
                add(("models", i, "aliases", j), f"'{alias}' is already a model name or alias")
            taken.add(alias)
        if model.dimensions is not None and model.kind != "embedding":
            add(("models", i, "dimensions"), "only an embedding model has dimensions")
        for j, deployment in enumerate(model.deployments):
            where = ("models", i, "deployments", j)
            if deployment.id in deployment_ids:
                add((*where, "id"), f"deployment id '{deployment.id}' is used twice")
            deployment_ids.add(deployment.id)
            if not deployment.serves(model.model_kind):
                add(
                    (*where, "engine"),
                    f"a '{deployment.engine}' deployment cannot serve a {model.kind} model",
                )
            if ctx is not None:
                for name, message in deployment.problems(ctx):
                    add((*where, name), message)
    for i, model in enumerate(document.models):
        for j, fallback in enumerate(model.routing.fallbacks):
            at = ("models", i, "routing", "fallbacks", j)
            target = names.get(fallback)
            if fallback == model.name:
                add(at, "a model cannot fall back to itself")
            elif target is None:
                add(at, f"no model '{fallback}' in this catalog")
            elif target.kind != model.kind:
                add(at, f"'{fallback}' is a {target.kind} model, not {model.kind}")
    return issues


# -- the entry point ------------------------------------------------------------------


def parse_catalog(
    text: str,
    source: str = "catalog.yaml",
    *,
    reserved: Iterable[str] = (),
    ctx: BuildContext | None = None,
) -> CatalogDocument:
    """The checked document, or :class:`CatalogRejected` listing every problem found.
    ``reserved``: names and aliases the settings already serve; ``ctx``: what the running
    system has (None: credentials and paths are not checked)."""
    node, data = _compose(text, source)
    locator = _Locator(node)
    issues = _duplicate_keys(node)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        line = node.start_mark.line + 1 if node is not None else None
        raise CatalogRejected(source, [CatalogIssue(line, "", "the document must be a mapping")])
    if issues:
        raise CatalogRejected(source, issues)
    try:
        document = CatalogDocument.model_validate(data)
    except ValidationError as exc:
        raise CatalogRejected(source, _schema_issues(exc, locator)) from None
    issues = _cross_issues(document, locator, frozenset(reserved), ctx)
    if issues:
        raise CatalogRejected(source, issues)
    return document


def check_document(
    document: CatalogDocument,
    source: str,
    *,
    reserved: Iterable[str] = (),
    ctx: BuildContext | None = None,
) -> None:
    """The cross-checks of a document built in code rather than read (no lines to name):
    :class:`CatalogRejected` listing every problem found."""
    issues = _cross_issues(document, _Locator(None), frozenset(reserved), ctx)
    if issues:
        raise CatalogRejected(source, issues)


def credentials_used(document: CatalogDocument) -> set[str]:
    return {name for m in document.models for d in m.deployments for name in d.credentials_used()}


def engine_fingerprint(model: ModelSpec, ctx: BuildContext) -> str:
    """Changes when the model's engines must be rebuilt (its kind, routing options other
    than fallbacks, a deployment, a credential it uses); names, aliases, owner and
    capabilities change without a restart."""
    routing = model.routing.model_dump(exclude={"fallbacks"})
    parts = [model.kind, repr(sorted(routing.items()))]
    parts += [d.fingerprint(ctx) for d in model.deployments]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def build_router(model: ModelSpec, ctx: BuildContext) -> RoutedEngine:
    """A ``RoutedEngine`` over the model's deployments, fallbacks not yet wired."""
    r = model.routing
    config = RouterConfig(
        affinity=r.affinity,
        affinity_chars=r.affinity_chars,
        max_attempts=r.max_attempts,
        failover_budget_s=r.failover_budget_s,
        first_token_timeout_s=r.first_token_timeout_s,
        health_interval_s=r.health_interval_s,
        probe_timeout_s=r.probe_timeout_s,
    )
    deployments = [
        Deployment(
            id=d.id,
            engine=_engine(d, model, ctx),
            weight=d.weight,
            max_concurrency=d.max_concurrency,
            data_class=DataClass(d.data_class),
            priority=d.priority,
        )
        for d in model.deployments
    ]
    return RoutedEngine(model.name, deployments, config=config)


def _engine(deployment: DeploymentBase, model: ModelSpec, ctx: BuildContext) -> Engine:
    """A deployment's engine: built here, or, given an engine host (``ctx.engine_socket``)
    and a deployment that loads into its process, the host's, held while it runs."""
    if ctx.engine_socket is not None and deployment.in_process:
        engine = deployment.build_hosted(
            model.name, model.model_kind, ctx.engine_socket, ctx, held=True
        )
    else:
        engine = deployment.build(model.name, model.model_kind, ctx)
    return share_queue(engine, ctx.engine_queue_share)
