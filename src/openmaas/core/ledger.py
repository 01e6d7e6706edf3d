"""The ledger: double entry, holds, prepaid balances, resource packs and budgets, as a pure
state machine.

``Ledger.execute(command)`` checks a command against the state, turns it into events
whose transfers are fully resolved, applies them and returns them. ``Ledger.apply(event)``
is the only thing that changes state, and needs no prices and no clock, so
``Ledger.replay(events)`` rebuilds exactly the state that produced them. The store persists
the events of one command in one transaction (see ``docs/billing.md``); a command whose
idempotency key (request id, top-up id, grant id, pack id) was already used returns no
events and changes nothing.

Every ``Transfer`` debits one account and credits another by a positive amount, within one
unit (a currency's micros, or tokens), so the sum of all accounts of a unit is always zero.
Accounts with a floor (an organization's cash: ``-credit_limit``; promotional credit,
packs and holds: 0) never go below it.

The life of a request: ``Hold`` moves its worst case into the organization's hold
accounts (pack tokens first, oldest-expiring first; then promotional credit; then cash),
refusing with ``InsufficientBalance`` or ``BudgetExceeded``. ``Settle`` (or ``Release``,
which settles nothing) moves the actual charge to revenue and returns the rest, once.

Or, so that a gateway process need not write the ledger before every request: ``DrawLease``
moves money for many requests into the organization's ``leased`` accounts for one process,
which admits requests against it in memory (``core/leases.py``); ``SpendLease`` settles one
of them from the lease, once (the same ``resolved:<request id>`` key as a hold's settlement);
``ShrinkLease`` gives back what the lease holds beyond what its open requests reserved.

Memory: the state keeps what deciding the open requests needs (balances, open holds,
leases, budgets) and only a bounded window of the ids of requests settled lately
(``RecentIds``): a settlement repeated inside it is answered from memory, one repeated
after its id left it is decided again and refused by the store's unique key
(``resolved:<request id>``), which stays the guarantee of settling once
(``store/ledger/log.py``, ``docs/billing.md``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from openmaas.core.errors import BudgetExceeded, InsufficientBalance, InvalidRequest, NotFound
from openmaas.core.ledger_events import (
    TOKENS,
    BudgetPeriod,
    BudgetSet,
    Command,
    CreditLimitSet,
    DrawLease,
    Event,
    ExpirePacks,
    Funded,
    GrantPack,
    GrantPromo,
    Hold,
    HoldPlaced,
    HoldResolved,
    LeaseDrawn,
    LeaseShrunk,
    LeaseSpent,
    OpenOrg,
    OrgOpened,
    PackExpired,
    PackGranted,
    Release,
    SetBudget,
    SetCreditLimit,
    Settle,
    ShrinkLease,
    SpendLease,
    TopUp,
    Transfer,
    cash,
    held,
    held_tokens,
    leased,
    leased_promo,
    pack,
    period_key,
    promo,
    system,
)
from openmaas.core.prices import split_usage
from openmaas.core.types import Usage

DEFAULT_SETTLED_WINDOW = 100_000
"""Ids of settled requests a ledger keeps in memory by default (~110 bytes each)."""


class RecentIds(set[str]):
    """The ids of the last ``capacity`` requests settled (or released), oldest forgotten
    first: a set (its membership test, once per settlement, stays the built-in one) and a
    queue of the same ids in the order they came."""

    __slots__ = ("_order", "capacity")

    def __init__(self, capacity: int = DEFAULT_SETTLED_WINDOW) -> None:
        super().__init__()
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("the settled window holds at least one id")
        self.capacity = capacity
        self._order: deque[str] = deque()

    def add(self, request_id: str) -> None:
        if request_id in self:
            return
        set.add(self, request_id)
        self._order.append(request_id)
        if len(self._order) > self.capacity:
            self.discard(self._order.popleft())

    def next_out(self) -> str | None:
        """The id that adding a new one would push out (None: there is room)."""
        return self._order[0] if len(self._order) >= self.capacity else None

    def take_back(self, request_id: str, pushed_out: str | None) -> None:
        """Undo the newest ``add``, of ``request_id``, which pushed out ``pushed_out``
        (``next_out`` before it): the window is as before that add (``store/ledger/undo.py``,
        for a batch another process's appends sent back)."""
        if self._order and self._order[-1] == request_id:
            self._order.pop()
        self.discard(request_id)
        if pushed_out is not None and pushed_out not in self:
            set.add(self, pushed_out)
            self._order.appendleft(pushed_out)

    def __repr__(self) -> str:
        return f"RecentIds({len(self)} of {self.capacity})"


@dataclass(slots=True)
class PackState:
    org: str
    models: frozenset[str]
    expires_at_ms: int
    expired: bool = False


@dataclass(slots=True)
class LeaseState:
    org: str
    instance_id: str
    promo: int  # micros of promotional credit left in the lease
    cash: int  # micros of cash left in the lease
    closed: bool = False

    @property
    def left(self) -> int:
        return self.promo + self.cash


@dataclass(frozen=True, slots=True)
class PackRecord:
    pack_id: str
    org: str
    models: tuple[str, ...]
    expires_at_ms: int
    expired: bool


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    lease_id: str
    org: str
    instance_id: str
    promo: int
    cash: int
    closed: bool


STATE_VERSION = 1
"""The shape of ``LedgerState``; a snapshot of another shape is not read (replayed instead)."""


@dataclass(frozen=True, slots=True)
class LedgerState:
    """All of a ``Ledger`` but its window of settled ids, in plain immutable values: what a
    snapshot of the ledger stores (``store/ledger/log.py``). ``Ledger.from_state(x.state())``
    decides every command as ``x`` does (a repeat settled before the window aside)."""

    balances: dict[str, int]
    units: dict[str, str]
    floors: dict[str, int]
    orgs: tuple[OrgOpened, ...]
    packs: tuple[PackRecord, ...]
    holds: tuple[HoldPlaced, ...]
    funding_ids: tuple[str, ...]
    budgets: tuple[tuple[str, BudgetPeriod, int], ...]
    budget_spent: tuple[tuple[str, str, int], ...]
    budget_held: tuple[tuple[str, str, int], ...]
    leases: tuple[LeaseRecord, ...]
    closed_leases: tuple[str, ...]  # the closed ones of ``leases``, oldest closed first
    pack_orgs: tuple[str, ...]
    version: int = STATE_VERSION


@dataclass(slots=True)
class Ledger:
    """The state. Mutated only by ``apply``; ``execute`` decides, then applies."""

    balances: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)
    orgs: dict[str, OrgOpened] = field(default_factory=dict)
    packs: dict[str, PackState] = field(default_factory=dict)
    holds: dict[str, HoldPlaced] = field(default_factory=dict)
    # The ids of the requests settled (or released) lately, from a hold or from a lease: a
    # bounded window (``RecentIds``), not one per request ever settled; the log's unique
    # ``resolved:<request id>`` key is what settles a request once (docs/billing.md).
    settled_ids: RecentIds = field(default_factory=RecentIds)
    funding_ids: set[str] = field(default_factory=set)
    budgets: dict[tuple[str, BudgetPeriod], int] = field(default_factory=dict)
    budget_spent: dict[tuple[str, str], int] = field(default_factory=dict)
    budget_held: dict[tuple[str, str], int] = field(default_factory=dict)
    # Open leases, and the last closed ones (as many as the window of settled ids holds):
    # a lease is drawn per process and organization every few seconds of spend, so all of
    # them would grow without end. ``closed_leases``: their ids, oldest closed first.
    leases: dict[str, LeaseState] = field(default_factory=dict)
    closed_leases: deque[str] = field(default_factory=deque)
    pack_orgs: set[str] = field(default_factory=set)  # organizations ever granted a pack

    # -- reading --

    @classmethod
    def replay(cls, events: Iterable[Event], *, window: int = DEFAULT_SETTLED_WINDOW) -> Ledger:
        ledger = cls(settled_ids=RecentIds(window))
        for event in events:
            ledger.apply(event)
        return ledger

    def state(self) -> LedgerState:
        """The state as plain values (a copy: applying more events leaves it as it was)."""
        return LedgerState(
            balances=dict(self.balances),
            units=dict(self.units),
            floors=dict(self.floors),
            orgs=tuple(self.orgs.values()),
            packs=tuple(
                PackRecord(pid, p.org, tuple(sorted(p.models)), p.expires_at_ms, p.expired)
                for pid, p in self.packs.items()
            ),
            holds=tuple(self.holds.values()),
            funding_ids=tuple(sorted(self.funding_ids)),
            budgets=tuple(
                (scope, period, limit) for (scope, period), limit in self.budgets.items()
            ),
            budget_spent=tuple((s, k, v) for (s, k), v in self.budget_spent.items()),
            budget_held=tuple((s, k, v) for (s, k), v in self.budget_held.items()),
            leases=tuple(
                LeaseRecord(lid, x.org, x.instance_id, x.promo, x.cash, x.closed)
                for lid, x in self.leases.items()
            ),
            closed_leases=tuple(self.closed_leases),
            pack_orgs=tuple(sorted(self.pack_orgs)),
        )

    @classmethod
    def from_state(cls, state: LedgerState, *, window: int = DEFAULT_SETTLED_WINDOW) -> Ledger:
        """The ledger ``state`` describes, with an empty window of settled ids."""
        if state.version != STATE_VERSION:
            raise ValueError(f"a ledger state of version {state.version}, not {STATE_VERSION}")
        return cls(
            balances=dict(state.balances),
            units=dict(state.units),
            floors=dict(state.floors),
            orgs={org.org: org for org in state.orgs},
            packs={
                p.pack_id: PackState(p.org, frozenset(p.models), p.expires_at_ms, p.expired)
                for p in state.packs
            },
            holds={hold.request_id: hold for hold in state.holds},
            settled_ids=RecentIds(window),
            funding_ids=set(state.funding_ids),
            budgets={(scope, period): limit for scope, period, limit in state.budgets},
            budget_spent={(s, k): v for s, k, v in state.budget_spent},
            budget_held={(s, k): v for s, k, v in state.budget_held},
            leases={
                x.lease_id: LeaseState(x.org, x.instance_id, x.promo, x.cash, x.closed)
                for x in state.leases
            },
            closed_leases=deque(state.closed_leases),
            pack_orgs=set(state.pack_orgs),
        )

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def available(self, org: str) -> int:
        """Micros a new hold may take from cash (open holds are already moved out)."""
        return self.balance(cash(org)) - self.floors.get(cash(org), 0)

    def totals_by_unit(self) -> dict[str, int]:
        """The sum of every account per unit; double entry keeps each at zero."""
        totals: dict[str, int] = {}
        for account, amount in self.balances.items():
            unit = self.units[account]
            totals[unit] = totals.get(unit, 0) + amount
        return totals

    def open_holds(self) -> list[str]:
        """Request ids of holds not yet settled or released (crash recovery)."""
        return sorted(self.holds)

    def settled(self, request_id: str) -> bool:
        """Whether the request was settled (or released), from a hold or from a lease, as
        far as the window of recent settlements knows (False: open, unknown, or settled
        before the window: the store's unique key then refuses a repeat)."""
        return request_id in self.settled_ids

    def remember_settled(self, request_id: str) -> None:
        """Note a request the log says was settled (``store/ledger/log.py``, when its repeat
        was refused there): a repeat is then answered from memory again."""
        if request_id not in self.holds:
            self.settled_ids.add(request_id)

    def open_leases(self, *, org: str | None = None, instance_id: str | None = None) -> list[str]:
        """Ids of the leases not yet closed, of one organization or one process."""
        return sorted(
            lease_id
            for lease_id, lease in self.leases.items()
            if not lease.closed
            and (org is None or lease.org == org)
            and (instance_id is None or lease.instance_id == instance_id)
        )

    def leased_parts(self, org: str) -> tuple[int, int]:
        """(promotional credit, cash) the organization's open leases hold: still its money."""
        open_leases = [self.leases[lease_id] for lease_id in self.open_leases(org=org)]
        return sum(x.promo for x in open_leases), sum(x.cash for x in open_leases)

    def may_spend(self, org: str) -> int:
        """Micros the organization may still commit to new requests: promotional credit and
        cash down to the credit limit (neither held nor leased)."""
        return self.balance(promo(org)) + self.available(org)

    def has_usable_packs(self, org: str, model: str, at_ms: int) -> bool:
        return org in self.pack_orgs and bool(self._usable_packs(org, model, at_ms))

    def has_budget(self, scopes: Iterable[str]) -> bool:
        """Whether any of ``scopes`` has a daily or monthly budget."""
        if not self.budgets:  # the common case, read by every leased admission
            return False
        return any((scope, period) in self.budgets for scope in scopes for period in BudgetPeriod)

    # -- applying --

    def apply(self, event: Event) -> None:
        """Apply one event; an event with an invalid transfer is refused whole."""
        transfers: tuple[Transfer, ...] = getattr(event, "transfers", ())
        units = self.units
        for transfer in transfers:  # the units of open accounts read here, not by a call
            unit = units.get(transfer.debit) or self.unit_of(transfer.debit)
            credit_unit = units.get(transfer.credit) or self.unit_of(transfer.credit)
            if unit != credit_unit or transfer.amount <= 0:
                raise ValueError(f"invalid transfer {transfer!r}")
        if type(event) is LeaseSpent:  # the hot path first: one per leased request
            self.settled_ids.add(event.request_id)
            spent_from = self.leases.get(event.lease_id)
            if spent_from is not None:  # None: closed long ago (it had nothing left to give)
                spent_from.promo -= event.from_promo
                spent_from.cash -= event.from_cash
        elif isinstance(event, OrgOpened):
            self.orgs[event.org] = event
            currency = event.currency.value
            for account in (cash(event.org), promo(event.org), held(event.org),
                            leased(event.org), leased_promo(event.org)):  # fmt: skip
                self._open(account, currency, 0)
            self._open(held_tokens(event.org), TOKENS, 0)
            self.floors[cash(event.org)] = -event.credit_limit
        elif isinstance(event, CreditLimitSet):
            org = self.orgs[event.org]
            self.orgs[event.org] = OrgOpened(org.org, org.currency, event.credit_limit)
            self.floors[cash(event.org)] = -event.credit_limit
        elif isinstance(event, Funded):
            self.funding_ids.add(event.funding_id)
        elif isinstance(event, PackGranted):
            self.packs[event.pack_id] = PackState(event.org, event.models, event.expires_at_ms)
            self.pack_orgs.add(event.org)
            self._open(pack(event.pack_id), TOKENS, 0)
        elif isinstance(event, PackExpired):
            self.packs[event.pack_id].expired = True
        elif isinstance(event, BudgetSet):
            if event.limit is None:
                self.budgets.pop((event.scope, event.period), None)
            else:
                self.budgets[(event.scope, event.period)] = event.limit
        elif isinstance(event, HoldPlaced):
            self.holds[event.request_id] = event
            for key in event.budget_keys:
                self.budget_held[key] = self.budget_held.get(key, 0) + event.money
        elif isinstance(event, HoldResolved):
            hold = self.holds.pop(event.request_id)
            self.settled_ids.add(event.request_id)
            for key in hold.budget_keys:
                self.budget_held[key] -= hold.money
                self.budget_spent[key] = self.budget_spent.get(key, 0) + event.charged
        elif isinstance(event, LeaseDrawn):
            self.leases[event.lease_id] = LeaseState(
                event.org, event.instance_id, event.promo, event.cash
            )
        elif isinstance(event, LeaseShrunk):
            lease = self.leases[event.lease_id]  # never closed twice: an open lease
            lease.promo -= event.promo
            lease.cash -= event.cash
            if event.closed and not lease.closed:
                lease.closed = True
                self.closed_leases.append(event.lease_id)
                if len(self.closed_leases) > self.settled_ids.capacity:
                    del self.leases[self.closed_leases.popleft()]
        for transfer in transfers:
            for account in (transfer.debit, transfer.credit):
                if account not in self.units:  # system accounts open on first use
                    self._open(account, self.unit_of(account), None)
            self.balances[transfer.debit] -= transfer.amount
            self.balances[transfer.credit] += transfer.amount

    def unit_of(self, account: str) -> str:
        """The unit of ``account`` (a currency code, or ``tokens``)."""
        if account in self.units:
            return self.units[account]
        kind, _, rest = account.partition(":")
        if kind == "system":
            return rest.partition(":")[0]
        if kind == "pack":
            return TOKENS
        raise ValueError(f"transfer to an account never opened: {account!r}")

    def _open(self, account: str, unit: str, floor: int | None) -> None:
        self.balances.setdefault(account, 0)
        self.units[account] = unit
        if floor is not None:
            self.floors.setdefault(account, floor)

    # -- deciding --

    def execute(self, command: Command) -> tuple[Event, ...]:
        """Decide ``command``, apply the resulting events and return them for the store."""
        events = self.decide(command)
        for event in events:
            self.apply(event)
        return events

    def decide(self, command: Command) -> tuple[Event, ...]:
        """The events ``command`` produces, without applying them; raises when refused."""
        if type(command) is SpendLease:  # the hot path: one per leased request
            return self._spend(command)
        if isinstance(command, OpenOrg):
            _nonnegative(command.credit_limit, "credit_limit")
            if command.org in self.orgs:
                return ()
            return (OrgOpened(command.org, command.currency, command.credit_limit),)
        if isinstance(command, SetCreditLimit):
            org = self._org(command.org)
            _nonnegative(command.credit_limit, "credit_limit")
            if self.balance(cash(command.org)) < -command.credit_limit:
                raise InvalidRequest("the balance is below that credit limit", "credit_limit")
            return (CreditLimitSet(org.org, command.credit_limit),)
        if isinstance(command, TopUp | GrantPromo):
            return self._fund(command)
        if isinstance(command, GrantPack):
            self._org(command.org)
            _positive(command.tokens, "tokens")
            if command.pack_id in self.packs:
                return ()
            grant = Transfer(system(TOKENS, "issued"), pack(command.pack_id), command.tokens)
            return (
                PackGranted(command.pack_id, command.org, frozenset(command.models),
                            command.expires_at_ms, (grant,)),
            )  # fmt: skip
        if isinstance(command, ExpirePacks):
            expired = system(TOKENS, "expired")
            return tuple(
                PackExpired(pid, _move(pack(pid), expired, self.balance(pack(pid))))
                for pid, state in sorted(self.packs.items())
                if not state.expired and state.expires_at_ms <= command.at_ms
            )
        if isinstance(command, SetBudget):
            if command.limit is not None:
                _nonnegative(command.limit, "limit")
            return (BudgetSet(command.scope, command.period, command.limit),)
        if isinstance(command, Hold):
            return self._hold(command)
        if isinstance(command, Settle | Release):
            return self._resolve(command)
        if isinstance(command, DrawLease):
            return self._draw(command)
        if isinstance(command, SpendLease):
            return self._spend(command)
        if isinstance(command, ShrinkLease):
            return self._shrink(command)
        raise TypeError(f"not a ledger command: {command!r}")

    def _org(self, org: str) -> OrgOpened:
        try:
            return self.orgs[org]
        except KeyError:
            raise NotFound(f"No organization '{org}'.") from None

    def _fund(self, command: TopUp | GrantPromo) -> tuple[Event, ...]:
        org = self._org(command.org)
        _positive(command.amount, "amount")
        funding_id = command.topup_id if isinstance(command, TopUp) else command.grant_id
        if funding_id in self.funding_ids:
            return ()
        currency = org.currency.value
        if isinstance(command, TopUp):
            transfer = Transfer(system(currency, "external"), cash(org.org), command.amount)
        else:
            transfer = Transfer(system(currency, "promotions"), promo(org.org), command.amount)
        return (Funded(funding_id, (transfer,)),)

    def _hold(self, command: Hold) -> tuple[Event, ...]:
        if command.request_id in self.holds or self.settled(command.request_id):
            return ()
        org = self._org(command.org)
        applied = command.quote.applied
        if applied.currency is not org.currency:
            raise ValueError(f"price in {applied.currency}, organization pays in {org.currency}")
        transfers: list[Transfer] = []
        packs: list[tuple[str, int]] = []
        wanted = command.quote.tokens
        for pid in self._usable_packs(org.org, applied.price.model, command.at_ms):
            take = min(wanted, self.balance(pack(pid)))
            if take:
                packs.append((pid, take))
                transfers.append(Transfer(pack(pid), held_tokens(org.org), take))
                wanted -= take
        money = command.quote.cash_for(wanted)
        budget_keys = self._check_budgets(command, money)
        from_promo = min(money, self.balance(promo(org.org)))
        from_cash = money - from_promo
        if from_cash > self.available(org.org):
            raise InsufficientBalance(
                org.org, money, self.available(org.org) + from_promo, org.currency.value
            )
        transfers += _move(promo(org.org), held(org.org), from_promo)
        transfers += _move(cash(org.org), held(org.org), from_cash)
        event = HoldPlaced(command.request_id, org.org, applied, tuple(packs), from_promo,
                           from_cash, budget_keys, tuple(transfers))  # fmt: skip
        return (event,)

    def _usable_packs(self, org: str, model: str, at_ms: int) -> list[str]:
        usable = [
            (state.expires_at_ms, pid)
            for pid, state in self.packs.items()
            if state.org == org and model in state.models and not state.expired
            and state.expires_at_ms > at_ms and self.balance(pack(pid)) > 0
        ]  # fmt: skip
        return [pid for _, pid in sorted(usable)]

    def _check_budgets(self, command: Hold, money: int) -> tuple[tuple[str, str], ...]:
        keys: list[tuple[str, str]] = []
        currency = self.orgs[command.org].currency.value
        for scope in command.budget_scopes:
            for period in BudgetPeriod:
                limit = self.budgets.get((scope, period))
                if limit is None:
                    continue
                key = (scope, f"{period.value}:{period_key(period, command.at_ms)}")
                used = self.budget_spent.get(key, 0) + self.budget_held.get(key, 0)
                if used + money > limit:
                    raise BudgetExceeded(scope, period.value, limit, currency)
                keys.append(key)
        return tuple(keys)

    def _resolve(self, command: Settle | Release) -> tuple[Event, ...]:
        if self.settled(command.request_id):
            return ()  # settled or released already: at most once
        hold = self.holds.get(command.request_id)
        if hold is None:
            raise KeyError(f"no hold for request {command.request_id!r}")
        usage = command.usage if isinstance(command, Settle) else Usage()
        org = hold.org
        lines = split_usage(usage, hold.applied.price)
        held_pack_tokens = sum(tokens for _, tokens in hold.packs)
        covered, residual = lines.cover(held_pack_tokens)
        transfers: list[Transfer] = []
        to_consume = covered.total
        for pid, tokens in hold.packs:
            used = min(tokens, to_consume)
            to_consume -= used
            transfers += _move(held_tokens(org), system(TOKENS, "consumed"), used)
            back = pack(pid) if not self.packs[pid].expired else system(TOKENS, "expired")
            transfers += _move(held_tokens(org), back, tokens - used)
        charge = hold.applied.charge_micros(residual)
        from_promo = min(charge, hold.promo)
        from_cash = min(charge - from_promo, hold.cash)
        currency = self.orgs[org].currency.value
        revenue = system(currency, "revenue")
        transfers += _move(held(org), revenue, from_promo + from_cash)
        transfers += _move(held(org), promo(org), hold.promo - from_promo)
        transfers += _move(held(org), cash(org), hold.cash - from_cash)
        # Beyond the hold (the prompt estimate was low): promo, then cash down to the
        # floor, then the platform's shortfall account. Never below a floor.
        beyond, shortfall = self._beyond(
            org, charge - from_promo - from_cash, hold.promo - from_promo, hold.cash - from_cash
        )
        transfers += beyond
        event = HoldResolved(command.request_id, isinstance(command, Release), usage,
                             covered.total, charge, shortfall, tuple(transfers))  # fmt: skip
        return (event,)

    def _beyond(
        self, org: str, extra: int, promo_back: int, cash_back: int
    ) -> tuple[list[Transfer], int]:
        """The transfers that pay ``extra`` micros of a charge beyond what was set aside
        (promo, then cash down to its floor, counting what this settlement gives back
        first), and the shortfall nobody could pay."""
        if extra <= 0:  # the common case: the hold or the reservation covered it
            return [], 0
        currency = self.orgs[org].currency.value
        revenue = system(currency, "revenue")
        extra_promo = min(extra, self.balance(promo(org)) + promo_back)
        cash_after = self.balance(cash(org)) + cash_back
        extra_cash = min(extra - extra_promo, max(0, cash_after - self.floors[cash(org)]))
        shortfall = extra - extra_promo - extra_cash
        transfers = [
            *_move(promo(org), revenue, extra_promo),
            *_move(cash(org), revenue, extra_cash),
            *_move(system(currency, "shortfall"), revenue, shortfall),
        ]
        return transfers, shortfall

    # -- leases --

    def _draw(self, command: DrawLease) -> tuple[Event, ...]:
        if command.lease_id in self.leases:
            return ()
        org = self._org(command.org)
        _positive(command.at_least, "at_least")
        if not 0 < command.share_bp <= 10_000:
            raise InvalidRequest("share_bp must be in 1..10000", "share_bp")
        may_spend = self.may_spend(org.org)
        grant = min(command.want, max(0, may_spend) * command.share_bp // 10_000)
        if grant < command.at_least:
            raise InsufficientBalance(org.org, command.at_least, may_spend, org.currency.value)
        from_promo = min(grant, self.balance(promo(org.org)))
        from_cash = grant - from_promo
        transfers = (
            *_move(promo(org.org), leased_promo(org.org), from_promo),
            *_move(cash(org.org), leased(org.org), from_cash),
        )
        return (
            LeaseDrawn(command.lease_id, org.org, command.instance_id, from_promo, from_cash,
                       transfers),
        )  # fmt: skip

    def _spend(self, command: SpendLease) -> tuple[Event, ...]:
        if command.request_id in self.holds or self.settled(command.request_id):
            return ()  # held (settled by ``Settle``), or settled already: at most once
        lease = self.leases.get(command.lease_id)
        if lease is None:
            raise KeyError(f"no lease {command.lease_id!r}")
        org = lease.org
        if command.applied.currency is not self.orgs[org].currency:
            raise ValueError(f"price in {command.applied.currency}, lease in another currency")
        lines = split_usage(command.usage, command.applied.price)
        charge = command.applied.charge_micros(lines)
        from_lease = min(charge, command.reserved, lease.left)  # the others' stay theirs
        from_promo = min(from_lease, lease.promo)
        from_cash = from_lease - from_promo
        revenue = system(self.orgs[org].currency.value, "revenue")
        transfers = [
            *_move(leased_promo(org), revenue, from_promo),
            *_move(leased(org), revenue, from_cash),
        ]
        beyond, shortfall = self._beyond(org, charge - from_promo - from_cash, 0, 0)
        transfers += beyond
        event = LeaseSpent(command.request_id, command.lease_id, org, command.usage,
                           command.reserved, from_promo, from_cash, charge, shortfall,
                           tuple(transfers))  # fmt: skip
        return (event,)

    def _shrink(self, command: ShrinkLease) -> tuple[Event, ...]:
        lease = self.leases.get(command.lease_id)
        if lease is None:
            raise KeyError(f"no lease {command.lease_id!r}")
        _nonnegative(command.keep, "keep")
        give = max(0, lease.left - command.keep)
        closing = command.keep == 0
        if lease.closed or (give == 0 and not closing):
            return ()
        back_cash = min(give, lease.cash)
        back_promo = give - back_cash
        transfers = (
            *_move(leased(lease.org), cash(lease.org), back_cash),
            *_move(leased_promo(lease.org), promo(lease.org), back_promo),
        )
        return (LeaseShrunk(command.lease_id, back_promo, back_cash, closing, transfers),)


def _move(debit: str, credit: str, amount: int) -> tuple[Transfer, ...]:
    return (Transfer(debit, credit, amount),) if amount > 0 else ()


def _positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest(f"{name} must be a positive integer", name)


def _nonnegative(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{name} must be a non-negative integer", name)
