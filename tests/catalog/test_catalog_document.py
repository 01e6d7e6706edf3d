"""The catalog document: what parses, and every kind of refusal with its exact line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaas.catalog.document import (
    CatalogRejected,
    build_router,
    document_version,
    engine_fingerprint,
    parse_catalog,
)
from openmaas.catalog.schema import BuildContext, OpenAIDeployment
from openmaas.engines.base import ModelKind
from openmaas.routing.router import DataClass

FULL = """\
models:
  - name: glm-4.7
    aliases: [glm-latest]
    context_length: 131072
    capabilities: [tools, reasoning]
    owned_by: zhipu
    routing:
      affinity: true
      fallbacks: [glm-cloud]
      max_attempts: 2
      first_token_timeout_s: 20
    deployments:
      - id: gpu-1
        engine: openai
        base_url: http://10.0.0.5:8000/v1
        upstream_model: zai-org/GLM-4.7
        data_class: local
        weight: 2
        max_concurrency: 32
        timeouts: {connect: 5, first_token: 60, idle: 30, total: 600}
  - name: glm-cloud
    deployments:
      - id: zhipu
        engine: openai
        base_url: https://open.bigmodel.cn/api/paas/v4
        upstream_model: glm-4.7
        credential: zhipu-key
        priority: 1
        price: {input: "2", cached_input: "0.5", output: "8", currency: CNY}
  - name: demo
    deployments:
      - {id: demo-1, engine: fake, script: {text: hello}}
"""


def rejected(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(CatalogRejected) as caught:
        parse_catalog(text, "catalog.yaml", **kwargs)  # type: ignore[arg-type]
    return [issue.render("catalog.yaml") for issue in caught.value.issues]


def test_a_full_document_parses_with_its_defaults() -> None:
    document = parse_catalog(FULL)
    glm, cloud, demo = document.models
    assert (glm.name, glm.kind, glm.aliases, glm.capabilities) == (
        "glm-4.7",
        "chat",
        ["glm-latest"],
        ["tools", "reasoning"],
    )
    assert glm.routing.affinity and glm.routing.fallbacks == ["glm-cloud"]
    gpu = glm.deployments[0]
    assert isinstance(gpu, OpenAIDeployment)
    assert (gpu.weight, gpu.max_concurrency, gpu.data_class, gpu.timeouts.first_token) == (
        2,
        32,
        "local",
        60,
    )
    # An upstream is external unless the document says otherwise: the data leaves.
    assert cloud.deployments[0].data_class == "external"
    assert demo.deployments[0].data_class == "local"


def test_an_empty_document_has_no_models() -> None:
    assert parse_catalog("").models == []
    assert parse_catalog("models: []\n").models == []


def test_a_built_router_carries_the_document_options() -> None:
    document = parse_catalog(FULL)
    ctx = BuildContext(
        credential_names=frozenset({"zhipu-key"}), credentials={"zhipu-key": "sk-SECRET-1"}
    )
    router = build_router(document.models[1], ctx)
    [member] = router.members
    assert member.deployment.data_class is DataClass.EXTERNAL
    assert member.deployment.priority == 1
    engine = member.engine
    assert engine.config.api_key == "sk-SECRET-1"  # type: ignore[attr-defined]
    assert engine.config.price.input_per_million == 2_000_000  # type: ignore[attr-defined]
    assert "sk-SECRET-1" not in repr(engine.config) + repr(engine)  # type: ignore[attr-defined]
    assert router.kind is ModelKind.CHAT
    glm = build_router(document.models[0], ctx)
    assert glm.config.affinity and glm.config.max_attempts == 2


def test_fingerprints_change_with_deployments_and_credentials_not_with_names() -> None:
    ctx = BuildContext(credential_stamps={"zhipu-key": 1})
    base = parse_catalog(FULL).models[1]
    renamed = parse_catalog(FULL.replace("owned_by: zhipu", "owned_by: other")).models[1]
    assert engine_fingerprint(base, ctx) == engine_fingerprint(renamed, ctx)
    heavier = parse_catalog(FULL.replace("priority: 1", "priority: 2")).models[1]
    assert engine_fingerprint(base, ctx) != engine_fingerprint(heavier, ctx)
    rotated = BuildContext(credential_stamps={"zhipu-key": 2})
    assert engine_fingerprint(base, ctx) != engine_fingerprint(base, rotated)
    assert document_version(FULL) != document_version(FULL + "\n")


# -- refusals, each with its line and field ----------------------------------------------


def test_a_bound_names_the_line_and_field() -> None:
    text = """\
models:
  - name: a
    deployments:
      - id: one
        engine: fake
      - id: two
        engine: fake
        weight: 0
"""
    assert rejected(text) == ["catalog.yaml:8: models[0].deployments[1].weight: must be ≥ 1"]


def test_unknown_fields_kinds_and_missing_fields() -> None:
    text = """\
models:
  - name: a
    colour: blue
    kind: picture
    deployments:
      - id: one
        engine: gguf
      - engine: openai
        id: up
"""
    assert rejected(text) == [
        "catalog.yaml:3: models[0].colour: unknown field",
        "catalog.yaml:4: models[0].kind: must be 'chat' or 'embedding'",
        "catalog.yaml:7: models[0].deployments[0].engine: unknown engine kind 'gguf'; "
        "one of openai, llamacpp, embedded, fake, vllm",
        # a missing field: the line of the mapping that lacks it
        "catalog.yaml:8: models[0].deployments[1].base_url: is required",
        "catalog.yaml:8: models[0].deployments[1].upstream_model: is required",
    ]


def test_values_of_the_wrong_shape() -> None:
    text = """\
models:
  - name: a
    deployments:
      - id: up
        engine: openai
        base_url: ftp://host/v1
        upstream_model: m
        headers: {Authorization: Bearer x}
        price: {input: 0.5, output: "one"}
        data_class: cloud
"""
    assert rejected(text) == [
        "catalog.yaml:6: models[0].deployments[0].base_url: must be an http(s) URL such as "
        "http://gpu-1:8000/v1",
        "catalog.yaml:8: models[0].deployments[0].headers: must not set Authorization "
        "(use 'credential')",
        "catalog.yaml:9: models[0].deployments[0].price.input: must be a string (in quotes)",
        "catalog.yaml:9: models[0].deployments[0].price.output: must be a decimal string "
        "such as \"0.60\" (not a decimal amount: 'one')",
        "catalog.yaml:10: models[0].deployments[0].data_class: must be 'local' or 'external'",
    ]


def test_yaml_syntax_errors_name_their_line() -> None:
    text = "models:\n  - name: a\n    deployments: [\n      {id: x, engine: fake\n"
    [message] = rejected(text)
    assert message.startswith("catalog.yaml:5: YAML: ")
    [message] = rejected("models:\n  - name: a\n\tdeployments: []\n")
    assert message.startswith("catalog.yaml:3: YAML: ")


def test_a_document_that_is_not_a_mapping_and_duplicate_keys() -> None:
    assert rejected("- a\n- b\n") == ["catalog.yaml:1: the document must be a mapping"]
    text = "models:\n  - name: a\n    name: b\n    deployments: [{id: x, engine: fake}]\n"
    assert rejected(text) == ["catalog.yaml:3: models[0].name: duplicate key"]


def test_names_aliases_and_deployment_ids_are_unique() -> None:
    text = """\
models:
  - name: a
    aliases: [b]
    deployments: [{id: x, engine: fake}]
  - name: b
    aliases: [smollm2-135m-instruct]
    deployments: [{id: x, engine: fake}]
  - name: a
    deployments: [{id: y, engine: fake}]
"""
    assert rejected(text, reserved={"smollm2-135m-instruct"}) == [
        "catalog.yaml:5: models[1].name: 'b' is already taken",
        "catalog.yaml:6: models[1].aliases[0]: 'smollm2-135m-instruct' is already a model "
        "name or alias",
        "catalog.yaml:7: models[1].deployments[0].id: deployment id 'x' is used twice",
        "catalog.yaml:8: models[2].name: 'a' is already taken",
    ]


def test_a_name_the_settings_serve_is_refused() -> None:
    text = "models:\n  - name: fake-echo\n    deployments: [{id: x, engine: fake}]\n"
    assert rejected(text, reserved={"fake-echo"}) == [
        "catalog.yaml:2: models[0].name: 'fake-echo' is already a model the settings serve"
    ]


def test_fallbacks_must_exist_be_of_the_same_kind_and_not_the_model() -> None:
    text = """\
models:
  - name: chat
    routing:
      fallbacks: [chat, nowhere, vectors]
    deployments: [{id: x, engine: fake}]
  - name: vectors
    kind: embedding
    deployments:
      - {id: e, engine: openai, base_url: "http://127.0.0.1:9/v1", upstream_model: m}
"""
    assert rejected(text) == [
        "catalog.yaml:4: models[0].routing.fallbacks[0]: a model cannot fall back to itself",
        "catalog.yaml:4: models[0].routing.fallbacks[1]: no model 'nowhere' in this catalog",
        "catalog.yaml:4: models[0].routing.fallbacks[2]: 'vectors' is a embedding model, not chat",
    ]


def test_an_engine_kind_that_cannot_serve_the_model_kind() -> None:
    text = """\
models:
  - name: vectors
    kind: embedding
    dimensions: 384
    deployments:
      - {id: x, engine: fake}
  - name: chat
    dimensions: 8
    deployments: [{id: y, engine: fake}]
"""
    assert rejected(text) == [
        "catalog.yaml:6: models[0].deployments[0].engine: a 'fake' deployment cannot serve "
        "a embedding model",
        "catalog.yaml:8: models[1].dimensions: only an embedding model has dimensions",
    ]


def test_credentials_and_files_are_checked_against_the_running_system(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    text = f"""\
models:
  - name: local
    deployments:
      - id: l
        engine: llamacpp
        path: {gguf}
        chat_format: glm47
  - name: cloud
    deployments:
      - id: c
        engine: openai
        base_url: https://api.example.com/v1
        upstream_model: m
        credential: cloud-key
"""
    ctx = BuildContext(credential_names=frozenset())
    assert rejected(text, ctx=ctx) == [
        f"catalog.yaml:6: models[0].deployments[0].path: no file at {gguf}",
        "catalog.yaml:14: models[1].deployments[0].credential: no credential named "
        "'cloud-key' (openmaas credentials set cloud-key)",
    ]
    gguf.write_bytes(b"GGUF")
    ctx = BuildContext(
        credential_names=frozenset({"cloud-key"}), unreadable=frozenset({"cloud-key"})
    )
    assert rejected(text, ctx=ctx) == [
        "catalog.yaml:14: models[1].deployments[0].credential: the credential 'cloud-key' "
        "cannot be decrypted with this master key (set it again)",
    ]
    ctx = BuildContext(credential_names=frozenset({"cloud-key"}))
    assert len(parse_catalog(text, ctx=ctx).models) == 2
    assert parse_catalog(text).models  # without a context nothing of the system is checked


def test_a_managed_vllm_deployment_builds_without_vllm_installed(tmp_path: Path) -> None:
    text = f"""\
models:
  - name: glm-4.5-air
    capabilities: [tools, reasoning]
    deployments:
      - id: gpu-0
        engine: vllm
        model: {tmp_path}
        tensor_parallel_size: 2
        tool_call_parser: glm45
        reasoning_parser: glm45
        env: {{CUDA_VISIBLE_DEVICES: "0,1"}}
        extra_args: [--enable-prefix-caching]
"""
    document = parse_catalog(text, ctx=BuildContext(credential_names=frozenset()))
    deployment = document.models[0].deployments[0]
    assert deployment.data_class == "local"
    router = build_router(document.models[0], BuildContext())
    engine = router.members[0].engine
    assert type(engine).__name__ == "ManagedVllmEngine"
    config = engine.config  # type: ignore[attr-defined]
    assert (config.model, config.tensor_parallel_size, config.deployment) == (
        str(tmp_path),
        2,
        "gpu-0",
    )
    assert config.extra_args == ("--enable-prefix-caching",)
    missing = text.replace(str(tmp_path), str(tmp_path / "nowhere"))
    assert rejected(missing, ctx=BuildContext()) == [
        f"catalog.yaml:7: models[0].deployments[0].model: nothing at {tmp_path / 'nowhere'}"
    ]


def test_a_packaged_model_is_an_embedded_deployment(tmp_path: Path) -> None:
    text = """\
models:
  - name: tiny-chat
    deployments:
      - {id: tiny, engine: embedded, model: smollm2-135m-instruct, slots: 3, context: 1024}
"""
    document = parse_catalog(text, ctx=BuildContext(credential_names=frozenset()))
    router = build_router(document.models[0], BuildContext(threads=2, cache_dir=tmp_path))
    engine = router.members[0].engine
    assert type(engine).__name__ == "LlamaCppEngine"
    assert engine.capacity().slots == 3 and engine.kind is ModelKind.CHAT
    assert rejected(text.replace("smollm2-135m-instruct", "gpt-5")) == [
        "catalog.yaml:4: models[0].deployments[0].model: must name a packaged model: "
        "smollm2-135m-instruct or all-minilm-l6-v2"
    ]
    embedding = text.replace("smollm2-135m-instruct", "all-minilm-l6-v2")
    assert rejected(embedding) == [
        "catalog.yaml:4: models[0].deployments[0]: the context of all-minilm-l6-v2 is fixed; "
        "leave 'context' out",
    ]
    assert rejected(embedding.replace(", context: 1024", "")) == [
        "catalog.yaml:4: models[0].deployments[0].engine: a 'embedded' deployment cannot "
        "serve a chat model",
    ]
