"""The GLM prompt families OpenMaaS renders natively, and their stop strings."""

from __future__ import annotations

from enum import StrEnum


class GlmFamily(StrEnum):
    """Which chat format a GLM model speaks.

    - ``GLM4_9B``: GLM-4-9B-chat / GLM-4-0414 (``<|role|>metadata\\ncontent``, JSON tool calls).
    - ``GLM45``: GLM-4.5 and GLM-4.6 (newline-separated turns, ``<think></think>``
      placeholders, ``/nothink`` when thinking is disabled, XML tool calls).
    - ``GLM47``: GLM-4.7 (no newlines between parts, ``</think>`` placeholder, the generation
      prompt opens ``<think>`` or closes it with ``</think>``, preserved thinking).
    """

    GLM4_9B = "glm4-9b"
    GLM45 = "glm45"
    GLM47 = "glm47"


#: Prompt prefix of every GLM-4 family prompt; the tokenizer must not add a BOS again.
PROMPT_PREFIX = "[gMASK]<sop>"

#: Strings at which generation ends (the eos ids 151329/151336/151338).
_STOPS: tuple[str, ...] = ("<|user|>", "<|observation|>", "<|endoftext|>")


def stop_strings(family: GlmFamily) -> tuple[str, ...]:
    """The stop strings an engine should pass for ``family``.

    All three families end a turn at ``<|user|>``, ``<|observation|>`` (a tool call was made)
    or ``<|endoftext|>``. ``<|assistant|>`` (also recommended by zai-org's tool guide) is not
    included here; engines may add it.
    """
    GlmFamily(family)  # validates
    return _STOPS
