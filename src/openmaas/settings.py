"""Every setting, its environment variable (``OPENMAAS_<NAME>``) and its default.

``docs/configuration.md`` lists the same table for users; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LlamaCppModel(BaseModel):
    """A GGUF file served in-process by llama.cpp: the fields an ``engine: llamacpp``
    catalog deployment (``catalog/schema.py``) shares with an ``OPENMAAS_LOCAL_MODELS`` entry.
    Defined here, below the catalog, so that settings import nothing of the feature packages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    # "gguf": the file's own chat template; a GLM family: OpenMaaS renders the prompt and
    # parses the output (glm/), for reasoning and tools.
    chat_format: Literal["gguf", "glm4-9b", "glm45", "glm47"] = "gguf"
    slots: int = Field(2, ge=1)
    context: int = Field(4096, ge=256, description="Context window per slot, in tokens.")
    threads: int | None = Field(None, ge=1, description="Default: OPENMAAS_THREADS.")
    pooling: Literal["mean", "cls", "last"] | None = None


class LocalModel(LlamaCppModel):
    """A GGUF file served in-process by llama.cpp (``OPENMAAS_LOCAL_MODELS``): the fields of
    an ``engine: llamacpp`` deployment, and the model's kind. The settings' models become a
    built-in catalog document (``catalog/builtin.py``)."""

    model_config = ConfigDict(extra="ignore")  # as before: unknown fields are ignored

    kind: Literal["chat", "embedding"] = "chat"


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENMAAS_", extra="ignore")

    home: Path = Field(Path(".openmaas"), description="Data directory (database, keys, caches).")
    host: str = Field("127.0.0.1", description="Address to bind. Loopback unless told otherwise.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL; default: SQLite file in the data directory."
    )
    sqlite_synchronous: str = Field(
        "FULL", description="SQLite PRAGMA synchronous (FULL: usage survives power loss)."
    )
    embedded_models: bool = Field(True, description="Serve the embedded chat and embedding models.")
    chat_slots: int = Field(4, ge=1, description="Parallel llama.cpp slots for the chat model.")
    chat_context: int = Field(2048, ge=256, description="Context window per chat slot, in tokens.")
    embedding_slots: int = Field(2, ge=1, description="Parallel slots for the embedding model.")
    engine_queue: int = Field(
        64, ge=0, description="Requests that may wait beyond the slots before 429."
    )
    engine_queue_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The part of an engine's queue one organization may fill (at least one "
        "request); beyond it that organization's requests get 429 while others are admitted.",
    )
    threads: int = Field(
        # One CPU left for the rest of the machine (docs/configuration.md, OPENMAAS_THREADS).
        default_factory=lambda: max(1, available_cpus() - 1),
        ge=1,
        description="Chat model CPU threads.",
    )
    embedding_threads: int | None = Field(
        None,
        ge=1,
        description="Embedding model CPU threads; default: the CPUs left by the chat model, "
        "at least 1.",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_messages: int = Field(
        2048,
        ge=1,
        description="Most messages (turns) in one chat request; more is a 400 before any "
        "engine sees it.",
    )
    max_tools: int = Field(128, ge=0, description="Most tools in one chat request (400 beyond).")
    schema_max_bytes: int = Field(
        131_072,
        ge=1024,
        description="Most bytes (compact JSON) of one request's JSON schemas together: "
        "response_format / output_config.format and every tool's parameters (400 beyond).",
    )
    schema_max_depth: int = Field(
        64,
        ge=4,
        description="Deepest nesting of objects and arrays in any JSON schema of a request "
        "(400 beyond).",
    )
    schema_max_enum_values: int = Field(
        1000,
        ge=0,
        description="Most enum entries in one request's JSON schemas together: each becomes "
        "an alternative the grammar matches at every token (400 beyond).",
    )
    schema_max_subschemas: int = Field(
        50_000,
        ge=16,
        description="Most subschemas (JSON objects) in one request's JSON schemas together, "
        "each '$ref' counted as the schema it points to: references that fan out stall "
        "grammar building (400 beyond).",
    )
    schema_max_optional_properties: int = Field(
        256,
        ge=1,
        description="Most optional properties (not in 'required') of one object in a JSON "
        "schema: the grammar grows with their square (400 beyond).",
    )
    schema_max_repeat: int = Field(
        1000,
        ge=1,
        description="Largest minLength, minItems, minProperties, minContains or {n} in a "
        "pattern of a JSON schema: the grammar writes out that many copies (400 beyond).",
    )
    schema_max_pattern_length: int = Field(
        1000,
        ge=16,
        description="Longest regular expression (a 'pattern' or a 'patternProperties' key) "
        "in a JSON schema, in characters (400 beyond).",
    )
    embedding_max_inputs: int = Field(
        2048, ge=1, description="Most inputs in one embeddings request (400 beyond)."
    )
    embedding_max_tokens: int = Field(
        300_000,
        ge=1,
        description="Most tokens in one embeddings request, counted as UTF-8 bytes plus 2 per "
        "text input (never fewer than the tokenizer makes), each input cut at the model's "
        "context (400 beyond).",
    )
    memory_trim_seconds: float = Field(
        5.0,
        ge=0,
        description="How often each server process gives memory its allocator freed back to "
        "the system (glibc's malloc_trim; 0: never).",
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    billing_refresh_seconds: float = Field(
        60.0,
        ge=0,
        description="How often prices, tiers and organization terms are re-read in the "
        "background besides on every change the change feed reports (0: before every request).",
    )
    change_poll_seconds: float = Field(
        0.5,
        gt=0,
        description="How often each server process polls the audit log for administrative "
        "changes made by any process (a revoked key is refused within this plus one poll).",
    )
    checkpoint_seconds: float = Field(
        1.0,
        ge=0,
        description="How often a running request's token count is saved for crash recovery "
        "(0: never; a kill -9 then releases its hold unbilled).",
    )
    rollup_seconds: float = Field(
        10.0,
        gt=0,
        description="How often each serving process folds new usage records into the daily "
        "roll-ups that the console's usage page reads (its charts lag by about this much).",
    )
    recovery_seconds: float = Field(
        5.0,
        gt=0,
        description="How often a serving process looks for processes that died with "
        "requests in flight on the same database, and settles those requests.",
    )
    lease_seconds: float = Field(
        2.0,
        ge=0,
        description="Spend horizon of the money each serving process leases from the ledger "
        "per organization, so that priced requests are admitted in memory; an idle lease is "
        "given back after this long (0: a ledger hold per priced request).",
    )
    ledger_settled_window: int = Field(
        100_000,
        ge=1,
        description="Ids of recently settled requests each process keeps in memory to answer a "
        "repeated settlement without the database (~110 bytes each); older repeats are refused "
        "by the ledger's unique key in the database all the same.",
    )
    ledger_snapshot_events: int = Field(
        100_000,
        ge=0,
        description="Events of the ledger's log after which a process writes a snapshot of the "
        "ledger's state, so that a process starting reads the newest snapshot and only the "
        "events after it (0: a snapshot only at a clean shutdown).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0) for rate-limit counters shared by every "
        "gateway process and machine; unset: each process counts alone (in-process limiter).",
    )
    redis_failure_mode: Literal["closed", "open"] = Field(
        "closed",
        description="When Redis is unreachable: closed refuses requests that have limits "
        "(503, retry later), open admits them without counting; /readyz says which.",
    )
    async_jobs_per_org: int = Field(
        16,
        ge=1,
        description="Async jobs (Zhipu /async/chat/completions) one organization may have "
        "queued or running at once, counted in the database across every process; a submit "
        "over it is refused (429).",
    )
    log_level: str = Field("INFO", description="Log level of the JSON logs.")
    secret_key: str | None = Field(
        None,
        description="Master key that API-key secrets are derived from (guard it like a "
        "password); default: the file secret-key in the data directory, created on first use.",
    )
    metrics_token: str | None = Field(
        None,
        description="Bearer token of GET /metrics (Prometheus text format, docs/metrics.md); "
        "unset: /metrics answers 404 and nothing is counted.",
    )
    traces: Literal["off", "otlp", "console"] = Field(
        "off",
        description="OpenTelemetry traces of the API's requests (docs/traces.md; needs the "
        "otel extra): otlp sends them over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT "
        "(default http://localhost:4318), console prints them to stdout; off: nothing of "
        "tracing is loaded or run.",
    )
    jwt_max_lifetime_seconds: float = Field(
        86_400.0,
        gt=0,
        description="How far ahead the exp of a JWT signed with an API key (Zhipu's SDKs) may "
        "lie; a token claiming a later expiry is refused (401).",
    )
    fake_models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Scripted fake engines for tests, as JSON: {name: FakeScript fields}.",
    )
    local_models: dict[str, LocalModel] = Field(
        default_factory=dict,
        description="More GGUF models served in-process, as JSON {name: {path, kind, "
        "chat_format, slots, context, threads, pooling}}.",
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Extra public names for served models, as JSON {alias: model}, e.g. "
        "Claude model names for Claude Code.",
    )
    catalog_file: Path | None = Field(
        None,
        description="A catalog document (YAML, docs/catalog.md) to serve models from, re-read "
        "when it changes; unset: the document stored with `openmaas catalog apply` or the "
        "admin API.",
    )
    catalog_poll_seconds: float = Field(
        2.0, gt=0, description="How often the catalog source (file or database) is checked."
    )
    catalog_drain_seconds: float = Field(
        300.0,
        ge=0,
        description="After a catalog change, how long a removed or replaced model's requests "
        "in flight may take before its engines are stopped.",
    )

    workers: int = Field(
        1,
        ge=1,
        description="Gateway worker processes of `openmaas serve`; more than 1 also starts an "
        "engine host that loads the local models once for all of them (docs/engines.md).",
    )
    engine_socket: Path | None = Field(
        None,
        description="Unix socket of an engine host (`python -m openmaas.enginehost`): when "
        "set, the local models (embedded, OPENMAAS_LOCAL_MODELS and the catalog's llamacpp "
        "and embedded deployments) are served by that host instead of loaded in this "
        "process; `serve --workers N` sets it to engine.sock in the data directory.",
    )

    console_signup: bool = Field(
        False,
        description="Anyone may sign up to the console (an account and an organization of "
        "their own); off: people are created by the CLI or an operator.",
    )
    console_session_hours: float = Field(
        12, gt=0, description="A console session ends after this long without a request."
    )
    console_lockout_failures: int = Field(
        5, ge=1, description="Failed sign-ins to one account before it is locked 15 minutes."
    )
    console_invitation_hours: float = Field(
        72,
        gt=0,
        le=24 * 90,
        description="An invitation to an organization can be accepted for this long.",
    )

    moderation_lists: str = Field(
        "",
        description="Word lists of the built-in content filter, comma-separated, each "
        "`name=path` or a path (named by its file's stem); UTF-8, one word per line, `#` "
        "starts a comment: requests holding a listed word are refused and output reaching "
        "one is cut (docs/moderation.md). Empty: off.",
    )
    moderation_orgs: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The lists of particular organizations, by organization id, as JSON "
        '(`{"org_...": ["political"], "org_...": []}`; an empty list: not moderated); '
        "every other organization gets every list.",
    )
    moderation_plugin: str | None = Field(
        None,
        description="An external moderator, `package.module:factory` (a callable returning a "
        "Moderator, docs/moderation.md); checked besides the word lists.",
    )

    @field_validator("sqlite_synchronous")
    @classmethod
    def _check_synchronous(cls, value: str) -> str:
        value = value.upper()
        if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("must be one of OFF, NORMAL, FULL, EXTRA")
        return value

    @property
    def resolved_embedding_threads(self) -> int:
        """In-process engines share one OpenMP runtime: more threads in all than CPUs makes
        it sleep at every barrier and halves decoding speed (docs/benchmarks.md)."""
        if self.embedding_threads is not None:
            return self.embedding_threads
        return max(1, available_cpus() - self.threads)

    @property
    def moderation_list_paths(self) -> dict[str, Path]:
        """``OPENMAAS_MODERATION_LISTS`` by name: ``name=path``, or a path named by its stem."""
        named: dict[str, Path] = {}
        for entry in filter(None, (part.strip() for part in self.moderation_lists.split(","))):
            name, sep, path = entry.partition("=")
            named[name.strip() if sep else Path(entry).stem] = Path(path.strip() if sep else entry)
        return named

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home.resolve() / 'openmaas.db'}"

    @property
    def admin_key_file(self) -> Path:
        return self.home / "admin-key"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"
