"""What recent `POST /v1/responses` answers produced, kept so a client may refer to it
rather than send it again: each output item by its id (`item_reference` input items, which
the Vercel AI SDK sends for earlier output when `store` is true, its default), and each
response's whole conversation by the response id (`previous_response_id`).

Per API key (one key cannot resolve another's ids), bounded: at most
`server.responses.max_items_per_key` entries (the oldest forgotten first), each kept
`server.responses.ttl_s`. In this process's memory by default; with `state: {backend:
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

# KEYS: the key's order list. ARGV: max entries, ttl_s, the entries' key prefix, then id,
# value pairs. The oldest entries past the bound are deleted with their place in the list.
_PUT = """
local max, ttl, base = tonumber(ARGV[1]), ARGV[2], ARGV[3]
for i = 4, #ARGV, 2 do
  redis.call('SET', base .. ARGV[i], ARGV[i + 1], 'EX', ttl)
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
while redis.call('LLEN', KEYS[1]) > max do
  redis.call('DEL', base .. redis.call('RPOP', KEYS[1]))
end
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""


class ItemStore(Protocol):
    async def put(self, owner: str, entries: Mapping[str, Any]) -> None:
        """Remember `entries` (id -> a JSON value) for the key called `owner`."""
        ...

    async def get(self, owner: str, ids: Sequence[str]) -> dict[str, Any]:
        """The remembered entries of `ids` that `owner` has (unknown ones are absent)."""
        ...

    async def aclose(self) -> None: ...


class MemoryItems:
    def __init__(self, cfg: ResponsesConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items, self.ttl_s, self.clock = cfg.max_items_per_key, cfg.ttl_s, clock
        self._keys: dict[str, OrderedDict[str, tuple[float, Any]]] = {}

    async def put(self, owner: str, entries: Mapping[str, Any]) -> None:
        kept = self._keys.setdefault(owner, OrderedDict())
        expires = self.clock() + self.ttl_s
        for item_id, value in entries.items():
            kept.pop(item_id, None)
            kept[item_id] = (expires, value)
        while len(kept) > self.max_items:
            kept.popitem(last=False)

    async def get(self, owner: str, ids: Sequence[str]) -> dict[str, Any]:
        kept = self._keys.get(owner)
        if kept is None:
            return {}
        now = self.clock()
        while kept and next(iter(kept.values()))[0] <= now:  # all share one ttl: oldest first
            kept.popitem(last=False)
        return {i: kept[i][1] for i in ids if i in kept}

    async def aclose(self) -> None:
        self._keys.clear()


class RedisItems:
    def __init__(self, cfg: ResponsesConfig, state: StateConfig) -> None:
        import redis.asyncio as aioredis

        self.max_items, self.ttl_s = cfg.max_items_per_key, max(1, int(cfg.ttl_s))
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
        args: list[Any] = [self.max_items, self.ttl_s, base + ":"]
        for item_id, value in entries.items():
            args += [item_id, orjson.dumps(value)]
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._put(keys=[base], args=args)
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
