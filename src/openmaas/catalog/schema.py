"""The catalog document's schema (``docs/catalog.md``): models and their deployments.

Each engine kind is one deployment class, a member of :data:`DEPLOYMENT_KINDS`, the one
registry of engine kinds: a new kind plugs in by adding its class there, as ``vllm`` did.
A class declares its fields (the only parser of them), the model kinds it can serve, the
checks that need the running system (``problems``: a credential that exists, a file that
does), how its configuration is fingerprinted (a change restarts the deployment), and how
it builds its engine. The models the settings declare are a document of this schema too
(``catalog/builtin.py``), built by the same classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openmaas.engines.base import Engine, ModelKind
from openmaas.engines.fake import FakeScript
from openmaas.settings import LlamaCppModel

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$"
CREDENTIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

Capability = Literal["tools", "reasoning", "vision", "embeddings"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What building or checking a deployment may use: defaults from the settings, the
    credentials that exist (names) and, when building, their decrypted values."""

    engine_queue: int = 64
    engine_queue_share: float = 0.5  # of each engine's queue, one organization's at most
    threads: int = 1
    credential_names: frozenset[str] | None = None  # None: not checked (offline `check`)
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    credential_stamps: Mapping[str, int] = field(default_factory=dict)  # name → updated_at
    unreadable: frozenset[str] = frozenset()  # exist but do not decrypt (another master key)
    check_paths: bool = True
    cache_dir: Path = Path(".openmaas") / "cache"  # converted model files (OPENMAAS_HOME/cache)
    # The engine host serving the in-process models (engines/hosted.py), if any: the
    # settings' ones (catalog/builtin.py) and those of the catalog document it is told of.
    engine_socket: Path | None = None


class DeploymentBase(_Strict):
    """Fields every engine kind shares."""

    engine: str
    id: str = Field(pattern=ID_PATTERN)
    weight: int = Field(1, ge=1)
    max_concurrency: int | None = Field(None, ge=1)
    data_class: Literal["local", "external"] = "local"
    priority: int = Field(0, ge=0)

    kinds: ClassVar[frozenset[ModelKind]] = frozenset(ModelKind)  # model kinds it can serve
    # Loaded into the serving process (llama.cpp): an engine host can serve it instead.
    in_process: ClassVar[bool] = False

    def serves(self, kind: ModelKind) -> bool:
        """Whether this deployment can serve a model of ``kind``."""
        return kind in self.kinds

    def problems(self, ctx: BuildContext) -> list[tuple[str, str]]:
        """(field, message) for what the running system refuses."""
        return []

    def fingerprint(self, ctx: BuildContext) -> str:
        text = self.model_dump_json()
        for name in sorted(self.credentials_used()):
            text += f"|{name}@{ctx.credential_stamps.get(name, 0)}"
        return hashlib.sha256(text.encode()).hexdigest()

    def credentials_used(self) -> set[str]:
        return set()

    def build(self, model: str, kind: ModelKind, ctx: BuildContext) -> Engine:
        raise NotImplementedError

    def build_hosted(
        self, model: str, kind: ModelKind, socket: Path, ctx: BuildContext, *, held: bool = False
    ) -> Engine:
        """The engine of an ``in_process`` deployment that the engine host listening on
        ``socket`` serves (``engines/hosted.py``). ``held``: a deployment of the catalog
        document, which the host loads while an engine holds it (the host loads the
        settings' models from its own settings)."""
        raise NotImplementedError


def _hosted(
    deployment: DeploymentBase,
    model: str,
    kind: ModelKind,
    socket: Path,
    ctx: BuildContext,
    *,
    slots: int,
    queue: int | None,
    held: bool,
) -> Engine:
    """A client of the engine host's model, with the capacity of the host's engine."""
    from openmaas.engines.hosted import HeldDeployment, HostedConfig, HostedEngine

    queue = ctx.engine_queue if queue is None else queue
    declared = HeldDeployment(model, kind, deployment.model_dump(mode="json")) if held else None
    return HostedEngine(model, HostedConfig(socket, kind, slots, queue, declared))


class Timeouts(_Strict):
    connect: float | None = Field(10.0, gt=0)
    first_token: float | None = Field(120.0, gt=0)
    idle: float | None = Field(60.0, gt=0)
    total: float | None = Field(900.0, gt=0)


class UpstreamPrice(_Strict):
    """What the upstream charges per 1M tokens, as decimal strings."""

    input: str
    cached_input: str | None = None  # default: as input
    output: str
    reasoning: str | None = None
    currency: Literal["CNY", "USD"] = "USD"

    @field_validator("input", "cached_input", "output", "reasoning")
    @classmethod
    def _decimal(cls, value: str | None) -> str | None:
        from openmaas.core.money import parse_micros

        if value is None:
            return None
        try:
            micros = parse_micros(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'must be a decimal string such as "0.60" ({exc})') from None
        if micros < 0:
            raise ValueError("must not be negative")
        return value


class OpenAIDeployment(DeploymentBase):
    """Any OpenAI-compatible HTTP upstream (vLLM, SGLang, Ollama, Zhipu, OpenAI...)."""

    engine: Literal["openai"]
    base_url: str
    upstream_model: str = Field(min_length=1)
    credential: str | None = Field(None, pattern=CREDENTIAL_PATTERN)
    headers: dict[str, str] = Field(default_factory=dict)
    slots: int = Field(16, ge=1)
    queue: int = Field(0, ge=0)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    price: UpstreamPrice | None = None
    probe_models: bool = False
    cache_salt: bool = False  # a vLLM upstream: its prefix cache kept per organization
    whole_answers: bool = True  # a non-streaming client's answer asked for in one response
    data_class: Literal["local", "external"] = "external"  # the data leaves unless told

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        import urllib.parse

        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://gpu-1:8000/v1")
        if parts.username or parts.password:
            raise ValueError("must not contain a user or password (use 'credential')")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        if any(name.lower() == "authorization" for name in value):
            raise ValueError("must not set Authorization (use 'credential')")
        return value

    def credentials_used(self) -> set[str]:
        return {self.credential} if self.credential else set()

    def problems(self, ctx: BuildContext) -> list[tuple[str, str]]:
        names = ctx.credential_names
        if self.credential and names is not None and self.credential not in names:
            return [
                (
                    "credential",
                    f"no credential named '{self.credential}' "
                    f"(openmaas credentials set {self.credential})",
                )
            ]
        if self.credential in ctx.unreadable:
            return [
                (
                    "credential",
                    f"the credential '{self.credential}' cannot be decrypted with this "
                    "master key (set it again)",
                )
            ]
        return []

    def build(self, model: str, kind: ModelKind, ctx: BuildContext) -> Engine:
        from openmaas.core.money import Currency, parse_micros
        from openmaas.core.prices import ModelPrice
        from openmaas.engines.upstream.openai_http import OpenAIHttpConfig, OpenAIHttpEngine
        from openmaas.engines.upstream.openai_http import Timeouts as EngineTimeouts

        price = None
        if self.price is not None:
            p = self.price
            price = ModelPrice(
                model=model,
                input_per_million=parse_micros(p.input),
                cached_input_per_million=parse_micros(p.cached_input or p.input),
                output_per_million=parse_micros(p.output),
                reasoning_per_million=None if p.reasoning is None else parse_micros(p.reasoning),
                currency=Currency(p.currency),
            )
        t = self.timeouts
        return OpenAIHttpEngine(
            model,
            OpenAIHttpConfig(
                base_url=self.base_url,
                upstream_model=self.upstream_model,
                api_key=ctx.credentials.get(self.credential) if self.credential else None,
                headers=dict(self.headers),
                kind=kind,
                slots=self.slots,
                queue=self.queue,
                timeouts=EngineTimeouts(t.connect, t.first_token, t.idle, t.total),
                deployment=self.id,
                price=price,
                probe_models=self.probe_models,
                cache_salt=self.cache_salt,
                whole_answers=self.whole_answers,
            ),
        )


class LlamaCppDeployment(LlamaCppModel, DeploymentBase):
    """A GGUF file served in-process by llama.cpp."""

    engine: Literal["llamacpp"]
    queue: int | None = Field(None, ge=0)  # default: OPENMAAS_ENGINE_QUEUE

    in_process: ClassVar[bool] = True

    def build_hosted(
        self, model: str, kind: ModelKind, socket: Path, ctx: BuildContext, *, held: bool = False
    ) -> Engine:
        return _hosted(
            self, model, kind, socket, ctx, slots=self.slots, queue=self.queue, held=held
        )

    def problems(self, ctx: BuildContext) -> list[tuple[str, str]]:
        if ctx.check_paths and not self.path.is_file():
            return [("path", f"no file at {self.path}")]
        return []

    def build(self, model: str, kind: ModelKind, ctx: BuildContext) -> Engine:
        from openmaas.engines.glm_format import GlmFormatEngine
        from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
        from openmaas.glm import GlmFamily

        engine: Engine = LlamaCppEngine(
            model,
            LlamaCppConfig(
                model_path=self.path,
                kind=kind,
                slots=self.slots,
                queue=ctx.engine_queue if self.queue is None else self.queue,
                context_per_slot=self.context,
                threads=self.threads or ctx.threads,
                pooling=self.pooling,
            ),
        )
        if kind is ModelKind.CHAT and self.chat_format != "gguf":
            engine = GlmFormatEngine(model, GlmFamily(self.chat_format), engine)
        return engine


class EmbeddedDeployment(DeploymentBase):
    """A model packaged with OpenMaaS (``engines/embedded.py``), served in-process by
    llama.cpp: ``smollm2-135m-instruct`` (chat) or ``all-minilm-l6-v2`` (embedding). The
    settings serve both this way (``OPENMAAS_EMBEDDED_MODELS``)."""

    engine: Literal["embedded"]
    model: str
    slots: int = Field(2, ge=1)
    queue: int | None = Field(None, ge=0)  # default: OPENMAAS_ENGINE_QUEUE
    context: int | None = Field(None, ge=256)  # the chat model's, per slot (default 2048)
    threads: int | None = Field(None, ge=1)  # default: OPENMAAS_THREADS

    in_process: ClassVar[bool] = True

    def build_hosted(
        self, model: str, kind: ModelKind, socket: Path, ctx: BuildContext, *, held: bool = False
    ) -> Engine:
        return _hosted(
            self, model, kind, socket, ctx, slots=self.slots, queue=self.queue, held=held
        )

    @field_validator("model")
    @classmethod
    def _packaged(cls, value: str) -> str:
        from openmaas.engines import embedded

        if embedded.kind_of(value) is None:
            names = f"{embedded.CHAT_MODEL} or {embedded.EMBEDDING_MODEL}"
            raise ValueError(f"must name a packaged model: {names}")
        return value

    @model_validator(mode="after")
    def _context(self) -> EmbeddedDeployment:
        from openmaas.engines import embedded

        if self.context is not None and embedded.kind_of(self.model) is not ModelKind.CHAT:
            raise ValueError(f"the context of {self.model} is fixed; leave 'context' out")
        return self

    def serves(self, kind: ModelKind) -> bool:
        from openmaas.engines import embedded

        return embedded.kind_of(self.model) is kind

    def problems(self, ctx: BuildContext) -> list[tuple[str, str]]:
        from openmaas.core.errors import ModelFilesMissing
        from openmaas.engines import embedded

        if ctx.check_paths:
            try:
                embedded.check_installed(self.model)
            except ModelFilesMissing as exc:
                return [("model", exc.message)]
        return []

    def build(self, model: str, kind: ModelKind, ctx: BuildContext) -> Engine:
        from openmaas.engines import embedded

        return embedded.engine(
            model,
            self.model,
            slots=self.slots,
            queue=ctx.engine_queue if self.queue is None else self.queue,
            threads=self.threads or ctx.threads,
            context=self.context,
            cache_dir=ctx.cache_dir,
        )


class FakeDeployment(DeploymentBase):
    """A scripted fake engine (tests and demos)."""

    engine: Literal["fake"]
    script: FakeScript = Field(default_factory=FakeScript)

    kinds: ClassVar[frozenset[ModelKind]] = frozenset({ModelKind.CHAT})

    def build(self, model: str, kind: ModelKind, ctx: BuildContext) -> Engine:
        from openmaas.engines.fake import FakeEngine

        return FakeEngine(model, self.script)


class VllmDeployment(DeploymentBase):
    """A ``vllm serve`` process OpenMaaS starts and supervises (``docs/engines.md``,
    "Managed vLLM"); the platform runs without vLLM installed, such a model then fails to
    start and answers 503."""

    engine: Literal["vllm"]
    model: str = Field(min_length=1)  # a weights directory (or a model id already cached)
    served_model_name: str | None = None
    tensor_parallel_size: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(1800.0, gt=0)
    slots: int = Field(64, ge=1)
    queue: int = Field(0, ge=0)
    timeouts: Timeouts = Field(default_factory=Timeouts)

    def problems(self, ctx: BuildContext) -> list[tuple[str, str]]:
        if ctx.check_paths and self.model.startswith("/") and not Path(self.model).exists():
            return [("model", f"nothing at {self.model}")]
        return []

    def build(self, model: str, kind: ModelKind, ctx: BuildContext) -> Engine:
        from openmaas.engines.upstream.openai_http import Timeouts as EngineTimeouts
        from openmaas.engines.vllm import ManagedVllmEngine, VllmConfig

        t = self.timeouts
        return ManagedVllmEngine(
            model,
            VllmConfig(
                model=self.model,
                served_model_name=self.served_model_name,
                tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_len=self.max_model_len,
                tool_call_parser=self.tool_call_parser,
                reasoning_parser=self.reasoning_parser,
                extra_args=tuple(self.extra_args),
                env=dict(self.env),
                startup_timeout_s=self.startup_timeout_s,
                kind=kind,
                slots=self.slots,
                queue=self.queue,
                timeouts=EngineTimeouts(t.connect, t.first_token, t.idle, t.total),
                deployment=self.id,
            ),
        )


DEPLOYMENT_KINDS: tuple[type[DeploymentBase], ...] = (
    OpenAIDeployment,
    LlamaCppDeployment,
    EmbeddedDeployment,
    FakeDeployment,
    VllmDeployment,
)
"""The engine kinds a deployment may name, by their ``engine`` literal: the one registry."""

if TYPE_CHECKING:
    DeploymentSpec = DeploymentBase
else:
    DeploymentSpec = Annotated[Union[tuple(DEPLOYMENT_KINDS)], Field(discriminator="engine")]  # noqa: UP007


def engine_kind_names() -> list[str]:
    """The ``engine`` values a deployment may have, in registry order."""
    return [str(kind.model_fields["engine"].annotation.__args__[0]) for kind in DEPLOYMENT_KINDS]  # type: ignore[union-attr]


class RoutingSpec(_Strict):
    """Per-model routing options (``docs/routing.md``)."""

    affinity: bool = False
    affinity_chars: int = Field(2048, ge=1)
    fallbacks: list[str] = Field(default_factory=list)
    max_attempts: int = Field(3, ge=1)
    failover_budget_s: float = Field(30.0, ge=0)
    first_token_timeout_s: float | None = Field(None, gt=0)
    health_interval_s: float = Field(1.0, gt=0)
    probe_timeout_s: float = Field(5.0, gt=0)


class ModelSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["chat", "embedding"] = "chat"
    aliases: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(default_factory=list)
    context_length: int | None = Field(None, ge=1)
    dimensions: int | None = Field(None, ge=1)  # embedding models
    capabilities: list[Capability] = Field(default_factory=list)
    owned_by: str = "openmaas"
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    deployments: list[DeploymentSpec] = Field(min_length=1)

    @property
    def model_kind(self) -> ModelKind:
        return ModelKind(self.kind)


class CatalogDocument(_Strict):
    version: Literal[1] = 1  # the document format's version
    models: list[ModelSpec] = Field(default_factory=list)
