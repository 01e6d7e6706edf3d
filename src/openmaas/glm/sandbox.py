"""Render a chat template shipped with a model file (a Jinja2 string) in a sandbox.

Model files (GGUF metadata, ``tokenizer_config.json``, ``chat_template.jinja``) carry Jinja
templates written by whoever published the model. OpenMaaS renders them with
``jinja2.sandbox.ImmutableSandboxedEnvironment``: no loader (no ``{% include %}`` /
``{% import %}`` of files), autoescape off, no access to ``__class__``/``__globals__`` or
other private attributes, no mutation of lists and dicts passed in, ranges capped by Jinja.
On top of that a size guard caps the rendered output and a time guard (checked at each
output piece, function call and attribute lookup) caps the wall time.

Which error:

- A template that tries to escape the sandbox, does not compile, fails while rendering, or
  exceeds the guards is a broken or hostile *model file*: :class:`ConfigurationError`
  (an operator problem: the deployment's template is unusable).
- A template that calls ``raise_exception("...")`` is rejecting *the request* (e.g. "roles
  must alternate"): :class:`InvalidRequest` with the template's message.

The helpers HF templates commonly use are provided: ``raise_exception(msg)``,
``strftime_now(fmt)`` (clock injectable), and a ``tojson`` filter taking
``ensure_ascii``/``indent``/``separators``/``sort_keys`` like Python's ``json.dumps``
(Jinja's own ``tojson`` HTML-escapes and has no ``ensure_ascii``). The environment uses
``trim_blocks``, ``lstrip_blocks`` and the ``loopcontrols`` extension, as HF does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateError, Undefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from openmaas.core.errors import ConfigurationError, InvalidRequest

#: Default cap on a rendered prompt, in characters.
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
#: Default cap on rendering time, in seconds.
MAX_RENDER_SECONDS = 2.0
#: Default cap on a template's source size, in characters.
MAX_TEMPLATE_CHARS = 512 * 1024


class TemplateRejectedRequest(Exception):
    """Raised by ``raise_exception`` inside a template; becomes :class:`InvalidRequest`."""


class _GuardExceeded(Exception):
    pass


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRejectedRequest(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    if isinstance(value, Undefined):
        value = None
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus a deadline checked on calls and attribute lookups."""

    def __init__(self, deadline: Callable[[], None]) -> None:
        super().__init__(
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            extensions=["jinja2.ext.loopcontrols"],
        )
        self._deadline = deadline
        self.filters["tojson"] = _tojson

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        """Fail loudly: Jinja's default returns an Undefined that prints as ''."""
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._deadline()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._deadline()
        return super().getitem(obj, argument)


def render_chat_template(
    source: str,
    context: Mapping[str, Any],
    *,
    max_output_chars: int = MAX_OUTPUT_CHARS,
    max_seconds: float = MAX_RENDER_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = datetime.now,
) -> str:
    """Render ``source`` with ``context`` (``messages``, ``tools``, ``add_generation_prompt``,
    ``enable_thinking``, ``bos_token``...) inside the sandbox.

    Raises :class:`ConfigurationError` for a template that is too large, does not compile,
    breaks the sandbox, fails or exceeds the guards; :class:`InvalidRequest` when the
    template itself rejects the request through ``raise_exception``.
    """
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ConfigurationError(
            f"Chat template is {len(source)} characters, over the {MAX_TEMPLATE_CHARS} limit."
        )
    limit = clock() + max_seconds

    def deadline() -> None:
        if clock() > limit:
            raise _GuardExceeded(f"rendering took longer than {max_seconds} s")

    env = _GuardedEnvironment(deadline)
    variables = dict(context)
    variables.setdefault("raise_exception", _raise_exception)
    variables.setdefault("strftime_now", lambda fmt: now().strftime(str(fmt)))
    try:
        template = env.from_string(source)
        pieces: list[str] = []
        size = 0
        for piece in template.generate(**variables):
            size += len(piece)
            if size > max_output_chars:
                raise _GuardExceeded(f"output exceeds {max_output_chars} characters")
            deadline()
            pieces.append(piece)
    except TemplateRejectedRequest as exc:
        raise InvalidRequest(f"The model's chat template rejected the request: {exc}") from exc
    except SecurityError as exc:
        raise ConfigurationError(f"Chat template broke the sandbox: {exc}") from exc
    except _GuardExceeded as exc:
        raise ConfigurationError(f"Chat template rejected: {exc}.") from exc
    except TemplateError as exc:
        raise ConfigurationError(f"Chat template is invalid: {exc}") from exc
    except Exception as exc:  # a third-party template failing in any other way
        raise ConfigurationError(
            f"Chat template failed while rendering: {type(exc).__name__}: {exc}"
        ) from exc
    return "".join(pieces)
