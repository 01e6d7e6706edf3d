"""Undoing events applied to the in-memory ``Ledger`` that were never committed.

``store/ledger/log.py`` decides a batch's commands on the state in memory *before* it knows
whether another process appended to the log meanwhile (an optimistic batch, one hand-off
to the database). When one did, the batch is not written, and the events it applied to
memory must go again before the other process's are applied. Rebuilding the state from the
newest snapshot and the log costs up to ``OPENMAAS_LEDGER_SNAPSHOT_EVENTS`` events; an
:class:`Undo` costs what the batch itself did: before each event is applied it saves the
values of every entry the event can change (``Ledger.apply``'s, event kind by event kind),
and :meth:`Undo.revert` puts them back, newest first.

The window of recently settled ids is put back as it was too (``RecentIds.take_back``:
the reverted id leaves it, and the one its settlement pushed out returns).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from openmaas.core.ledger import Ledger, RecentIds
from openmaas.core.ledger_events import (
    BudgetSet,
    CreditLimitSet,
    Event,
    Funded,
    HoldPlaced,
    HoldResolved,
    LeaseDrawn,
    LeaseShrunk,
    LeaseSpent,
    OrgOpened,
    PackExpired,
    PackGranted,
    cash,
    held,
    held_tokens,
    leased,
    leased_promo,
    pack,
    promo,
)

_MISSING = object()


class Undo:
    """The saved values of what a batch's events changed in one ``Ledger``."""

    __slots__ = (
        "_accounts", "_closed", "_entries", "_fields", "_leases", "_members", "_order",
        "_window",
    )  # fmt: skip

    def __init__(self) -> None:
        # What is saved already, not saved again: ``revert`` puts back the oldest value
        # last, and a batch's requests touch the same few accounts and the same lease.
        self._accounts: set[str] = set()  # accounts whose balance, unit and floor are saved
        self._leases: set[int] = set()  # lease states (``id``) whose promo and cash are saved
        self._entries: list[tuple[dict[Any, Any], Any, Any]] = []  # 0: dict, key, old value
        self._members: list[tuple[set[str], str]] = []  # 1: a set an id was added to
        self._fields: list[tuple[Any, str, Any]] = []  # 2: object, attribute, old value
        # 3: closed_leases appended to: the deque, the lease it pushed out and its state
        self._closed: list[tuple[Any, str | None, Any]] = []
        self._window: list[tuple[RecentIds, str, str | None]] = []  # 4: id, pushed out
        self._order: list[int] = []  # each record's kind (0 to 4 as above), oldest first

    def record(self, ledger: Ledger, event: Event) -> None:
        """Save what applying ``event`` to ``ledger`` will change (call it just before)."""
        if type(event) is LeaseSpent:  # the hot path: one per leased request
            if event.request_id not in ledger.settled_ids:
                self._settled(ledger.settled_ids, event.request_id)
            lease = ledger.leases.get(event.lease_id)
            if lease is not None and id(lease) not in self._leases:
                self._lease(lease)
            for transfer in event.transfers:
                if transfer.debit not in self._accounts:
                    self._account(ledger, transfer.debit)
                if transfer.credit not in self._accounts:
                    self._account(ledger, transfer.credit)
            return
        accounts: list[str] = []
        for transfer in getattr(event, "transfers", ()):
            accounts.append(transfer.debit)
            accounts.append(transfer.credit)

        if isinstance(event, HoldPlaced):
            self._entry(ledger.holds, event.request_id)
            self._entries_of(ledger.budget_held, event.budget_keys)
        elif isinstance(event, HoldResolved):
            self._entry(ledger.holds, event.request_id)
            self._settled(ledger.settled_ids, event.request_id)
            hold = ledger.holds.get(event.request_id)
            if hold is not None:
                self._entries_of(ledger.budget_held, hold.budget_keys)
                self._entries_of(ledger.budget_spent, hold.budget_keys)
        elif isinstance(event, LeaseDrawn):
            self._entry(ledger.leases, event.lease_id)
        elif isinstance(event, LeaseShrunk):
            lease = ledger.leases.get(event.lease_id)
            if lease is not None:
                for name in ("promo", "cash", "closed"):
                    self._field(lease, name)
                if event.closed and not lease.closed:
                    self._closing(ledger)
        elif isinstance(event, OrgOpened):
            self._entry(ledger.orgs, event.org)
            org = event.org
            accounts += [cash(org), promo(org), held(org), leased(org), leased_promo(org)]
            accounts.append(held_tokens(org))
        elif isinstance(event, CreditLimitSet):
            self._entry(ledger.orgs, event.org)
            self._entry(ledger.floors, cash(event.org))
        elif isinstance(event, Funded):
            self._member(ledger.funding_ids, event.funding_id)
        elif isinstance(event, PackGranted):
            self._entry(ledger.packs, event.pack_id)
            self._member(ledger.pack_orgs, event.org)
            accounts.append(pack(event.pack_id))
        elif isinstance(event, PackExpired):
            state = ledger.packs.get(event.pack_id)
            if state is not None:
                self._field(state, "expired")
        elif isinstance(event, BudgetSet):
            self._entry(ledger.budgets, (event.scope, event.period))
        for account in accounts:
            if account not in self._accounts:
                self._account(ledger, account)

    def revert(self, ledger: Ledger) -> None:
        """Put back every saved value, newest first: ``ledger`` is as before the first
        recorded event."""
        for kind in reversed(self._order):
            if kind == 0:
                table, key, old = self._entries.pop()
                if old is _MISSING:
                    table.pop(key, None)
                else:
                    table[key] = old
            elif kind == 1:
                members, item = self._members.pop()
                members.discard(item)
            elif kind == 2:
                target, name, old = self._fields.pop()
                setattr(target, name, old)
            elif kind == 4:
                window, item, pushed_out = self._window.pop()
                window.take_back(item, pushed_out)
            else:
                closed, pushed_out, state = self._closed.pop()
                closed.pop()
                if pushed_out is not None:
                    closed.appendleft(pushed_out)
                    ledger.leases[pushed_out] = state
        self._order.clear()
        self._accounts.clear()
        self._leases.clear()

    def _account(self, ledger: Ledger, account: str) -> None:
        self._accounts.add(account)
        self._entry(ledger.balances, account)
        self._entry(ledger.units, account)
        self._entry(ledger.floors, account)

    def _lease(self, lease: Any) -> None:
        self._leases.add(id(lease))  # the state is kept alive by the saved fields below
        self._field(lease, "promo")
        self._field(lease, "cash")

    def _entry(self, table: dict[Any, Any], key: Any) -> None:
        self._entries.append((table, key, table.get(key, _MISSING)))
        self._order.append(0)

    def _entries_of(self, table: dict[Any, Any], keys: Iterable[Any]) -> None:
        for key in keys:
            self._entry(table, key)

    def _member(self, members: set[str], item: str) -> None:
        if item not in members:
            self._members.append((members, item))
            self._order.append(1)

    def _settled(self, window: RecentIds, request_id: str) -> None:
        if request_id not in window:
            self._window.append((window, request_id, window.next_out()))
            self._order.append(4)

    def _field(self, target: Any, name: str) -> None:
        self._fields.append((target, name, getattr(target, name)))
        self._order.append(2)

    def _closing(self, ledger: Ledger) -> None:
        """A lease about to close joins ``closed_leases``; the oldest closed one leaves it
        (and the ledger) when the queue is over the window's size."""
        closed = ledger.closed_leases
        pushed_out: str | None = None
        state: Any = None
        if len(closed) + 1 > ledger.settled_ids.capacity:
            pushed_out = closed[0]
            state = ledger.leases.get(pushed_out)
        self._closed.append((closed, pushed_out, state))
        self._order.append(3)
