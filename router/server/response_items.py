"""What recent `POST /v1/responses` answers produced, kept so a client may refer to it
rather than send it again: each output item by its id (`item_reference` input items, which
the Vercel AI SDK sends for earlier output when `store` is true, its default), and each
response's whole conversation by the response id (`previous_response_id`).

Per API key (one key cannot resolve another's ids), bounded: at most
`server.responses.max_items_per_key` entries and `max_bytes_per_key` bytes of their JSON
(the oldest forgotten first), each kept `server.responses.ttl_s`. A conversation grows with
each `previous_response_id` turn; one whose JSON alone is over the byte bound is not kept,
but a small marker saying so is, so a request naming it gets a 400 that says why rather
than "not found". In this process's memory by default; with `state: {backend:
redis}` in Redis, so any instance resolves what another answered. With Redis unavailable a
lookup raises `StateUnavailable` (the endpoint answers 503 `state_unavailable`) and a write
is skipped with a warning: the answer itself is still served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from router.config.schema import ResponsesConfig, ServerConfig, StateConfig
from router.server.eventlog import owner_hash
from router.state.store import StateUnavailable

log = logging.getLogger("router.server")

# KEYS: the key's order list, its sizes hash (id -> bytes), its byte total. ARGV: max
# entries, max bytes, ttl_s, the entries' key prefix, then id, value pairs. The oldest
# entries past either bound are deleted with their place in the list and their size.
_PUT = """
local max, max_bytes, ttl, base = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
for i = 5, #ARGV, 2 do
  local size = string.len(ARGV[i + 1])
  redis.call('SET', base .. ARGV[i], ARGV[i + 1], 'EX', ttl)
  redis.call('LPUSH', KEYS[1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], size)
  redis.call('INCRBY', KEYS[3], size)
end
while redis.call('LLEN', KEYS[1]) > max
    or tonumber(redis.call('GET', KEYS[3]) or '0') > max_bytes do
  local id = redis.call('RPOP', KEYS[1])
  redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[2], id) or '0'))
  redis.call('HDEL', KEYS[2], id)
  redis.call('DEL', base .. id)
end
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ttl) end
return 1
"""

OMITTED = "omitted_bytes"  # the marker kept for an entry over the byte bound: {OMITTED: n}


def encoded(entries: Mapping[str, Any], max_bytes: int) -> dict[str, bytes]:
    """Each entry as JSON; one over `max_bytes` as the marker that says how big it was."""
    out: dict[str, bytes] = {}
    for entry_id, value in entries.items():
        data = orjson.dumps(value)
        out[entry_id] = data if len(data) <= max_bytes else orjson.dumps({OMITTED: len(data)})
    return out


class ItemStore(Protocol):
    async def put(self, owner: str, entries: Mapping[str, Any]) -> None:
        """Remember `entries` (id -> a JSON value) for the key called `owner`."""
        ...

    async def get(self, owner: str, ids: Sequence[str]) -> dict[str, Any]:
        """The remembered entries of `ids` that `owner` has (unknown ones are absent)."""
        ...

    async def aclose(self) -> None: ...


class _Kept:
    """One key's entries as JSON, oldest first, and their bytes."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.size = 0

    def add(self, entry_id: str, expires: float, data: bytes) -> None:
        self.drop(entry_id)
        self.entries[entry_id] = (expires, data)
        self.size += len(data)

    def drop(self, entry_id: str) -> None:
        old = self.entries.pop(entry_id, None)
        if old is not None:
            self.size -= len(old[1])

    def drop_oldest(self) -> None:
        self.size -= len(self.entries.popitem(last=False)[1][1])


class MemoryItems:
    def __init__(self, cfg: ResponsesConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items, self.max_bytes = cfg.max_items_per_key, cfg.max_bytes_per_key
        self.ttl_s, self.clock = cfg.ttl_s, clock
        self._keys: dict[str, _Kept] = {}

    async def put(self, owner: str, entries: Mapping[str, Any]) -> None:
        kept = self._keys.setdefault(owner, _Kept())
        expires = self.clock() + self.ttl_s
        for entry_id, data in encoded(entries, self.max_bytes).items():
            kept.add(entry_id, expires, data)
        while len(kept.entries) > self.max_items or kept.size > self.max_bytes:
            kept.drop_oldest()

    async def get(self, owner: str, ids: Sequence[str]) -> dict[str, Any]:
        kept = self._keys.get(owner)
        if kept is None:
            return {}
        now = self.clock()
        while kept.entries and next(iter(kept.entries.values()))[0] <= now:
            kept.drop_oldest()  # all share one ttl: the oldest expire first
        return {i: orjson.loads(kept.entries[i][1]) for i in ids if i in kept.entries}

    async def aclose(self) -> None:
        self._keys.clear()


class RedisItems:
    def __init__(self, cfg: ResponsesConfig, state: StateConfig) -> None:
        import redis.asyncio as aioredis

        self.max_items, self.max_bytes = cfg.max_items_per_key, cfg.max_bytes_per_key
        self.ttl_s = max(1, int(cfg.ttl_s))
        self.prefix = state.prefix
        self.timeout_s = state.socket_timeout_s * 2
        self.redis: Any = aioredis.Redis.from_url(
            state.url, socket_connect_timeout=state.connect_timeout_s,
            socket_timeout=state.socket_timeout_s)
        self._put = self.redis.register_script(_PUT)

    def _base(self, owner: str) -> str:
        return f"{self.prefix}ri:{owner_hash(owner)}"

    async def put(self, owner: str, entries: Mapping[str, Any]) -> None:
        base = self._base(owner)
        args: list[Any] = [self.max_items, self.max_bytes, self.ttl_s, base + ":"]
        for entry_id, data in encoded(entries, self.max_bytes).items():
            args += [entry_id, data]
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._put(keys=[base, base + "#sizes", base + "#bytes"], args=args)
        except Exception as exc:
            log.warning("responses: could not remember %d item(s) (Redis unavailable: %r); "
                        "a later item_reference to them answers 400", len(entries), exc)

    async def get(self, owner: str, ids: Sequence[str]) -> dict[str, Any]:
        base = self._base(owner) + ":"
        try:
            async with asyncio.timeout(self.timeout_s):
                values = await self.redis.mget([base + i for i in ids])
        except Exception as exc:
            raise StateUnavailable("redis", f"remembered response items: {exc!r}") from None
        return {i: orjson.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}

    async def aclose(self) -> None:
        await self.redis.aclose()


def item_store(router: Any, settings: ServerConfig) -> ItemStore:
    """Where this server remembers response items: Redis when the state is shared there."""
    loaded = getattr(router, "loaded", None)
    state = loaded.config.state if loaded is not None else None
    if state is not None and state.backend == "redis":
        return RedisItems(settings.responses, state)
    return MemoryItems(settings.responses)
