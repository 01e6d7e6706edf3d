"""What every protocol checks of an embeddings request before an engine sees it."""

from __future__ import annotations

from collections.abc import Sequence

from openmaas.core.errors import InvalidRequest, PromptTooLong
from openmaas.core.types import EmbeddingInput


def checked_inputs(
    raw: str | Sequence[object],
    model: str,
    dimensions: int | None,
    native: int | None,
    *,
    token_ids: bool = False,
) -> tuple[EmbeddingInput, ...]:
    """The inputs to embed: texts, or (where the protocol takes them, ``token_ids``) arrays
    of token ids (one array: a list of ints; several: a list of lists), which are the
    model's own ids (``docs/api.md``). Empty inputs, a mix of texts and arrays, negative ids
    and a ``dimensions`` the model cannot give are refused by name."""
    if isinstance(raw, str):
        inputs: list[object] = [raw]
    elif raw and all(isinstance(item, int) for item in raw):
        inputs = [list(raw)]  # one array of token ids
    else:
        inputs = list(raw)
    if not inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    result: tuple[EmbeddingInput, ...]
    if all(isinstance(item, str) for item in inputs):
        if any(not item for item in inputs):
            raise InvalidRequest("'input' must not contain empty strings.", param="input")
        result = tuple(str(item) for item in inputs)
    elif not token_ids:
        raise InvalidRequest("Token-array inputs are not supported; send text.", param="input")
    elif all(isinstance(item, list) for item in inputs):
        result = tuple(_token_ids(item, index) for index, item in enumerate(inputs))
    else:
        raise InvalidRequest(
            "'input' must be a string, a list of strings, a list of token ids or a list of "
            "lists of token ids, not a mix.",
            param="input",
        )
    if dimensions is not None and dimensions != native:
        raise InvalidRequest(
            f"The model '{model}' does not support choosing 'dimensions'; "
            f"it always returns {native}.",
            param="dimensions",
        )
    return result


def _token_ids(item: object, index: int) -> tuple[int, ...]:
    assert isinstance(item, list)
    if not item:
        raise InvalidRequest(f"'input[{index}]' must not be an empty token array.", param="input")
    ids = tuple(token for token in item if isinstance(token, int) and not isinstance(token, bool))
    if len(ids) != len(item):
        raise InvalidRequest(f"'input[{index}]' must hold token ids (integers).", param="input")
    if min(ids) < 0:
        raise InvalidRequest(f"'input[{index}]' holds a negative token id.", param="input")
    return ids


def check_token_ids(
    inputs: Sequence[EmbeddingInput], model: str, vocabulary: int | None, context: int | None
) -> None:
    """Refuse token arrays that ``model`` cannot read: an id outside its vocabulary of
    ``vocabulary`` tokens (400, naming the input and the id), or more tokens than its
    ``context`` (400 ``context_length_exceeded``). ``None``: not known, not checked."""
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            continue
        if vocabulary is not None:
            outside = next((token for token in item if token >= vocabulary), None)
            if outside is not None:
                raise InvalidRequest(
                    f"'input[{index}]' holds the token id {outside}, outside the vocabulary of "
                    f"'{model}' (ids 0 to {vocabulary - 1}). Token ids are the model's own; "
                    "send text to have it tokenized here (LangChain's OpenAIEmbeddings: "
                    "check_embedding_ctx_length=False).",
                    param="input",
                )
        if context is not None and len(item) > context:
            raise PromptTooLong(
                f"'input[{index}]' has {len(item)} tokens; '{model}' reads at most {context}.",
                param="input",
                prompt_tokens=len(item),
                context_length=context,
            )
