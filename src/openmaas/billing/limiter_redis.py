"""Rate limits shared by every gateway process, on one machine or many, in Redis.

:class:`RedisLimiter` runs the transition of :class:`~openmaas.core.limits.LimitState` as
three Lua scripts, each atomic in Redis (no other command runs while one does):

* **admit** checks every counter of every scope (RPM and TPM windows, concurrency slots)
  and, only when all have room, charges them all and records the admission; a refusal by
  any counter leaves nothing reserved anywhere. It returns what each counter held, and the
  decision, refusal and ``x-ratelimit-*`` headers are built from that by the same functions
  as the in-process backend (:func:`~openmaas.core.limits.counter_caps`,
  :func:`~openmaas.core.limits.strictest`, :func:`~openmaas.core.limits.rate_limited`);
* **end** settles (corrects TPM to the actual tokens) or releases (refunds the reservation)
  an admission and frees its slots, once: the admission's record is deleted by the first
  call, and a later one finds none and changes nothing;
* **renew** extends the leases of this process's slots while their requests run.

Keys (``prefix`` first, ``openmaas:rl:`` by default; then :data:`KEY_VERSION`, but for
``clock``):

* ``v2:r:<scope>:<model>`` / ``v2:t:<scope>:<model>``: a window counter, a hash of bucket
  index to usage (the window and bucket sizes of the in-process backend) plus its running
  total ``n``, its oldest bucket ``o`` and its newest ``m``. A script reads those and the
  one bucket it changes with one ``HMGET`` and writes them with one ``HSET``: its cost does
  not grow with the buckets in the window. Buckets that left the window since the last visit
  are deleted then (usually none, at most a window's worth after an idle gap), and the key
  expires ``window + 2 buckets`` after its newest bucket began;
* ``v2:c:<scope>:<model>``: concurrency slots, a sorted set of admission ids scored by the
  end of their lease;
* ``v2:a:<id>``: an open admission's reservation, deleted when it ends, or expiring after
  :data:`RECORD_TTL_MS`;
* ``clock``: the latest time any process has used, so that time never goes back for the
  counters even when the gateways' clocks differ a little (each call uses the later of its
  own clock and this one, as :class:`LimitState` does with one clock).

**A process that dies** leaves its slots taken only until their lease ends: slots are
leased for ``lease_ms`` (:data:`SLOT_LEASE_MS`, 30 s) and renewed every third of that while
their requests run, so a killed process's slots are reclaimed at most ``lease_ms`` after its
last renewal. Its TPM reservations stay charged until they leave the window (they were
reserved; counting them is the safe side), and its admission records expire.

**When Redis is unreachable** (refused, timed out), ``failure_mode`` decides: ``"closed"``
refuses every request that has a limit to check with
:class:`~openmaas.core.errors.UpstreamUnavailable` (HTTP 503 in the OpenAI protocol, 529
``overloaded_error`` in Anthropic's, 429 code 1305 in Zhipu's: retry later), ``"open"``
admits it without counting. Requests without limits never touch Redis. After a failure the
limiter does not call Redis again for :data:`RETRY_MS` (the requests in between are decided
by the failure mode at once), then tries again; :meth:`RedisLimiter.health` pings Redis and
reports the state (``/readyz``). Settling or releasing never raises: if Redis cannot be
reached then, the admission's slots are reclaimed when their lease ends. Every script is
safe to run twice, so a call that loses its connection is tried once more on a fresh one.

Redis is reached through ``billing/resp.py``: one pipelined connection per limiter.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from openmaas.billing.limiter import LimiterHealth
from openmaas.billing.resp import RedisClient, RedisUnreachable, Script
from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import UpstreamUnavailable
from openmaas.core.limits import (
    BUCKET_MS,
    CONCURRENCY_RETRY_MS,
    WINDOW_MS,
    Admission,
    CounterKey,
    Decision,
    Dimension,
    Refusal,
    counter_caps,
    new_admission,
    rate_limited,
    strictest,
)
from openmaas.core.tiers import Scope

__all__ = ["FailureMode", "RedisLimiter"]

log = logging.getLogger("openmaas.billing.limiter")

FailureMode = Literal["closed", "open"]

SLOT_LEASE_MS = 30_000
"""How long a concurrency slot is held without renewal: the bound on a dead process's slots."""
RECORD_TTL_MS = 3_600_000
"""How long an admission's record lives; a request still open after that settles as a no-op
(its slots are still freed)."""
RETRY_MS = 1_000
"""After Redis failed, how long requests are decided by the failure mode without trying it."""
TIMEOUT_S = 1.0
"""Connect and command timeout: past it Redis counts as unreachable. One connection carries
every call of a limiter, pipelined (``billing/resp.py``): Redis runs one script at a time,
so more connections would not admit faster, and a burst opens no connection of its own (a
hundred connects at once on a busy machine can take longer than this, which failed a burst
closed)."""

KEY_VERSION = "v2"
"""In every key but ``clock``: the layout of the counters' data. A version that stores them
differently takes a new tag, so that it starts from empty counters instead of misreading an
older version's (they are short-lived: a window, a lease, an admission's record). v2: a
window keeps its running total and its oldest and newest bucket."""

_KIND = {Dimension.REQUESTS: "r", Dimension.TOKENS: "t", Dimension.CONCURRENCY: "c"}

_COMMON = """
local WINDOW = tonumber(ARGV[1])
local BUCKET = tonumber(ARGV[2])
local SPAN = WINDOW / BUCKET
local WINDOW_TTL = WINDOW + 2 * BUCKET

local function clock(key, now)
  local latest = tonumber(redis.call('GET', key) or '0')
  if now ~= nil and now > latest then
    redis.call('SET', key, now)
    return now
  end
  return latest
end

-- A window counter is one hash: a field per bucket index holding its usage (never 0), and
-- n: the sum of every bucket field present, o: no bucket below this index is present,
-- m: the newest bucket present. A visit reads n, o, m and the one bucket it will change
-- in one HMGET and writes them back in one HSET; only the buckets that left the window
-- since the last visit are read and deleted (usually none, never more than SPAN + 1).
-- Returns the counter as seen at now: {key, cur, oldest, total, low, top, at (the usage of
-- bucket index at, or nil)}; with write, the buckets that left the window are deleted
-- (a counter left empty is deleted whole).
local function load(key, now, write, at)
  local cur = math.floor(now / BUCKET)
  local oldest = cur - SPAN
  local meta = redis.call('HMGET', key, 'n', 'o', 'm', at or cur)
  local w = {key = key, cur = cur, oldest = oldest, total = 0, low = oldest, top = nil}
  local low, top = tonumber(meta[2]), tonumber(meta[3])
  if low == nil or top == nil then return w end
  if top < oldest then
    if write then redis.call('DEL', key) end
    return w
  end
  w.total, w.top, w.at = tonumber(meta[1]), top, tonumber(meta[4])
  if low >= oldest then
    w.low = low
    return w
  end
  local fields = {}
  for index = low, oldest - 1 do fields[#fields + 1] = index end
  local vals = redis.call('HMGET', key, unpack(fields))
  local gone = {}
  for i = 1, #fields do
    if vals[i] then
      w.total = w.total - tonumber(vals[i])
      gone[#gone + 1] = fields[i]
    end
  end
  if write then
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
    redis.call('HSET', key, 'n', w.total, 'o', oldest)
  end
  return w
end

-- The buckets of a counter present from low to top, oldest first: {index, usage} pairs.
local function buckets(w)
  local fields, out = {}, {}
  if w.top == nil then return out end
  for index = w.low, w.top do fields[#fields + 1] = index end
  local vals = redis.call('HMGET', w.key, unpack(fields))
  for i = 1, #fields do
    if vals[i] then out[#out + 1] = {fields[i], tonumber(vals[i])} end
  end
  return out
end

local function expires_at(index) return (index + SPAN + 1) * BUCKET end

-- Charge the current bucket; w was loaded with at = nil (the current bucket).
local function charge(w, amount)
  if amount <= 0 then return end
  w.total = w.total + amount
  if w.top == nil or w.cur > w.top then w.top = w.cur end
  redis.call('HSET', w.key, w.cur, (w.at or 0) + amount, 'n', w.total, 'o', w.low, 'm', w.top)
  -- the key outlives its newest bucket's window: set once per new bucket
  if w.at == nil then redis.call('PEXPIRE', w.key, WINDOW_TTL) end
  w.at = (w.at or 0) + amount
end

-- Give back up to amount of bucket index; w was loaded with at = index.
local function refund(w, index, amount)
  if amount <= 0 or index < w.low or w.top == nil or index > w.top then return end
  local held = w.at or 0
  local give = math.min(held, amount)
  if give <= 0 then return end
  w.total = w.total - give
  if w.total <= 0 then
    redis.call('DEL', w.key)
    w.total, w.top = 0, nil
  elseif give < held then
    redis.call('HSET', w.key, index, held - give, 'n', w.total)
  else
    redis.call('HDEL', w.key, index)
    if index == w.top then
      w.top = nil
      if index > w.low then
        local fields = {}
        for i = index - 1, w.low, -1 do fields[#fields + 1] = i end
        local vals = redis.call('HMGET', w.key, unpack(fields))
        for i = 1, #fields do
          if vals[i] then
            w.top = fields[i]
            break
          end
        end
      end
    end
    if w.top == nil then
      redis.call('HSET', w.key, 'n', w.total)
    else
      redis.call('HSET', w.key, 'n', w.total, 'm', w.top)
    end
  end
end
"""

# KEYS: clock, record, counters...; ARGV: window, bucket, now, reserve, id, lease end,
# slot key ttl, record ttl, concurrency retry, then (kind, limit) per counter.
# Returns {admitted, now, then (used, wait, used after, reset after) per counter}; wait -1:
# never (the request alone is over the limit). Run again for an admission already recorded
# (a retry after a lost reply), it charges nothing more and answers admitted.
_ADMIT = (
    _COMMON
    + """
local now = clock(KEYS[1], tonumber(ARGV[3]))
local reserve = tonumber(ARGV[4])
local id = ARGV[5]
local lease_end = tonumber(ARGV[6])
local slot_ttl = tonumber(ARGV[7])
local record_ttl = tonumber(ARGV[8])
local busy_retry = tonumber(ARGV[9])
local again = redis.call('EXISTS', KEYS[2]) == 1
local n = #KEYS - 2
local rows, windows, admitted = {}, {}, true
for i = 1, n do
  local key, kind, limit = KEYS[i + 2], ARGV[8 + 2 * i], tonumber(ARGV[9 + 2 * i])
  local amount = 1
  if kind == 't' then amount = reserve end
  local used, wait
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    used = redis.call('ZCARD', key)
    if amount > limit then wait = -1
    elseif used + amount <= limit then wait = 0
    else wait = busy_retry end
  else
    local w = load(key, now, true)
    windows[i] = w
    used = w.total
    if amount > limit then wait = -1
    elseif used + amount <= limit then wait = 0
    else
      wait = -1
      local left = used
      for _, bucket in ipairs(buckets(w)) do
        left = left - bucket[2]
        if left + amount <= limit then
          wait = expires_at(bucket[1]) - now
          break
        end
      end
    end
  end
  if again then wait = 0 end
  if wait ~= 0 then admitted = false end
  rows[i] = {used, wait, amount}
end
if admitted and not again then
  for i = 1, n do
    local key, kind = KEYS[i + 2], ARGV[8 + 2 * i]
    if kind == 'c' then
      redis.call('ZADD', key, lease_end, id)
      redis.call('PEXPIRE', key, slot_ttl)
    else
      charge(windows[i], rows[i][3])
    end
  end
  redis.call('SET', KEYS[2], reserve .. ':' .. math.floor(now / BUCKET), 'PX', record_ttl)
end
local out = {admitted and 1 or 0, now}
for i = 1, n do
  local used, wait, amount = rows[i][1], rows[i][2], rows[i][3]
  local after, reset = used, 0
  local w = windows[i]
  if w ~= nil then
    if w.top ~= nil then reset = expires_at(w.top) - now end
    if admitted and amount > 0 and not again then
      after = used + amount
      reset = expires_at(w.cur) - now
    end
  end
  out[#out + 1] = used
  out[#out + 1] = wait
  out[#out + 1] = after
  out[#out + 1] = reset
end
return out
"""
)

# KEYS: clock, record, token counters..., slot keys...; ARGV: window, bucket, now ('' for a
# release: the latest time seen), actual tokens ('' for a release), id, number of token
# counters. Returns 1 when it ended the admission, 0 when it had ended. The record holds
# "<reserved tokens>:<bucket index of the reservation>".
_END = (
    _COMMON
    + """
local id = ARGV[5]
local tokens = tonumber(ARGV[6])
for i = 3 + tokens, #KEYS do redis.call('ZREM', KEYS[i], id) end
local record = redis.call('GET', KEYS[2])
if not record then return 0 end
redis.call('DEL', KEYS[2])
local sep = string.find(record, ':', 1, true)
local reserved = tonumber(string.sub(record, 1, sep - 1))
local index = tonumber(string.sub(record, sep + 1))
local now = clock(KEYS[1], tonumber(ARGV[3]))
local delta = -reserved
if ARGV[4] ~= '' then delta = tonumber(ARGV[4]) - reserved end
if delta < 0 then
  for i = 3, 2 + tokens do refund(load(KEYS[i], now, true, index), index, -delta) end
elseif delta > 0 then
  for i = 3, 2 + tokens do charge(load(KEYS[i], now, true), delta) end
end
return 1
"""
)

# KEYS: clock, counter; ARGV: window, bucket, now, kind. Returns the counter's usage, changing
# nothing.
_USED = (
    _COMMON
    + """
local now = math.max(clock(KEYS[1], nil), tonumber(ARGV[3]))
if ARGV[4] == 'c' then return redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') end
return load(KEYS[2], now, false).total
"""
)

# KEYS: slot keys; ARGV: lease end, slot key ttl, then the admission id of each key.
_RENEW = """
local renewed = 0
for i = 1, #KEYS do
  renewed = renewed + redis.call('ZADD', KEYS[i], 'XX', 'CH', ARGV[1], ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return renewed
"""

_UNREACHABLE = (RedisUnreachable, OSError)


class RedisLimiter:
    """Limits shared by every process that uses the same Redis (and ``prefix``).

    ``clock`` times the leases' renewal (the admissions' own times come from the caller, as
    with the in-process backend); ``lease_ms`` is how long a slot outlives a dead process.
    Call :meth:`aclose` when done (the composition root does).
    """

    remote = True

    def __init__(
        self,
        url: str,
        *,
        failure_mode: FailureMode = "closed",
        clock: Clock | None = None,
        prefix: str = "openmaas:rl:",
        window_ms: int = WINDOW_MS,
        bucket_ms: int = BUCKET_MS,
        lease_ms: int = SLOT_LEASE_MS,
        retry_ms: int = RETRY_MS,
    ) -> None:
        if bucket_ms <= 0 or window_ms <= 0 or window_ms % bucket_ms:
            raise ValueError("window_ms must be a positive multiple of bucket_ms")
        if lease_ms <= 0:
            raise ValueError("lease_ms must be positive")
        self.url = url
        self.failure_mode: FailureMode = failure_mode
        self._clock = clock or SystemClock()
        self._prefix = prefix
        self._window_ms = window_ms
        self._bucket_ms = bucket_ms
        self._lease_ms = lease_ms
        self._retry_ms = retry_ms
        self._redis = RedisClient(url, timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S)
        self._admit = Script(self._redis, _ADMIT)
        self._end = Script(self._redis, _END)
        self._renew = Script(self._redis, _RENEW)
        self._used = Script(self._redis, _USED)
        self._open: dict[str, Admission] = {}  # this process's admissions holding slots
        self._renewer: asyncio.Task[None] | None = None
        self._down_until: float | None = None  # monotonic seconds; None: Redis is up
        self._error: str | None = None

    # -- keys -----------------------------------------------------------------------

    def _key(self, counter: CounterKey) -> str:
        scope, model, dimension = counter
        return f"{self._prefix}{KEY_VERSION}:{_KIND[dimension]}:{len(scope)}:{scope}:{model}"

    def _record(self, admission_id: str) -> str:
        return f"{self._prefix}{KEY_VERSION}:a:{admission_id}"

    @property
    def _clock_key(self) -> str:
        return f"{self._prefix}clock"

    # -- the protocol ---------------------------------------------------------------

    async def admit(
        self, scopes: Sequence[Scope], model: str, reserve_tokens: int, now_ms: int
    ) -> Admission:
        if reserve_tokens < 0:
            raise ValueError("reserve_tokens must be >= 0")
        checks = counter_caps(scopes, model)
        admission_id = uuid.uuid4().hex
        if not checks:  # nothing to count: Redis is not needed
            return Admission(admission_id, model, reserve_tokens, now_ms, (), ())
        if self._skipping():
            return self._unreachable(model, reserve_tokens, now_ms)
        keys = [self._clock_key, self._record(admission_id)]
        args: list[Any] = [
            self._window_ms,
            self._bucket_ms,
            now_ms,
            reserve_tokens,
            admission_id,
            now_ms + self._lease_ms,
            2 * self._lease_ms,
            RECORD_TTL_MS,
            CONCURRENCY_RETRY_MS,
        ]
        for key, limit in checks:
            keys.append(self._key(key))
            args += [_KIND[key[2]], limit]
        try:
            reply = await self._call(self._admit, keys, args)
        except _UNREACHABLE as exc:
            self._failed(exc)
            return self._unreachable(model, reserve_tokens, now_ms)
        self._recovered()
        decision = self._decision(checks, reserve_tokens, reply, admission_id, model)
        if decision.admission is None:
            raise rate_limited(decision)
        if decision.admission.concurrency_counters:
            self._open[admission_id] = decision.admission
            self._ensure_renewer()
        return decision.admission

    def _decision(
        self,
        checks: list[tuple[CounterKey, int]],
        reserve_tokens: int,
        reply: list[int],
        admission_id: str,
        model: str,
    ) -> Decision:
        """The script's counts made into the decision :class:`LimitState` would take."""
        admitted, now = bool(reply[0]), int(reply[1])
        refusal: Refusal | None = None
        retry_ms = 0
        windows: list[tuple[Dimension, int, int, int]] = []
        for i, (key, limit) in enumerate(checks):
            used, wait, after, reset = (int(v) for v in reply[2 + 4 * i : 6 + 4 * i])
            amount = reserve_tokens if key[2] is Dimension.TOKENS else 1
            if wait != 0:
                retry_ms = max(retry_ms, self._window_ms if wait < 0 else wait)
                if refusal is None:
                    refusal = Refusal(key[2], key[0], key[1], limit, used, amount, 0, wait < 0)
            if key[2] is not Dimension.CONCURRENCY:
                windows.append((key[2], limit, after, reset))
        requests, tokens = strictest(windows)
        if not admitted:
            assert refusal is not None
            return Decision(None, replace(refusal, retry_after_ms=retry_ms), requests, tokens)
        admission = new_admission(
            admission_id, model, reserve_tokens, now, checks, requests, tokens
        )
        return Decision(admission, None, requests, tokens)

    async def settle(self, admission: Admission, actual_tokens: int, now_ms: int) -> None:
        if actual_tokens < 0:
            raise ValueError("actual_tokens must be >= 0")
        await self._finish(admission, now_ms, actual_tokens)

    async def release(self, admission: Admission) -> None:
        await self._finish(admission, None, None)

    async def _finish(self, admission: Admission, now_ms: int | None, actual: int | None) -> None:
        self._open.pop(admission.id, None)  # no more renewals, whatever happens next
        if not admission.token_counters and not admission.concurrency_counters:
            return  # nothing was counted (no limits, or admitted while Redis was down)
        keys = [self._clock_key, self._record(admission.id)]
        keys += [self._key(k) for k in admission.token_counters]
        keys += [self._key(k) for k in admission.concurrency_counters]
        args: list[Any] = [
            self._window_ms,
            self._bucket_ms,
            "" if now_ms is None else now_ms,
            "" if actual is None else actual,
            admission.id,
            len(admission.token_counters),
        ]
        try:
            await self._call(self._end, keys, args)
        except _UNREACHABLE as exc:
            self._failed(exc)
            log.warning(
                "rate limiter: could not end admission %s in Redis (%s); its slots are "
                "reclaimed when their lease ends",
                admission.id,
                exc,
            )
            return
        self._recovered()

    async def _call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script``; after a connection failure, once more on a fresh connection.

        Every script is safe to run twice (an admission already recorded is not charged
        again; ending one deletes its record first; renewing sets the same lease), so a
        reply lost with its connection is recovered, and connections that a restarted
        Redis closed while idle are replaced instead of failing one request each.
        """
        try:
            return await script(keys=keys, args=args)
        except _UNREACHABLE:  # the client dropped the connection: the retry opens another
            return await script(keys=keys, args=args)

    # -- leases ---------------------------------------------------------------------

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        interval = self._lease_ms / 3000
        while self._open:
            await asyncio.sleep(interval)
            await self.renew()

    async def renew(self) -> int:
        """Extend the lease of every slot this process holds; returns how many were renewed
        (a slot whose lease had already ended is not taken back). Runs every third of the
        lease while any is held; public for tests."""
        keys: list[str] = []
        ids: list[str] = []
        for admission in list(self._open.values()):
            for counter in admission.concurrency_counters:
                keys.append(self._key(counter))
                ids.append(admission.id)
        if not keys:
            return 0
        try:
            args = [self._clock.now_ms() + self._lease_ms, 2 * self._lease_ms, *ids]
            renewed = await self._call(self._renew, keys, args)
        except _UNREACHABLE as exc:
            self._failed(exc)
            return 0
        self._recovered()
        return int(renewed)

    # -- failures -------------------------------------------------------------------

    def _skipping(self) -> bool:
        """Whether Redis failed less than ``retry_ms`` ago (then it is not tried)."""
        return self._down_until is not None and self._clock.monotonic() < self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            log.error(
                "rate limiter: Redis at %s is unreachable (%s); failing %s",
                self._redis.address,
                exc,
                self.failure_mode,
            )
        self._error = str(exc) or type(exc).__name__
        self._down_until = self._clock.monotonic() + self._retry_ms / 1000

    def _recovered(self) -> None:
        if self._down_until is not None:
            log.warning("rate limiter: Redis at %s is reachable again", self._redis.address)
        self._down_until = None
        self._error = None

    def _unreachable(self, model: str, reserve_tokens: int, now_ms: int) -> Admission:
        if self.failure_mode == "open":
            return Admission(uuid.uuid4().hex, model, reserve_tokens, now_ms, (), ())
        raise UpstreamUnavailable(
            "Rate limits cannot be checked right now: the rate-limit store (Redis) is "
            "unreachable, and this gateway refuses requests it cannot count "
            "(OPENMAAS_REDIS_FAILURE_MODE=closed). Retry after a short delay.",
            deployment="redis",
        )

    async def health(self) -> LimiterHealth:
        """Ping Redis (a success ends an outage at once) and report."""
        try:
            await self._redis.call("PING")
        except _UNREACHABLE as exc:
            self._failed(exc)
        else:
            self._recovered()
        return LimiterHealth(
            backend="redis",
            reachable=self._down_until is None,
            failure_mode=self.failure_mode,
            detail=self._error,
        )

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await self._redis.aclose()

    async def used(self, scope: str, model: str, dimension: Dimension, now_ms: int) -> int:
        """Current usage of one counter at ``now_ms`` (or the latest time seen, if later),
        changing nothing; for tests and metrics."""
        reply = await self._used(
            keys=[self._clock_key, self._key((scope, model, dimension))],
            args=[self._window_ms, self._bucket_ms, now_ms, _KIND[dimension]],
        )
        return int(reply)
