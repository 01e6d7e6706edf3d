"""Many words found in one pass: Aho-Corasick over normalised text.

Text and words are normalised the same way, one character at a time: NFKC (full-width
letters and digits become half-width, compatibility forms their plain ones) then
``casefold`` (case, including the German sharp s). A character may normalise to several
(``ﬁ`` to ``fi``), so a match's start is mapped back to the original character it came
from: the text before a match can be passed on unchanged.

Pure code: no I/O, no state between calls besides the automaton built once.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


def normalise(text: str) -> str:
    """NFKC, then case folded: the form words are matched in."""
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True, slots=True)
class Match:
    """A listed word found: ``start`` and ``end`` index the original text's characters
    (``text[start:end]`` holds it, give or take a character that normalised to several)."""

    word: str  # the listed word, normalised
    start: int
    end: int


class WordMatcher:
    """An Aho-Corasick automaton over normalised words. ``longest`` is the longest word's
    length in normalised characters (0 when there are none)."""

    __slots__ = ("_goto", "_fail", "_out", "longest")

    def __init__(self, words: Iterable[str]) -> None:
        self._goto: list[dict[str, int]] = [{}]
        self._out: list[str | None] = [None]  # the longest word ending at each state
        self.longest = 0
        for raw in words:
            word = normalise(raw.strip())
            if not word:
                continue
            self.longest = max(self.longest, len(word))
            state = 0
            for char in word:
                nxt = self._goto[state].get(char)
                if nxt is None:
                    nxt = len(self._goto)
                    self._goto[state][char] = nxt
                    self._goto.append({})
                    self._out.append(None)
                state = nxt
            self._out[state] = word
        self._fail = [0] * len(self._goto)
        self._link()

    def _link(self) -> None:
        """Failure links, breadth first; each state's output is the longest word ending
        there (its own, else one reached along its failure links: a suffix, so shorter)."""
        queue = list(self._goto[0].values())
        for state in queue:
            for char, nxt in self._goto[state].items():
                queue.append(nxt)
                back = self._fail[state]
                while back and char not in self._goto[back]:
                    back = self._fail[back]
                target = self._goto[back].get(char, 0)
                self._fail[nxt] = target if target != nxt else 0
                inherited = self._out[self._fail[nxt]]
                own = self._out[nxt]
                if own is None:
                    self._out[nxt] = inherited

    def __bool__(self) -> bool:
        return self.longest > 0

    def first(self, text: str) -> Match | None:
        """The listed word in ``text`` that ends first (the longest of those ending there),
        or None: the text before its start holds no listed word."""
        goto, fail, out = self._goto, self._fail, self._out
        state = 0
        origin: list[int] = []  # normalised position -> original character index
        for index, char in enumerate(text):
            folded = normalise(char) if not char.isascii() or char.isupper() else char
            for norm in folded:
                origin.append(index)
                while state and norm not in goto[state]:
                    state = fail[state]
                state = goto[state].get(norm, 0)
                word = out[state]
                if word is not None:
                    start = origin[len(origin) - len(word)]
                    return Match(word, start, index + 1)
        return None
