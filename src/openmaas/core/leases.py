"""One gateway process's leases: priced requests admitted in memory, against money the
ledger set aside for this process (``DrawLease``), so that admission needs no ledger write.

The ledger keeps the truth of every lease: how much it still holds (``Ledger.leases``). This
book keeps what only this process knows: which of its requests reserved how much of which
lease. A request fits when its worst case is at most what the lease holds less what its open
requests reserved, so the requests of every process together can never commit more than the
leases hold, and the leases never hold more than the organization could spend when they were
drawn (``core/ledger.py``).

The life of a lease:

- **drawn** when a request does not fit the organization's current lease (or there is none):
  ``want`` says how much (twice what this process reserved for the organization over the
  last ``seconds``, at least ``min_requests`` worst cases); the ledger grants at most
  ``share_bp`` of what the organization may spend, and refuses below ``min_requests`` worst
  cases, so as the balance runs low leases shrink, then stop, and requests go back to one
  ledger hold each, which is exact to the last micro;
- **retired** when a new one replaces it: it admits nothing more and gives back at once
  what its open requests did not reserve (``ShrinkLease(keep=reserved)``), then the rest
  when the last of them ends (``ShrinkLease(keep=0)`` closes it);
- **closed when idle**: a current lease with nothing open for ``seconds`` gives everything
  back, so money does not sit in a process that no longer needs it;
- a process that dies leaves its leases open: whoever recovers its requests
  (``Accountant.sweep``) settles them and then closes the leases.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    seconds: float = 2.0  # the spend horizon a lease is sized for; idle this long: closed
    min_requests: int = 4  # a lease covers at least this many worst cases, or none is drawn
    share_bp: int = 2500  # at most this share (basis points) of what the organization may spend


@dataclass(slots=True)
class Lease:
    lease_id: str
    org: str
    last_used: float
    reserved: dict[str, int] = field(default_factory=dict)  # request id -> micros
    reserved_total: int = 0  # the sum of ``reserved``, kept as it changes (admission reads it)
    retiring: bool = False

    def add(self, request_id: str, amount: int) -> None:
        self.reserved[request_id] = amount
        self.reserved_total += amount

    def remove(self, request_id: str) -> None:
        self.reserved_total -= self.reserved.pop(request_id)


@dataclass(frozen=True, slots=True)
class Shrink:
    """A ``ShrinkLease`` to send to the ledger: keep ``keep`` micros (0: close)."""

    lease_id: str
    keep: int


class LeaseBook:
    """The leases of one process, by organization. ``left(lease_id)`` is what the ledger
    says the lease still holds (this process's view, current after its own commits)."""

    def __init__(self, policy: LeasePolicy, left: Callable[[str], int]) -> None:
        self.policy = policy
        self._left = left
        self._current: dict[str, Lease] = {}  # org -> the lease that admits requests
        self._leases: dict[str, Lease] = {}  # lease id -> every lease not yet closed
        self._by_request: dict[str, Lease] = {}
        self._recent: dict[str, deque[tuple[float, int]]] = {}  # org -> (time, reserved)

    def reserve(self, org: str, request_id: str, amount: int, now: float) -> str | None:
        """Reserve ``amount`` micros of the organization's current lease for the request;
        its lease id, or None when there is no lease or the request does not fit."""
        lease = self._current.get(org)
        if lease is None or self._left(lease.lease_id) - lease.reserved_total < amount:
            return None
        lease.add(request_id, amount)
        lease.last_used = now
        self._by_request[request_id] = lease
        recent = self._recent.setdefault(org, deque())
        recent.append((now, amount))
        while recent and recent[0][0] < now - self.policy.seconds:
            recent.popleft()
        return lease.lease_id

    def want(self, org: str, amount: int, now: float) -> tuple[int, int]:
        """(want, at least) micros of a new lease for requests of about ``amount``."""
        at_least = amount * self.policy.min_requests
        recent = sum(a for t, a in self._recent.get(org, ()) if t >= now - self.policy.seconds)
        return max(at_least, 2 * (recent + amount)), at_least

    def opened(self, org: str, lease_id: str, now: float) -> Shrink | None:
        """The ledger granted ``lease_id``: it becomes the organization's current lease. The
        one it replaces retires; returns the shrink that gives back its unreserved part."""
        lease = Lease(lease_id, org, now)
        self._leases[lease_id] = lease
        previous = self._current.get(org)
        self._current[org] = lease
        return None if previous is None else self._retire(previous)

    def retire(self, org: str) -> Shrink | None:
        """Stop admitting against the organization's current lease (the ledger refused a
        new one, or the organization changed): the shrink to send, if any."""
        lease = self._current.get(org)
        return None if lease is None else self._retire(lease)

    def _retire(self, lease: Lease) -> Shrink:
        if self._current.get(lease.org) is lease:
            del self._current[lease.org]
        lease.retiring = True
        if not lease.reserved:
            del self._leases[lease.lease_id]
        return Shrink(lease.lease_id, lease.reserved_total)

    def release(self, request_id: str) -> Shrink | None:
        """The request ended (settled from its lease, or cancelled): its reservation goes.
        When it was the last one of a retiring lease, returns the shrink that closes it."""
        lease = self._by_request.pop(request_id, None)
        if lease is None:
            return None
        lease.remove(request_id)
        if lease.retiring and not lease.reserved:
            self._leases.pop(lease.lease_id, None)
            return Shrink(lease.lease_id, 0)
        return None

    def idle(self, now: float) -> list[Shrink]:
        """Close the current leases that admitted nothing for ``seconds`` and have nothing
        open: the shrinks to send."""
        stale = [
            lease
            for lease in self._current.values()
            if not lease.reserved and now - lease.last_used >= self.policy.seconds
        ]
        return [self._retire(lease) for lease in stale]

    def close_all(self) -> list[Shrink]:
        """Retire every current lease (the process stops): each gives back what nothing
        reserved; one with requests still open closes when the last of them is released."""
        return [self._retire(lease) for lease in list(self._current.values())]

    def reserved(self, org: str | None = None) -> int:
        """Micros reserved by this process's open requests (of one organization)."""
        return sum(
            lease.reserved_total
            for lease in self._leases.values()
            if org is None or lease.org == org
        )

    def lease_of(self, request_id: str) -> str | None:
        lease = self._by_request.get(request_id)
        return None if lease is None else lease.lease_id

    def open_leases(self) -> list[str]:
        return sorted(self._leases)
