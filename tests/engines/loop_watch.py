"""Whether requests keep being answered while an engine does heavy work, for tests.

A test keeps asking a cheap model on the event loop (``keep_asking``) and reports each
answer to an ``Answers``; hooks placed inside the heavy steps (building llama.cpp's server,
freeing it, loading a tokenizer, encoding a batch, converting weights) call
``answers.during(step)``, which waits until a few more requests have been answered and
records how many were. Were the step on the event loop's own thread, none could be answered
meanwhile: ``during`` then records 0 without waiting, and the test's assertion fails. The
facts asserted are orderings (answers seen inside a step), never durations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from openmaas.core.ids import new_request_id
from openmaas.core.types import GenerationRequest, Message, Role, TextDelta
from openmaas.engines.base import Engine

ANSWERS_DURING = 3  # requests each watched step waits to see answered before it ends
GUARD_SECONDS = 60.0  # only reached when requests stop being answered: the test then fails


class Answers:
    """Requests answered on the event loop, and how many were answered during each step."""

    def __init__(self) -> None:
        self.count = 0
        self.during_step: dict[str, int] = {}
        self.steps_on_loop: list[str] = []
        self._loop_thread = threading.get_ident()  # made on the event loop's thread
        self._changed = threading.Condition()

    def answered(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def during(self, step: str) -> None:
        """Called inside a heavy step: wait for ``ANSWERS_DURING`` more answers."""
        if threading.get_ident() == self._loop_thread:
            self.steps_on_loop.append(step)  # nothing can be answered while we are here
            self.during_step[step] = 0
            return
        with self._changed:
            start = self.count
            self._changed.wait_for(lambda: self.count >= start + ANSWERS_DURING, GUARD_SECONDS)
            self.during_step[step] = self.count - start

    def answered_during(self, step: str) -> int:
        return self.during_step.get(step, 0)

    def report(self) -> str:
        return f"answered during each step: {self.during_step}; on the loop: {self.steps_on_loop}"


class WatchedServer:
    """An ``xllamacpp.Server``, watched: requests must be answered while it is built
    ("load") and while it is freed ("unload"; the real server is released right after
    ``__del__``, on the same thread)."""

    def __init__(self, real: Callable[[Any], Any], params: Any, answers: Answers) -> None:
        self._answers = answers
        self._real = real(params)
        answers.during("load")

    def __getattr__(self, name: str) -> Any:
        if name == "_real":
            raise AttributeError(name)
        return getattr(self._real, name)

    def __del__(self) -> None:
        if "_real" in self.__dict__:
            self._answers.during("unload")


class WatchedTokenizer:
    """A ``tokenizers.Tokenizer``, watched: "tokenizer load" and "encode"."""

    def __init__(self, real: Any, answers: Answers) -> None:
        self._real = real
        self._answers = answers

    def encode_batch(self, *args: Any, **kwargs: Any) -> Any:
        encodings = self._real.encode_batch(*args, **kwargs)
        self._answers.during("encode")
        return encodings

    def __getattr__(self, name: str) -> Any:
        if name == "_real":
            raise AttributeError(name)
        return getattr(self._real, name)


def watch_llamacpp(monkeypatch: Any, answers: Answers) -> None:
    """Watch every llama.cpp server and tokenizer built from now on (``monkeypatch``)."""
    import tokenizers
    import xllamacpp

    real_server = xllamacpp.Server
    real_tokenizer = tokenizers.Tokenizer

    class Tokenizer:
        @staticmethod
        def from_file(path: str) -> WatchedTokenizer:
            loaded = real_tokenizer.from_file(path)
            answers.during("tokenizer load")
            return WatchedTokenizer(loaded, answers)

    monkeypatch.setattr(
        xllamacpp, "Server", lambda params: WatchedServer(real_server, params, answers)
    )
    monkeypatch.setattr(tokenizers, "Tokenizer", Tokenizer)


async def ask(engine: Engine) -> str:
    request = GenerationRequest(new_request_id(), engine.model, (Message(Role.USER, "hi"),))
    stream = engine.stream(request)
    try:
        return "".join([e.text async for e in stream if isinstance(e, TextDelta)])
    finally:
        await stream.aclose()


async def keep_asking(
    engine: Callable[[], Engine], answers: Answers, done: asyncio.Event
) -> list[str]:
    """Ask ``engine()`` again and again until ``done``; what each answer said."""
    texts: list[str] = []
    while not done.is_set():
        texts.append(await ask(engine()))
        answers.answered()
    return texts
