"""The async state interface for shared mutable state, with a memory and a Redis backend.

Spend is what lives here today: integer counters in nano-USD (1e-9 USD, so sums are exact),
grouped in hashes (`field -> int`; the field `*` holds the total, other fields a breakdown
such as per deployment), in-flight reservations per scope, and once-only flags. Every
operation that reads and then writes is one atomic step: one synchronous block in memory,
one Lua script in Redis, so concurrent routers can never both pass the same check.

Keys expire (TTL) so that finished windows clean themselves up; the memory backend expires
them lazily against an injectable clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from router.config.schema import StateConfig

NANO = 1_000_000_000  # nano-USD per USD
TOTAL = "*"  # the hash field that holds a counter's total


def to_nano(usd: float) -> int:
    """USD to nano-USD, rounded up: spend is never under-counted."""
    return math.ceil(usd * NANO - 1e-6) if usd > 0 else 0


def to_usd(nano: int) -> float:
    return nano / NANO


class LimitCheck(NamedTuple):
    """One limit to check on reserve: the spend in `spent_keys` (their totals) plus the
    in-flight reservations in `held_key`, plus the new amount, must stay within `limit`."""

    held_key: str
    spent_keys: tuple[str, ...]
    limit: int


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a reserve: `failed` is the index of the first check that could not
    cover the amount (None: `reserved` was reserved on every check). `spent` and `held` are
    per check, as they were before this reservation."""

    failed: int | None
    spent: tuple[int, ...]
    held: tuple[int, ...]
    reserved: int = 0


class Booking(NamedTuple):
    """Add `amount` to the total of hash `key` and to its field `field`."""

    key: str
    field: str
    amount: int
    ttl_s: int


class Watch(NamedTuple):
    """After booking, read the spend in `spent_keys`; when it is at least `threshold`, set
    the flag `flag_key` (once: the first settle to find it crossed is told so)."""

    spent_keys: tuple[str, ...]
    threshold: int | None
    flag_key: str
    ttl_s: int


@dataclass(frozen=True, slots=True)
class WatchResult:
    spent: int
    crossed: bool


class StateBackend(Protocol):
    async def reserve(self, checks: Sequence[LimitCheck], amount: int, hold_ttl_s: int,
                      up_to: int | None = None) -> Admission:
        """Atomically: if every check can cover `amount`, reserve as much as every check can
        cover up to `up_to` (at least `amount`) on each distinct held key."""
        ...

    async def settle(self, held_keys: Sequence[str], amount: int, bookings: Sequence[Booking],
                     watches: Sequence[Watch]) -> list[WatchResult]:
        """Atomically: release `amount` from each held key, apply the bookings, evaluate the
        watches."""
        ...

    async def totals(self, keys: Sequence[str]) -> list[int]:
        """The total of each hash (0 when absent)."""
        ...

    async def held(self, keys: Sequence[str]) -> list[int]:
        """The in-flight reservations of each held key."""
        ...

    async def scan(self, prefix: str, suffix: str) -> dict[str, dict[str, int]]:
        """Every counter hash whose key starts with `prefix` and ends with `suffix`."""
        ...

    async def aclose(self) -> None: ...


class MemoryState:
    """State in this process. Each operation runs without an await, hence atomically."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._hashes: dict[str, dict[str, int]] = {}
        self._ints: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._ops = 0

    def _alive(self, key: str) -> bool:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self.clock():
            self._hashes.pop(key, None)
            self._ints.pop(key, None)
            del self._expires[key]
            return False
        return True

    def _total(self, key: str) -> int:
        if not self._alive(key):
            return 0
        return self._hashes.get(key, {}).get(TOTAL, 0)

    def _sum(self, keys: Sequence[str]) -> int:
        # Rolling windows sum ~60 mostly absent buckets: the fast path skips them.
        hashes, total = self._hashes, 0
        for key in keys:
            if key in hashes and self._alive(key):
                total += hashes[key].get(TOTAL, 0)
        return total

    def _int(self, key: str) -> int:
        return self._ints.get(key, 0) if self._alive(key) else 0

    def _purge(self) -> None:
        # Lazy expiry only touches keys that are read; sweep now and then to bound memory.
        self._ops += 1
        if self._ops % 1024 == 0:
            now = self.clock()
            for key in [k for k, t in self._expires.items() if t <= now]:
                self._alive(key)

    async def reserve(self, checks: Sequence[LimitCheck], amount: int, hold_ttl_s: int,
                      up_to: int | None = None) -> Admission:
        spent: list[int] = []
        held: list[int] = []
        failed: int | None = None
        reserved = max(amount, up_to or 0)
        for i, check in enumerate(checks):
            s = self._sum(check.spent_keys)
            h = max(0, self._int(check.held_key))
            spent.append(s)
            held.append(h)
            if failed is None and s + h + amount > check.limit:
                failed = i
            reserved = min(reserved, check.limit - s - h)
        if failed is not None:
            return Admission(failed, tuple(spent), tuple(held))
        now = self.clock()
        for key in {c.held_key for c in checks}:
            self._ints[key] = max(0, self._int(key)) + reserved
            self._expires[key] = now + hold_ttl_s
        return Admission(None, tuple(spent), tuple(held), reserved)

    async def settle(self, held_keys: Sequence[str], amount: int, bookings: Sequence[Booking],
                     watches: Sequence[Watch]) -> list[WatchResult]:
        self._purge()
        for key in set(held_keys):
            left = self._int(key) - amount
            if left > 0:
                self._ints[key] = left
            else:
                self._ints.pop(key, None)
                self._expires.pop(key, None)
        now = self.clock()
        for b in bookings:
            self._alive(b.key)  # an expired window starts again from zero
            h = self._hashes.setdefault(b.key, {})
            h[TOTAL] = h.get(TOTAL, 0) + b.amount
            h[b.field] = h.get(b.field, 0) + b.amount
            self._expires[b.key] = now + b.ttl_s
        out: list[WatchResult] = []
        for w in watches:
            s = self._sum(w.spent_keys)
            crossed = False
            if w.threshold is not None and s >= w.threshold and not self._int(w.flag_key):
                self._ints[w.flag_key] = 1
                self._expires[w.flag_key] = now + w.ttl_s
                crossed = True
            out.append(WatchResult(s, crossed))
        return out

    async def totals(self, keys: Sequence[str]) -> list[int]:
        return [self._total(k) for k in keys]

    async def held(self, keys: Sequence[str]) -> list[int]:
        return [max(0, self._int(k)) for k in keys]

    async def scan(self, prefix: str, suffix: str) -> dict[str, dict[str, int]]:
        least = len(prefix) + len(suffix)  # prefix and suffix do not overlap (as in Redis)
        return {k: dict(v) for k, v in list(self._hashes.items())
                if len(k) >= least and k.startswith(prefix) and k.endswith(suffix)
                and self._alive(k)}

    async def aclose(self) -> None:
        return None


# Redis: ARGV[1] amount, ARGV[2] hold TTL, ARGV[3] up to, then per check (n spent keys,
# limit); KEYS per check: the held key, then its spent keys. Returns {failed index or 0,
# reserved, spent..., held...}.
_RESERVE = """
local amount = tonumber(ARGV[1])
local reserved = math.max(amount, tonumber(ARGV[3]))
local n = (#ARGV - 3) / 2
local k, failed, spent, held = 1, 0, {}, {}
for i = 1, n do
  local nkeys, limit = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local h = tonumber(redis.call('GET', KEYS[k]) or '0')
  if h < 0 then h = 0 end
  local s = 0
  for j = 1, nkeys do
    s = s + tonumber(redis.call('HGET', KEYS[k + j], '*') or '0')
  end
  k = k + nkeys + 1
  spent[i], held[i] = s, h
  if failed == 0 and s + h + amount > limit then failed = i end
  reserved = math.min(reserved, limit - s - h)
end
if failed == 0 then
  local seen, k2 = {}, 1
  for i = 1, n do
    local key = KEYS[k2]
    if not seen[key] then
      seen[key] = true
      if tonumber(redis.call('INCRBY', key, reserved)) < reserved then
        redis.call('SET', key, reserved)
      end
      redis.call('EXPIRE', key, ARGV[2])
    end
    k2 = k2 + tonumber(ARGV[2 + 2 * i]) + 1
  end
end
local out = {failed, reserved}
for i = 1, n do out[#out + 1] = spent[i] end
for i = 1, n do out[#out + 1] = held[i] end
return out
"""

# ARGV: amount, n held, n bookings, then per booking (field, amount, ttl), then per watch
# (n spent keys, threshold or -1, ttl). KEYS: held keys, booking keys, then per watch the
# flag key and its spent keys. Returns per watch {spent, crossed}.
_SETTLE = """
local amount = tonumber(ARGV[1])
local nheld, nbook = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, nheld do
  if tonumber(redis.call('DECRBY', KEYS[i], ARGV[1])) <= 0 then redis.call('DEL', KEYS[i]) end
end
local a = 4
for i = 1, nbook do
  local key = KEYS[nheld + i]
  redis.call('HINCRBY', key, '*', ARGV[a + 1])
  redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
  redis.call('EXPIRE', key, ARGV[a + 2])
  a = a + 3
end
local k, out = nheld + nbook + 1, {}
while a <= #ARGV do
  local nkeys, threshold = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local s = 0
  for j = 1, nkeys do s = s + tonumber(redis.call('HGET', KEYS[k + j], '*') or '0') end
  local crossed = 0
  if threshold >= 0 and s >= threshold then
    if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[a + 2]) then crossed = 1 end
  end
  out[#out + 1] = s
  out[#out + 1] = crossed
  k = k + nkeys + 1
  a = a + 3
end
return out
"""


class RedisState:
    """State in Redis: shared by router processes and kept across restarts. Checks and
    bookings run as Lua scripts, so each reserve and each settle is atomic."""

    def __init__(self, url: str, max_connections: int = 32) -> None:
        import redis.asyncio as aioredis

        # A blocking pool: a burst of concurrent requests waits for a connection instead
        # of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, decode_responses=True)
        self._pool: Any = pool
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    async def reserve(self, checks: Sequence[LimitCheck], amount: int, hold_ttl_s: int,
                      up_to: int | None = None) -> Admission:
        if not checks:
            return Admission(None, (), (), max(amount, up_to or 0))
        keys: list[str] = []
        args: list[int] = [amount, hold_ttl_s, up_to or 0]
        for c in checks:
            keys.append(c.held_key)
            keys.extend(c.spent_keys)
            args += [len(c.spent_keys), c.limit]
        out = [int(x) for x in await self._reserve(keys=keys, args=args)]
        n = len(checks)
        failed = out[0] - 1 if out[0] else None
        return Admission(failed, tuple(out[2:2 + n]), tuple(out[2 + n:]),
                         0 if failed is not None else out[1])

    async def settle(self, held_keys: Sequence[str], amount: int, bookings: Sequence[Booking],
                     watches: Sequence[Watch]) -> list[WatchResult]:
        held = list(dict.fromkeys(held_keys))
        keys: list[str] = [*held, *(b.key for b in bookings)]
        args: list[int | str] = [amount, len(held), len(bookings)]
        for b in bookings:
            args += [b.field, b.amount, b.ttl_s]
        for w in watches:
            keys.append(w.flag_key)
            keys.extend(w.spent_keys)
            args += [len(w.spent_keys), -1 if w.threshold is None else w.threshold, w.ttl_s]
        if not keys:
            return []
        out = [int(x) for x in await self._settle(keys=keys, args=args)]
        return [WatchResult(out[i], bool(out[i + 1])) for i in range(0, len(out), 2)]

    async def totals(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, TOTAL)
            values = await pipe.execute()
        return [int(v or 0) for v in values]

    async def held(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        values = await self._redis.mget(list(keys))
        return [max(0, int(v or 0)) for v in values]

    async def scan(self, prefix: str, suffix: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        async for key in self._redis.scan_iter(match=_glob_escape(prefix) + "*"
                                               + _glob_escape(suffix), count=500):
            fields = await self._redis.hgetall(key)
            if fields:
                out[key] = {f: int(v) for f, v in fields.items()}
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def create_state(config: StateConfig, clock: Callable[[], float] = time.time) -> StateBackend:
    if config.backend == "redis":
        return RedisState(config.url)
    return MemoryState(clock)
