"""What one request may ask of an engine, checked before admission and before any engine
sees it: the gateway calls :meth:`RequestBounds.check_generation` and
:meth:`RequestBounds.check_embedding` first, for every protocol alike.

An engine's work grows with what a request carries besides its tokens: a JSON schema
(``response_format``, Anthropic's ``output_config.format``, each tool's parameters) becomes
a grammar that llama.cpp matches at every sampled token, so an enum of thousands of strings
stalls the engine every organization shares; a ``$ref`` cycle or a schema hundreds of levels
deep makes the grammar converter fail; tens of thousands of messages or embedding inputs
cost seconds of templating and tokenizing before the context window is even checked. Each
bound is a setting (``docs/configuration.md``); a request over one is an ``InvalidRequest``
(400) naming the field, and it costs nothing: no hold, no usage record.

The field is named as OpenAI's Chat Completions API names it (``tools[2].function
.parameters``, ``response_format.json_schema.schema``, ``messages``, ``input``); each
protocol's error table names it in its own words (``protocols/*/errors.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from openmaas.core.errors import InvalidRequest
from openmaas.core.types import EmbeddingRequest, GenerationRequest, ResponseFormatKind

RESPONSE_SCHEMA_PARAM = "response_format.json_schema.schema"


def tool_schema_param(index: int) -> str:
    return f"tools[{index}].function.parameters"


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """The bounds of one request (the defaults are the settings' defaults, ``settings.py``)."""

    max_messages: int = 2048
    max_tools: int = 128
    schema_max_bytes: int = 131_072
    schema_max_depth: int = 64
    schema_max_enum_values: int = 1000
    embedding_max_inputs: int = 2048
    embedding_max_tokens: int = 300_000

    @classmethod
    def from_settings(cls, settings: Any) -> RequestBounds:
        """From ``Settings`` (read by name: serving reads the settings it is given)."""
        return cls(
            max_messages=settings.max_messages,
            max_tools=settings.max_tools,
            schema_max_bytes=settings.schema_max_bytes,
            schema_max_depth=settings.schema_max_depth,
            schema_max_enum_values=settings.schema_max_enum_values,
            embedding_max_inputs=settings.embedding_max_inputs,
            embedding_max_tokens=settings.embedding_max_tokens,
        )

    # -- generation ------------------------------------------------------------------------
    def check_generation(self, request: GenerationRequest) -> None:
        """Raise ``InvalidRequest`` naming the first field over a bound."""
        messages = request.messages or ()
        if len(messages) > self.max_messages:
            raise _over("messages", f"{len(messages)} messages; at most {self.max_messages}")
        if len(request.tools) > self.max_tools:
            raise _over("tools", f"{len(request.tools)} tools; at most {self.max_tools}")
        self.check_schemas(list(_schemas(request)))

    def check_schemas(self, schemas: list[tuple[str, Any]]) -> None:
        """The request's JSON schemas, each as (its field, the schema): each one's nesting
        and references, then all together their size and enum entries."""
        enum_values = 0
        size = 0
        for param, schema in schemas:
            shape = _walk(schema, self.schema_max_depth)
            if shape.depth > self.schema_max_depth:
                raise _over(param, f"nested deeper than {self.schema_max_depth} levels")
            size += len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode())
            if size > self.schema_max_bytes:
                raise _over(
                    param,
                    f"the request's JSON schemas exceed {self.schema_max_bytes} bytes together",
                )
            enum_values += shape.enum_values
            if enum_values > self.schema_max_enum_values:
                raise _over(
                    param,
                    f"the request's JSON schemas have more than "
                    f"{self.schema_max_enum_values} enum values together",
                )
            _check_references(param, schema, shape.refs)

    # -- embeddings ------------------------------------------------------------------------
    def check_embedding(self, request: EmbeddingRequest, context: int | None) -> None:
        """Inputs per request, and their tokens: counted as ``embedding_token_bound`` does
        (at most what any tokenizer makes of them, each input cut at ``context``)."""
        count = len(request.inputs)
        if count > self.embedding_max_inputs:
            raise _over("input", f"{count} inputs; at most {self.embedding_max_inputs}")
        tokens = embedding_token_bound(request, context)
        if tokens > self.embedding_max_tokens:
            raise _over(
                "input",
                f"up to {tokens} tokens (counted as UTF-8 bytes plus 2 per input); "
                f"at most {self.embedding_max_tokens}",
            )


def embedding_token_bound(request: EmbeddingRequest, context: int | None) -> int:
    """At most this many tokens: a WordPiece or byte-level tokenizer makes no more tokens
    than UTF-8 bytes, plus two special tokens, and each input is cut at the context; token
    ids are read as they are."""
    total = 0
    for item in request.inputs:
        tokens = len(item.encode()) + 2 if isinstance(item, str) else len(item)
        total += tokens if context is None else min(tokens, context)
    return total


def _over(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: too large for this server: {what}.", param=param)


def _schemas(request: GenerationRequest) -> Iterator[tuple[str, Any]]:
    fmt = request.response_format
    if fmt.kind is ResponseFormatKind.JSON_SCHEMA and fmt.json_schema is not None:
        yield RESPONSE_SCHEMA_PARAM, fmt.json_schema
    for index, tool in enumerate(request.tools):
        yield tool_schema_param(index), tool.parameters


@dataclass(slots=True)
class _Shape:
    depth: int = 0  # objects and arrays nested in one another (a scalar alone: 0)
    enum_values: int = 0
    refs: list[tuple[tuple[str, ...], str]] | None = None  # (where, "$ref" value)


def _walk(schema: Any, max_depth: int) -> _Shape:
    """Depth, enum entries and ``$ref``s of ``schema``, without recursion (a body may nest
    thousands of levels); the walk stops one level past ``max_depth``."""
    shape = _Shape(refs=[])
    assert shape.refs is not None
    stack: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = ((str(i), v) for i, v in enumerate(node))
        else:
            continue
        depth = len(path) + 1
        shape.depth = max(shape.depth, depth)
        if depth > max_depth:
            return shape
        if isinstance(node, dict):
            enum = node.get("enum")
            if isinstance(enum, list):
                shape.enum_values += len(enum)
            ref = node.get("$ref")
            if isinstance(ref, str):
                shape.refs.append((path, ref))
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append((value, (*path, key)))
    return shape


def _check_references(
    param: str, schema: Any, refs: list[tuple[tuple[str, ...], str]] | None
) -> None:
    """Every ``$ref`` points into the schema itself (``#/...``; llama.cpp's grammar converter
    follows no other) and no chain of them leads back to where it started: a cycle, such as
    ``"$ref": "#"``, is a recursive schema no engine turns into a finite grammar."""
    if not refs:
        return
    targets: list[tuple[str, ...]] = []
    for _where, ref in refs:
        if not ref.startswith("#/"):
            raise InvalidRequest(
                f"{param}: '$ref': {ref!r} is not supported: only references into the schema "
                "itself ('#/...') that do not refer back to themselves.",
                param=param,
            )
        target = tuple(part.replace("~1", "/").replace("~0", "~") for part in ref[2:].split("/"))
        if not _resolves(schema, target):
            raise InvalidRequest(f"{param}: '$ref': {ref!r} points to nothing.", param=param)
        targets.append(target)
    # A reference at ``where`` leads from every target that contains ``where`` to its own
    # target: follow them from each target, looking for one reached again.
    edges: dict[tuple[str, ...], set[tuple[str, ...]]] = {target: set() for target in targets}
    for (where, _ref), dest in zip(refs, targets, strict=True):
        for n in range(len(where) + 1):  # at most the depth bound: each prefix of ``where``
            source = edges.get(where[:n])
            if source is not None:
                source.add(dest)
    done: set[tuple[str, ...]] = set()
    for start in edges:
        if start in done:
            continue
        on_path: set[tuple[str, ...]] = {start}
        stack: list[tuple[tuple[str, ...], Iterator[tuple[str, ...]]]] = [
            (start, iter(edges[start]))
        ]
        while stack:
            node, following = stack[-1]
            nxt = next(following, None)
            if nxt is None:
                stack.pop()
                on_path.discard(node)
                done.add(node)
            elif nxt in on_path:
                ref = "#/" + "/".join(nxt) if nxt else "#"
                raise InvalidRequest(
                    f"{param}: '$ref': {ref!r} refers back to itself (a recursive schema).",
                    param=param,
                )
            elif nxt not in done:
                on_path.add(nxt)
                stack.append((nxt, iter(edges[nxt])))


def _resolves(schema: Any, target: tuple[str, ...]) -> bool:
    node = schema
    for part in target:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True
