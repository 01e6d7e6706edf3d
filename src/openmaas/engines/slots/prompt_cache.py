"""Prompt-cache isolation for an engine with slots (llama.cpp): a slot keeps the prompt it
last read, and a request whose prompt begins the same way reads that prefix from the cache,
which its usage reports (``cached_tokens``). Were that prefix another organization's, the
count would tell one organization what another sent.

:class:`SlotScopes` keeps, per slot, the cache scope (``RoutingHints.cache_scope``: a keyed
hash of the organization) of the last request given to it, and picks each request's slot
among the free ones: one of its own scope (of those, the one whose last prompt shares the
longest beginning with this one's, as llama.cpp itself would choose), else one never used,
else the least recently used. The engine's fair queue (``engines/slots/fair.py``) sends a request
to llama.cpp only while it holds one of the slots, so a free slot is always there (were
none, the least busy would be taken and the request would wait in llama.cpp's own queue).
The request may reuse the slot's cache only when the slot is its own scope's; otherwise it
is sent with the cache off (its prompt is read afresh, and then fills the slot for its
scope).
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_KEPT = 65_536  # characters of each slot's last prompt kept for the comparison


@dataclass(frozen=True, slots=True)
class SlotChoice:
    slot: int
    reuse_cache: bool  # the slot last read a prompt of the same scope


class SlotScopes:
    """Each slot's scope and how busy it is (one event loop: no locking)."""

    __slots__ = ("_scope", "_prompt", "_busy", "_used", "_tick")

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._scope: list[str | None] = [None] * slots
        self._prompt = [""] * slots  # the beginning of the prompt each slot was last given
        self._busy = [0] * slots  # requests given the slot and not yet given back
        self._used = [0] * slots  # when each slot was last given (a counter), for LRU
        self._tick = 0

    def take(self, scope: str | None, prompt: str = "") -> SlotChoice:
        """The slot for a request of ``scope`` whose prompt (any text that begins as the
        prompt does, e.g. its messages as JSON) is ``prompt``; give it back with
        :meth:`give_back`."""
        prompt = prompt[:PROMPT_KEPT]
        slots = range(len(self._busy))
        free = [i for i in slots if self._busy[i] == 0]
        candidates = free or list(slots)
        own = [i for i in candidates if self._used[i] and self._scope[i] == scope]
        if own:  # the least busy, the longest shared beginning, the most recently used
            slot = max(
                own,
                key=lambda i: (-self._busy[i], _shared(self._prompt[i], prompt), self._used[i]),
            )
        else:  # the least busy, then never used, then least recently used
            slot = min(candidates, key=lambda i: (self._busy[i], self._used[i]))
        reuse = self._used[slot] > 0 and self._scope[slot] == scope
        self._scope[slot] = scope
        self._prompt[slot] = prompt
        self._busy[slot] += 1
        self._tick += 1
        self._used[slot] = self._tick
        return SlotChoice(slot, reuse)

    def give_back(self, slot: int) -> None:
        self._busy[slot] = max(0, self._busy[slot] - 1)


def _shared(a: str, b: str) -> int:
    """How many characters ``a`` and ``b`` share from their beginning."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low
