"""API keys from memory: what ``Authenticator`` reads on the request path in a server.

A key id is looked up in the database once per process (its first request there pays one
round trip); the row (the key's organization, role, tier, revocation and the hash of its
secret, never the secret) is then kept, the ``capacity`` most recently used ones, and an
unknown id is kept as unknown the same way. The secret a request presents is still hashed
and compared with the stored hash on every request, as without the cache.

The change feed (``store/changes.py``) keeps the cache true: a change of a key (created,
revoked, given a tier) drops that id, so its next request reads the database again; a
``RESET`` drops everything. Nothing is answered from memory while the feed is not current
(``ChangeFeed.current``): a process that cannot see the changes looks every key up again
rather than vouch for one that may have been revoked. So a key revoked in any process is
refused by every other within the feed's interval plus one poll (under a second by
default).

Concurrent lookups of one id share one query, and a lookup that began before a change it
may not have seen is answered but not kept.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from openmaas.store.changes import Change
from openmaas.store.repositories import ApiKey

DEFAULT_CAPACITY = 100_000
KEY_REVOKED = "key.revoke"
"""The audited action of a key's revocation; the target is the key id."""
KEY_ACTIONS = frozenset({"key.create", KEY_REVOKED, "key.update"})
"""The audited actions that change a key's row; the target is the key id."""


class KeySource(Protocol):
    """Where ``Authenticator`` finds a key by its id: ``ApiKeyRepository`` or ``KeyCache``."""

    async def get(self, key_id: str) -> ApiKey | None: ...


class KeyCache:
    def __init__(
        self,
        keys: KeySource,
        *,
        current: Callable[[], bool] = lambda: True,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self._keys = keys
        self._current = current
        self._capacity = capacity
        self._entries: OrderedDict[str, ApiKey | None] = OrderedDict()
        self._loading: dict[str, tuple[int, asyncio.Future[ApiKey | None]]] = {}
        self._epoch = 0  # moves on every change applied: a lookup begun before is not kept

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key_id: str) -> ApiKey | None:
        """The key ``key_id`` (None: no such key), from memory when it can be."""
        if self._current() and key_id in self._entries:
            self._entries.move_to_end(key_id)
            return self._entries[key_id]
        epoch, loading = self._loading.get(key_id) or (None, None)
        if loading is None or epoch != self._epoch:  # none, or begun before a change
            loading = asyncio.ensure_future(self._load(key_id))
            self._loading[key_id] = (self._epoch, loading)
            loading.add_done_callback(lambda done: self._loaded(key_id, done))
        return await asyncio.shield(loading)

    def _loaded(self, key_id: str, done: asyncio.Future[ApiKey | None]) -> None:
        if self._loading.get(key_id, (0, None))[1] is done:
            del self._loading[key_id]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone away

    async def _load(self, key_id: str) -> ApiKey | None:
        epoch = self._epoch
        key = await self._keys.get(key_id)
        if epoch == self._epoch:  # no change arrived meanwhile: the row is current
            self._entries[key_id] = key
            self._entries.move_to_end(key_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return key

    def evict(self, key_id: str) -> None:
        self._epoch += 1
        self._entries.pop(key_id, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    async def apply(self, changes: Sequence[Change]) -> None:
        """A change-feed subscriber: drop what the changes touched."""
        for change in changes:
            if change.resets:
                self.clear()
            elif change.action in KEY_ACTIONS:
                self.evict(change.target)
