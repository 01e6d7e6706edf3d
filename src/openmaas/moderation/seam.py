"""The moderation seam: what the gateway asks of a moderator, the built-in word lists, an
external moderator loaded by import path, and the window that checks streamed output.

A :class:`Moderator` answers two questions, both awaited so that an external service can
be asked over the network:

- ``check_input(org_id, texts)``: a reason when the request's texts (each message's
  content and reasoning, or the prompt) must be refused, else None;
- ``check_output(org_id, text)``: where in ``text`` refused content starts (a character
  index), else None. ``holdback`` is how many trailing characters the gateway keeps back
  until the next window is checked, so that a word split across chunks is still caught.

``OutputGuard`` is one generation's window over its streamed text: ``feed`` returns the
text that may be sent now and whether the stream must be cut; ``drain`` what was held
back, once the stream has ended by itself. Pure code; the I/O, if any, is the moderator's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from openmaas.core.errors import ConfigurationError
from openmaas.moderation.matcher import WordMatcher

FILTERED_INPUT = "The request was refused: it contains content that is not allowed."
FILTERED_OUTPUT = "the output reached content that is not allowed"  # the usage record's error


@runtime_checkable
class Moderator(Protocol):
    """What the gateway asks of moderation (``docs/moderation.md``)."""

    @property
    def holdback(self) -> int: ...

    async def check_input(self, org_id: str, texts: Sequence[str]) -> str | None: ...

    async def check_output(self, org_id: str, text: str) -> int | None: ...


class WordLists:
    """The built-in moderator: words from operator-supplied lists, matched after NFKC and
    case folding."""

    def __init__(self, words: Iterable[str]) -> None:
        self._matcher = WordMatcher(words)
        self.holdback = max(0, self._matcher.longest - 1)

    @property
    def has_words(self) -> bool:
        return bool(self._matcher)

    async def check_input(self, org_id: str, texts: Sequence[str]) -> str | None:
        for text in texts:
            match = self._matcher.first(text)
            if match is not None:
                return "word_list"
        return None

    async def check_output(self, org_id: str, text: str) -> int | None:
        match = self._matcher.first(text)
        return None if match is None else match.start


def read_list(path: Path) -> list[str]:
    """The words of one list file: one a line, UTF-8; blank and ``#`` lines are none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"moderation list {path}: {exc}") from exc
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


class PerOrganization:
    """Named word lists, chosen per organization: ``orgs`` maps an organization's id to the
    names of its lists (none: it is not moderated); any other organization gets every list."""

    def __init__(self, lists: Mapping[str, Sequence[str]], orgs: Mapping[str, Sequence[str]]):
        unknown = sorted({name for names in orgs.values() for name in names} - set(lists))
        if unknown:
            raise ConfigurationError(f"moderation: no list named {', '.join(unknown)}")
        self._every = WordLists(word for words in lists.values() for word in words)
        self._by_org = {
            org: WordLists(word for name in names for word in lists[name])
            for org, names in orgs.items()
        }
        self.holdback = max([self._every.holdback, *(m.holdback for m in self._by_org.values())])

    @property
    def has_words(self) -> bool:
        return self._every.has_words

    def _lists(self, org_id: str) -> WordLists:
        return self._by_org.get(org_id, self._every)

    async def check_input(self, org_id: str, texts: Sequence[str]) -> str | None:
        return await self._lists(org_id).check_input(org_id, texts)

    async def check_output(self, org_id: str, text: str) -> int | None:
        return await self._lists(org_id).check_output(org_id, text)


class Chain:
    """Several moderators as one: input refused if any refuses it, output cut at the
    earliest start any reports, the longest holdback."""

    def __init__(self, moderators: Sequence[Moderator]) -> None:
        self._moderators = tuple(moderators)
        self.holdback = max((m.holdback for m in self._moderators), default=0)

    async def check_input(self, org_id: str, texts: Sequence[str]) -> str | None:
        for moderator in self._moderators:
            reason = await moderator.check_input(org_id, texts)
            if reason is not None:
                return reason
        return None

    async def check_output(self, org_id: str, text: str) -> int | None:
        starts = [await m.check_output(org_id, text) for m in self._moderators]
        found = [start for start in starts if start is not None]
        return min(found) if found else None


def load_plugin(path: str) -> Moderator:
    """An external moderator: ``package.module:factory``, a callable taking no arguments
    that returns a :class:`Moderator`."""
    module_name, _, attribute = path.partition(":")
    try:
        factory: Callable[[], object] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"moderation plugin {path!r} cannot be imported: {exc}") from exc
    moderator = factory()
    if not isinstance(moderator, Moderator):
        raise ConfigurationError(f"moderation plugin {path!r} did not return a Moderator")
    return moderator


def build_moderator(
    lists: Mapping[str, Path],
    plugin: str | None,
    orgs: Mapping[str, Sequence[str]] | None = None,
) -> Moderator | None:
    """The moderator the settings ask for: the named word lists (``orgs``: the lists of
    particular organizations, by id) and a plugin. None (moderation off, nothing checked)
    when they name no list and no plugin, or the lists hold no word."""
    moderators: list[Moderator] = []
    if lists:
        words = PerOrganization({name: read_list(path) for name, path in lists.items()}, orgs or {})
        if words.has_words:
            moderators.append(words)
    if plugin:
        moderators.append(load_plugin(plugin))
    if not moderators:
        return None
    return moderators[0] if len(moderators) == 1 else Chain(moderators)


class OutputGuard:
    """One generation's window over its output, per stream of text (``key``: the kind of
    text and the choice). Each window checked is the held-back tail plus the new text."""

    __slots__ = ("_moderator", "_org_id", "_held")

    def __init__(self, moderator: Moderator, org_id: str) -> None:
        self._moderator = moderator
        self._org_id = org_id
        self._held: dict[tuple[str, int], str] = {}

    async def feed(self, key: tuple[str, int], text: str) -> tuple[str, bool]:
        """The text that may be sent now, and True when the stream must be cut (the text
        returned then is what came before the refused content)."""
        window = self._held.pop(key, "") + text
        start = await self._moderator.check_output(self._org_id, window)
        if start is not None:
            self._held.clear()
            return window[:start], True
        keep = min(self._moderator.holdback, len(window))
        if keep:
            self._held[key] = window[-keep:]
            return window[:-keep], False
        return window, False

    def drain(self) -> list[tuple[tuple[str, int], str]]:
        """What is still held back, once the output has ended by itself (it was checked)."""
        held, self._held = self._held, {}
        return [(key, text) for key, text in held.items() if text]
