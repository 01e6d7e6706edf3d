"""What every protocol checks of an embeddings request before an engine sees it."""

from __future__ import annotations

from collections.abc import Sequence

from openmaas.core.errors import InvalidRequest


def checked_inputs(
    raw: str | Sequence[object], model: str, dimensions: int | None, native: int | None
) -> tuple[str, ...]:
    """The texts to embed. Token arrays, empty inputs and a ``dimensions`` the model cannot
    give are refused by name."""
    inputs = [raw] if isinstance(raw, str) else list(raw)
    if not inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if not all(isinstance(item, str) for item in inputs):
        raise InvalidRequest("Token-array inputs are not supported; send text.", param="input")
    if any(not item for item in inputs):
        raise InvalidRequest("'input' must not contain empty strings.", param="input")
    if dimensions is not None and dimensions != native:
        raise InvalidRequest(
            f"The model '{model}' does not support choosing 'dimensions'; "
            f"it always returns {native}.",
            param="dimensions",
        )
    return tuple(str(item) for item in inputs)
