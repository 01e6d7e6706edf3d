"""The most bytes a prompt can have and still fit a llama.cpp context, known before any
tokenizing.

llama.cpp tokenizes a prompt whole before it checks it against the context window: a
prompt of 3.8 MB cost about 3.5 s of engine time (and as much again to count it for
admission) before the "context size" 400 came. But one token stands for at most a few
bytes of text, the longest piece of the model's vocabulary, so a prompt of more than
``context × longest piece`` bytes needs more tokens than the context holds, whatever the
tokenizer makes of it. :class:`PromptBound` refuses such a prompt at once.

The longest piece is read at load from the GGUF's metadata (``tokenizer.ggml.tokens``,
without the tensors: :func:`longest_token_bytes`); a file that does not say (another
format, a newer GGUF version) falls back to :data:`FALLBACK_TOKEN_BYTES`, more than the
longest token of the common vocabularies (GPT-2/Llama 3/Qwen byte-level BPE,
SentencePiece). Counted are the bytes of what is sent to llama.cpp, the messages'
contents (the tool instructions and schemas included) or a completion's prompt, not the
chat template's rendering: the template only adds tokens.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openmaas.core.errors import PromptTooLong

FALLBACK_TOKEN_BYTES = 256
"""Bytes one token is taken to stand for at most when the vocabulary cannot be read."""

_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
# The size in bytes of a value of each GGUF type (by its number); 0: a string or an array.
_SIZES = (1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8)
_INT32 = 5
_NORMAL = 1  # tokenizer.ggml.token_type of a plain vocabulary entry
_WANTED = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type")


@dataclass(frozen=True, slots=True)
class PromptBound:
    """A prompt of more than ``context × token_bytes`` bytes cannot fit ``context`` tokens."""

    context: int
    token_bytes: int = FALLBACK_TOKEN_BYTES

    @property
    def max_bytes(self) -> int:
        return self.context * self.token_bytes

    def check(self, texts: Sequence[str], param: str) -> None:
        """Refuse (``PromptTooLong``, as llama.cpp's own context error) texts of more bytes
        in all than the context can hold."""
        # Encoding costs milliseconds for the most a request body may carry (4 MiB).
        size = sum(len(text.encode()) for text in texts)
        if size <= self.max_bytes:
            return
        raise PromptTooLong(
            f"prompt is too long: the request exceeds the available context size: its "
            f"prompt is {size} bytes, more than the {self.context} tokens of this model's "
            f"context can hold ({self.max_bytes} bytes, at most {self.token_bytes} bytes a "
            "token); it was refused before tokenizing. Reduce the length of the messages.",
            param=param,
            context_length=self.context,
        )


def longest_token_bytes(path: Path) -> int | None:
    """The most bytes of text one token of the GGUF file's vocabulary stands for, read
    from its metadata alone; None when the file does not say (not a GGUF v2/v3, no
    vocabulary, damaged)."""
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found = _vocabulary(m)
    except (OSError, ValueError, struct.error, IndexError, UnicodeDecodeError):
        return None
    tokens = found.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        return None
    types = found.get("tokenizer.ggml.token_type")
    byte_level = found.get("tokenizer.ggml.model") == "gpt2"
    if not isinstance(types, list) or len(types) != len(tokens):
        types = [0] * len(tokens)
    return max(_piece_bytes(t, kind, byte_level) for t, kind in zip(tokens, types, strict=True))


def _piece_bytes(token: bytes, kind: int, byte_level: bool) -> int:
    """The bytes of text ``token`` stands for, or more. A byte-level BPE vocabulary (GPT-2's
    scheme) writes each byte of a normal token as one character; any other entry is at
    most its own UTF-8 (SentencePiece's ``▁`` is one space, ``<0x0A>`` one byte)."""
    if byte_level and kind == _NORMAL:
        try:
            return len(token.decode())
        except UnicodeDecodeError:
            return len(token)
    return len(token)


class _Reader:
    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def string(self) -> bytes:
        size = self.take("<Q")
        if self.at + size > len(self.data):
            raise ValueError("a string runs past the end of the file")
        value = bytes(self.data[self.at : self.at + size])
        self.at += size
        return value

    def value(self, kind: int, keep: bool) -> object:
        """Read (or, when not ``keep``, step over) one value of GGUF type ``kind``."""
        size = _size(kind)
        if size:
            self.at += size
            return None
        if kind == _STRING:
            value = self.string()
            return value if keep else None
        inner, count = self.take("<I"), self.take("<Q")
        if count > len(self.data):
            raise ValueError("an array longer than the file")
        size = _size(inner)
        if size:
            start, self.at = self.at, self.at + size * count
            if keep and inner == _INT32:  # the token types
                return list(struct.unpack_from(f"<{count}i", self.data, start))
            return None
        items = [self.value(inner, keep) for _ in range(count)]
        return items if keep else None


def _size(kind: int) -> int:
    if not 0 <= kind < len(_SIZES):
        raise ValueError(f"unknown GGUF value type {kind}")
    return _SIZES[kind]


def _vocabulary(data: mmap.mmap) -> dict[str, object]:
    """The wanted keys of a GGUF's metadata (tokens as bytes), stopping once all are read."""
    reader = _Reader(data)
    if bytes(data[:4]) != _MAGIC:
        raise ValueError("not a GGUF file")
    reader.at = 4
    if reader.take("<I") not in (2, 3):
        raise ValueError("a GGUF version this reader does not know")
    reader.take("<Q")  # tensors
    found: dict[str, object] = {}
    for _ in range(reader.take("<Q")):
        key = reader.string().decode()
        kind = reader.take("<I")
        value = reader.value(kind, keep=key in _WANTED)
        if key in _WANTED:
            found[key] = value.decode() if isinstance(value, bytes) else value
            if len(found) == len(_WANTED):
                break
    return found
