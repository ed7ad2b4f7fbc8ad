"""The Redis backend of the state interface: shared by router processes, kept across restarts.

Each reserve, settle and lease read is one Lua script, hence atomic. A held key is a hash
(`lease id -> nano-USD`, the field `*` their sum) beside a sorted set `<key>|dl` of the
leases' deadlines; every script that reads a held key first sweeps its expired leases.

Every call is bounded: connect and socket timeouts on the connection, a wait bound on the
pool, and an overall deadline around the command; any failure (refused, reset, timed out)
is raised as `StateUnavailable`. After a failure, calls fail at once for a short back-off
instead of each waiting out the timeout again, so a dead Redis costs requests nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from router.state.store import (
    ONCE_TTL_S,
    TOTAL,
    Admission,
    Booking,
    LimitCheck,
    StateUnavailable,
    Watch,
    WatchResult,
    new_lease,
)

T = TypeVar("T")

_SWEEP = """
local function sweep(key, now)
  local dl = key .. '|dl'
  local gone = redis.call('ZRANGEBYSCORE', dl, '-inf', now)
  for _, lid in ipairs(gone) do
    local n = tonumber(redis.call('HGET', key, lid) or '0')
    if n ~= 0 then redis.call('HINCRBY', key, '*', -n) end
    redis.call('HDEL', key, lid)
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', dl, '-inf', now) end
  local h = tonumber(redis.call('HGET', key, '*') or '0')
  if h < 0 then h = 0 end
  return h
end
"""

# ARGV: amount, lease seconds, up to, now, lease id, then per check (n spent keys, limit);
# KEYS per check: the held key, then its spent keys. Returns {failed index or 0, reserved,
# spent..., held...}.
_RESERVE = _SWEEP + """
local amount, now, lid = tonumber(ARGV[1]), tonumber(ARGV[4]), ARGV[5]
local lease_s = tonumber(ARGV[2])
local reserved = math.max(amount, tonumber(ARGV[3]))
local n = (#ARGV - 5) / 2
local k, failed, spent, held = 1, 0, {}, {}
for i = 1, n do
  local nkeys, limit = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local h = sweep(KEYS[k], now)
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
  local ttl = math.ceil(lease_s) + 60
  for i = 1, n do
    local key = KEYS[k2]
    if not seen[key] then
      seen[key] = true
      redis.call('HINCRBY', key, lid, reserved)
      redis.call('HINCRBY', key, '*', reserved)
      redis.call('ZADD', key .. '|dl', now + lease_s, lid)
      for _, x in ipairs({key, key .. '|dl'}) do
        if redis.call('TTL', x) < ttl then redis.call('EXPIRE', x, ttl) end
      end
    end
    k2 = k2 + tonumber(ARGV[4 + 2 * i]) + 1
  end
end
local out = {failed, reserved}
for i = 1, n do out[#out + 1] = spent[i] end
for i = 1, n do out[#out + 1] = held[i] end
return out
"""

# ARGV: amount, n held, n bookings, lease id, final (0/1), once key ('' none), once TTL,
# then per booking (field, amount, ttl), then per watch (n spent keys, threshold or -1, ttl).
# KEYS: held keys, booking keys, then per watch the flag key and its spent keys. Returns
# per watch {spent, crossed}.
_SETTLE = """
local amount, lid, final = tonumber(ARGV[1]), ARGV[4], ARGV[5] == '1'
local nheld, nbook = tonumber(ARGV[2]), tonumber(ARGV[3])
local fresh = ARGV[6] == '' or redis.call('SET', ARGV[6], '1', 'NX', 'EX', ARGV[7])
local a = 8
if fresh then
  for i = 1, nheld do
    local key = KEYS[i]
    local n = tonumber(redis.call('HGET', key, lid) or 'x')
    if n then
      local take = amount
      if final or take >= n then take = n end
      redis.call('HINCRBY', key, '*', -take)
      if take >= n then
        redis.call('HDEL', key, lid)
        redis.call('ZREM', key .. '|dl', lid)
      else
        redis.call('HINCRBY', key, lid, -take)
      end
    end
  end
  for i = 1, nbook do
    local key = KEYS[nheld + i]
    redis.call('HINCRBY', key, '*', ARGV[a + 1])
    redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
    redis.call('EXPIRE', key, ARGV[a + 2])
    a = a + 3
  end
else
  a = a + 3 * nbook
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

# ARGV: now. KEYS: held keys. Returns each key's unexpired leases, summed.
_HELD = _SWEEP + """
local out = {}
for i = 1, #KEYS do out[i] = sweep(KEYS[i], tonumber(ARGV[1])) end
return out
"""

BACKOFF_S = 1.0  # after a failure, calls fail at once for this long


def store_name(url: str) -> str:
    """`redis 127.0.0.1:6379/0`: the store, without credentials."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    return f"redis {parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{db}"


class RedisState:
    """State in Redis. Checks and bookings run as Lua scripts, so each reserve and each
    settle is atomic; every call is bounded by the configured timeouts."""

    def __init__(self, url: str, max_connections: int = 32, *, connect_timeout_s: float = 0.5,
                 socket_timeout_s: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.name = store_name(url)
        self.clock = clock
        # The whole call: connect, a wait for a pooled connection, the command and reply.
        self._bound_s = connect_timeout_s + 2 * socket_timeout_s
        self._down_until = 0.0
        # A blocking pool: a burst of concurrent requests waits (bounded) for a connection
        # instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout_s,
            decode_responses=True, socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            # One immediate retry on a broken connection (a pooled one Redis closed when it
            # restarted); none on a timeout: a hung Redis is reported, not waited out again.
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
            retry_on_timeout=False)
        self._pool: Any = pool
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._held = self._redis.register_script(_HELD)

    @property
    def available(self) -> bool:
        """False during the back-off after a failed call."""
        return time.monotonic() >= self._down_until

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        import redis

        if not self.available:
            raise StateUnavailable(self.name, "did not answer moments ago")
        try:
            async with asyncio.timeout(self._bound_s):
                result = await work()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + BACKOFF_S
            reason = "timed out" if isinstance(exc, TimeoutError | redis.TimeoutError) else (
                type(exc).__name__)
            raise StateUnavailable(self.name, reason) from None
        return result

    async def ping(self) -> bool:
        """One bounded round trip, ignoring the back-off (the journal's probe)."""
        self._down_until = 0.0
        try:
            await self._call(self._redis.ping)
        except StateUnavailable:
            return False
        return True

    async def reserve(self, checks: Sequence[LimitCheck], amount: int, hold_ttl_s: float,
                      up_to: int | None = None, *, lease: str | None = None) -> Admission:
        lid = lease or new_lease()
        if not checks:
            return Admission(None, (), (), max(amount, up_to or 0), lid)
        keys: list[str] = []
        args: list[int | float | str] = [amount, hold_ttl_s, up_to or 0, self.clock(), lid]
        for c in checks:
            keys.append(c.held_key)
            keys.extend(c.spent_keys)
            args += [len(c.spent_keys), c.limit]
        raw = await self._call(lambda: self._reserve(keys=keys, args=args))
        out = [int(x) for x in raw]
        n = len(checks)
        failed = out[0] - 1 if out[0] else None
        return Admission(failed, tuple(out[2:2 + n]), tuple(out[2 + n:]),
                         0 if failed is not None else out[1], lid)

    async def settle(self, held_keys: Sequence[str], amount: int, bookings: Sequence[Booking],
                     watches: Sequence[Watch], *, lease: str | None = None,
                     once: str | None = None, final: bool = True) -> list[WatchResult]:
        held = list(dict.fromkeys(held_keys)) if lease else []
        keys: list[str] = [*held, *(b.key for b in bookings)]
        args: list[int | str] = [amount, len(held), len(bookings), lease or "",
                                 int(final), once or "", ONCE_TTL_S]
        for b in bookings:
            args += [b.field, b.amount, b.ttl_s]
        for w in watches:
            keys.append(w.flag_key)
            keys.extend(w.spent_keys)
            args += [len(w.spent_keys), -1 if w.threshold is None else w.threshold, w.ttl_s]
        if not keys:
            return []
        raw = await self._call(lambda: self._settle(keys=keys, args=args))
        out = [int(x) for x in raw]
        return [WatchResult(out[i], bool(out[i + 1])) for i in range(0, len(out), 2)]

    async def totals(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, TOTAL)
                return list(await pipe.execute())

        return [int(v or 0) for v in await self._call(read)]

    async def held(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        raw = await self._call(lambda: self._held(keys=list(keys), args=[self.clock()]))
        return [max(0, int(v)) for v in raw]

    async def scan(self, prefix: str, suffix: str) -> dict[str, dict[str, int]]:
        async def read() -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            async for key in self._redis.scan_iter(match=glob_escape(prefix) + "*"
                                                   + glob_escape(suffix), count=500):
                fields = await self._redis.hgetall(key)
                if fields:
                    out[key] = {f: int(v) for f, v in fields.items()}
            return out

        return await self._call(read)

    async def scan_held(self, prefix: str) -> list[str]:
        """The held keys (not their deadline sets) starting with `prefix`."""
        async def read() -> list[str]:
            return [k async for k in self._redis.scan_iter(match=glob_escape(prefix) + "*",
                                                            count=500)
                    if not k.endswith("|dl")]

        return await self._call(read)

    async def write_hashes(self, items: Mapping[str, Mapping[str, str]], ttl_s: int) -> None:
        """Set each hash's fields (the shared breakers' state), with a TTL."""
        async def write() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, fields in items.items():
                    pipe.hset(key, mapping=dict(fields))
                    pipe.expire(key, ttl_s)
                await pipe.execute()

        await self._call(write)

    async def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        async def read() -> list[dict[str, str]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return list(await pipe.execute())

        return await self._call(read) if keys else []

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


__all__ = ["BACKOFF_S", "RedisState", "glob_escape", "store_name"]
