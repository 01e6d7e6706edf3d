"""engines/prompt_bound.py: a prompt of more bytes than the context could hold at the
longest token of the vocabulary is refused before any tokenizing (issue 12)."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from openmaas.core.errors import PromptTooLong
from openmaas.engines.prompt_bound import FALLBACK_TOKEN_BYTES, PromptBound, longest_token_bytes


def test_a_prompt_up_to_the_bound_passes_and_one_byte_more_is_too_long() -> None:
    bound = PromptBound(context=10, token_bytes=4)  # at most 40 bytes
    bound.check(["a" * 20, "b" * 20], param="messages")
    with pytest.raises(PromptTooLong) as refused:
        bound.check(["a" * 20, "b" * 21], param="messages")
    error = refused.value
    assert error.param == "messages" and error.context_length == 10
    assert error.prompt_tokens is None  # llama.cpp did not count it
    assert "41 bytes" in error.message and "40 bytes" in error.message
    assert "context size" in error.message and "4 bytes a token" in error.message


def test_bytes_are_counted_not_characters() -> None:
    bound = PromptBound(context=10, token_bytes=4)
    bound.check(["a" * 40], param="prompt")
    with pytest.raises(PromptTooLong, match="42 bytes"):
        bound.check(["é" * 21], param="prompt")  # 21 characters, 42 bytes


def _gguf(path: Path, model: str, tokens: list[str], types: list[int]) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_uint32("llama.context_length", 2048)  # other keys are stepped over
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


NORMAL, CONTROL = 1, 3


def test_byte_level_bpe_tokens_stand_for_one_byte_a_character(tmp_path: Path) -> None:
    # GPT-2's scheme writes the byte 0x20 as "Ġ" (2 bytes of UTF-8): 6 characters, 6 bytes.
    # A control token is matched as its text: its UTF-8.
    tokens = ["a", "ĠĠĠĠĠĠ", "<|im_start|>", "<｜end｜>"]
    path = _gguf(tmp_path / "bpe.gguf", "gpt2", tokens, [NORMAL, NORMAL, CONTROL, CONTROL])
    assert longest_token_bytes(path) == len("<|im_start|>")
    path = _gguf(tmp_path / "bpe2.gguf", "gpt2", tokens[:2], [NORMAL, NORMAL])
    assert longest_token_bytes(path) == 6


def test_other_vocabularies_count_a_pieces_utf8(tmp_path: Path) -> None:
    # SentencePiece's "▁" is one space, written in 3 bytes: its UTF-8 is more, never less.
    path = _gguf(tmp_path / "spm.gguf", "llama", ["<0x0A>", "▁the", "▁▁▁▁"], [6, 1, 1])
    assert longest_token_bytes(path) == 12


def test_a_file_without_a_readable_vocabulary_says_nothing(tmp_path: Path) -> None:
    other = tmp_path / "weights.bin"
    other.write_bytes(b"not a gguf file at all")
    assert longest_token_bytes(other) is None
    assert longest_token_bytes(tmp_path / "missing.gguf") is None
    whole = _gguf(tmp_path / "cut.gguf", "gpt2", ["a" * 50, "b"], [NORMAL, NORMAL])
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(whole.read_bytes()[:80])
    assert longest_token_bytes(cut) is None
    assert PromptBound(context=2048).max_bytes == 2048 * FALLBACK_TOKEN_BYTES
