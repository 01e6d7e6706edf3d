"""What one request may ask of an engine, checked before admission and before any engine
sees it: the gateway calls :meth:`RequestBounds.check_generation` and
:meth:`RequestBounds.check_embedding` first, for every protocol alike.

An engine's work grows with what a request carries besides its tokens: a JSON schema
(``response_format``, Anthropic's ``output_config.format``, each tool's parameters) becomes
a grammar that llama.cpp matches at every sampled token, so an enum of thousands of strings
stalls the engine every organization shares; a ``$ref`` cycle or a schema hundreds of levels
deep makes the grammar converter fail; tens of thousands of messages or embedding inputs
cost seconds of templating and tokenizing before the context window is even checked.
Measured against the embedded llama.cpp model (``docs/limits.md``), a schema also costs by
its shape, not only its size: ``$ref``s that fan out (a chain of 14 definitions of 4
alternatives each, under 2 KB) kept llama.cpp building its grammar for minutes; an object
with 1,600 optional properties took 14 s; a ``minLength``, ``minItems`` or ``{n}`` of a
few thousand makes a grammar llama.cpp fails to parse; a ``pattern`` of 5,000
alternatives made every token ten times slower. Each
bound is a setting (``docs/configuration.md``); a request over one is an ``InvalidRequest``
(400) naming the field, and it costs nothing: no hold, no usage record.

The field is named as OpenAI's Chat Completions API names it (``tools[2].function
.parameters``, ``response_format.json_schema.schema``, ``messages``, ``input``); each
protocol's error table names it in its own words (``protocols/*/errors.py``).
"""

from __future__ import annotations

import json
import re
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
    schema_max_subschemas: int = 50_000
    schema_max_optional_properties: int = 256
    schema_max_repeat: int = 1000
    schema_max_pattern_length: int = 1000
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
            schema_max_subschemas=settings.schema_max_subschemas,
            schema_max_optional_properties=settings.schema_max_optional_properties,
            schema_max_repeat=settings.schema_max_repeat,
            schema_max_pattern_length=settings.schema_max_pattern_length,
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
        """The request's JSON schemas, each as (its field, the schema): each one's nesting,
        keywords and references, then all together their size, enum entries and
        subschemas (every ``$ref`` counted as what it points to)."""
        enum_values = 0
        size = 0
        subschemas = 0
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
            self._check_keywords(param, shape)
            _check_references(param, schema, shape.refs)
            subschemas += _expanded_objects(schema, self.schema_max_subschemas - subschemas)
            if subschemas > self.schema_max_subschemas:
                raise _over(
                    param,
                    f"the request's JSON schemas have more than {self.schema_max_subschemas} "
                    "subschemas together, each '$ref' counted as the schema it points to",
                )

    def _check_keywords(self, param: str, shape: _Shape) -> None:
        """The keywords whose value, not size, makes a grammar expensive: optional
        properties of one object, repetition counts, regular expressions."""
        if shape.optional_properties > self.schema_max_optional_properties:
            raise _over(
                param,
                f"an object has {shape.optional_properties} optional properties "
                f"(not in 'required'); at most {self.schema_max_optional_properties}",
            )
        keyword, count = shape.repeat
        if count > self.schema_max_repeat:
            raise _over(param, f"{keyword} of {count}; at most {self.schema_max_repeat}")
        if shape.pattern_length > self.schema_max_pattern_length:
            raise _over(
                param,
                f"a pattern of {shape.pattern_length} characters; "
                f"at most {self.schema_max_pattern_length}",
            )

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


# The keywords that make a grammar repeat something at least n times: llama.cpp writes the
# n copies out, and fails to parse the grammar beyond a few thousand (docs/limits.md).
_LOWER_COUNTS = ("minLength", "minItems", "minProperties", "minContains")
# ``{n}``, ``{n,}``, ``{n,m}`` in a regular expression, not after a backslash.
_REGEX_COUNT = re.compile(r"(?<!\\)\{(\d+)(?:,\d*)?\}")


@dataclass(slots=True)
class _Shape:
    depth: int = 0  # objects and arrays nested in one another (a scalar alone: 0)
    enum_values: int = 0
    refs: list[tuple[tuple[str, ...], str]] | None = None  # (where, "$ref" value)
    optional_properties: int = 0  # the most of one object (properties not required)
    repeat: tuple[str, int] = ("", 0)  # the largest lower repetition count, and its keyword
    pattern_length: int = 0  # the longest regular expression, in characters


def _walk(schema: Any, max_depth: int) -> _Shape:
    """Depth, enum entries, ``$ref``s and the costly keywords of ``schema``, without
    recursion (a body may nest thousands of levels); the walk stops one level past
    ``max_depth``. A keyword counts where its value has the keyword's type (a property
    named ``pattern`` is an object, not a regular expression)."""
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
            _keywords(node, shape)
            ref = node.get("$ref")
            if isinstance(ref, str):
                shape.refs.append((path, ref))
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append((value, (*path, key)))
    return shape


def _keywords(node: dict[str, Any], shape: _Shape) -> None:
    enum = node.get("enum")
    if isinstance(enum, list):
        shape.enum_values += len(enum)
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = node.get("required")
        listed = required if isinstance(required, list) else []
        needed = {name for name in listed if isinstance(name, str)}
        optional = sum(1 for name in properties if name not in needed)
        shape.optional_properties = max(shape.optional_properties, optional)
    for keyword in _LOWER_COUNTS:
        count = node.get(keyword)
        if isinstance(count, int) and count > shape.repeat[1]:
            shape.repeat = (f"'{keyword}'", count)
    regexes: list[str] = []
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        regexes.append(pattern)
    pattern_properties = node.get("patternProperties")
    if isinstance(pattern_properties, dict):
        regexes.extend(pattern_properties)
    for regex in regexes:
        shape.pattern_length = max(shape.pattern_length, len(regex))
        for match in _REGEX_COUNT.finditer(regex):
            digits = match.group(1)  # int() of thousands of digits would raise
            count = int(digits) if len(digits) <= 18 else 10**18
            if count > shape.repeat[1]:
                shape.repeat = (f"a pattern's {{{count}}}", count)


def _expanded_objects(schema: Any, limit: int) -> int:
    """The JSON objects of ``schema``, each ``$ref`` counted as the object it points to with
    all it contains: the size of the grammar an engine that inlines references builds.
    References fan out (a chain of definitions of four alternatives each counts 4^n), so
    each node's count is kept once, counting stops past ``limit``, and nothing recurses.
    Run after ``_check_references``: a reference that leads back is counted as nothing."""
    cap = max(limit, 0) + 1
    counts: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(schema, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            own = 1 if isinstance(node, dict) else 0
            total = own + sum(counts.get(id(child), 0) for child in _children(node, schema))
            counts[key] = min(total, cap)
            open_.discard(key)
        elif key not in counts and key not in open_:
            open_.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node, schema))
    return counts[id(schema)] if isinstance(schema, dict | list) else 0


def _children(node: Any, root: Any) -> list[Any]:
    if isinstance(node, list):
        return [v for v in node if isinstance(v, dict | list)]
    if not isinstance(node, dict):
        return []
    children = [v for v in node.values() if isinstance(v, dict | list)]
    ref = node.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        target = _target(root, ref)
        if isinstance(target, dict | list):
            children.append(target)
    return children


def _target(root: Any, ref: str) -> Any:
    node = root
    for part in ref[2:].split("/") if ref != "#" else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


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
