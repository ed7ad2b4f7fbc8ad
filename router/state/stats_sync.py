"""Routing statistics shared by every instance on one Redis, merged in the background.

Each instance keeps learning alone, per request, in memory (`StatsRegistry`: no Redis on
the request path). Every `state.stats_sync_s` one task does one pipeline: it writes this
instance's view of each deployment (decayed TTFT and output rate, request and failure
counts) into the hash `stats:<deployment>` under its instance id, reads the other
instances' views, and sets the local estimates to the mean of the fresh views (its own
included), weighted by how many requests each saw since its previous write (plus one).
Views older than three periods are ignored (an instance that stopped). So an instance
routes on what the others observed at most `stats_sync_s` (plus one Redis timeout) ago.
Breaker state needs no merging here: with `state: {backend: redis}` every breaker is
already kept in Redis (`router.resilience.breaker.redis_storage`).

This is the small sync-merge interface over today's `StatsRegistry` (the estimator is being
rewritten); it only reads and writes the registry's public fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from router.config.schema import StateConfig
from router.routing.stats import StatsRegistry

log = logging.getLogger("router.state")


class StatsSync:
    def __init__(self, stats: StatsRegistry, deployments: Iterable[str], cfg: StateConfig,
                 *, instance: str | None = None) -> None:
        import redis.asyncio as aioredis

        self.stats = stats
        self.deployments = tuple(deployments)
        self.prefix = cfg.prefix
        self.period_s = cfg.stats_sync_s
        self.timeout_s = cfg.socket_timeout_s
        self.instance = instance or uuid.uuid4().hex[:12]
        self.redis: Any = aioredis.Redis.from_url(
            cfg.url, socket_connect_timeout=cfg.connect_timeout_s,
            socket_timeout=cfg.socket_timeout_s)
        self._sent_requests: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stats-sync")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.sync_once()

    async def sync_once(self, now: float | None = None) -> None:
        """Write this instance's views and merge the others' (one pipeline)."""
        now = time.time() if now is None else now
        ttl = max(1, int(self.period_s * 3) + 1)
        try:
            async with asyncio.timeout(self.timeout_s * 2), self.redis.pipeline(
                    transaction=False) as pipe:
                for dep in self.deployments:
                    key = f"{self.prefix}stats:{dep}"
                    pipe.hset(key, self.instance, orjson.dumps(self._view(dep, now)))
                    pipe.expire(key, ttl)
                    pipe.hgetall(key)
                replies = await pipe.execute()
        except Exception as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("routing statistics not shared (%d failures): %r", self.failures,
                            exc)
            return
        for dep, views in zip(self.deployments, replies[2::3], strict=True):
            self._merge(dep, [orjson.loads(v) for v in views.values()], now)

    def _view(self, dep: str, now: float) -> dict[str, Any]:
        s = self.stats.get(dep)
        fresh = s.requests - self._sent_requests.get(dep, 0)
        self._sent_requests[dep] = s.requests
        return {"ttft_ms": s.ttft_ms, "tokens_per_s": s.tokens_per_s, "requests": s.requests,
                "failures": s.failures, "weight": fresh + 1, "ts": now}

    def _merge(self, dep: str, views: list[dict[str, Any]], now: float) -> None:
        fresh = [v for v in views if now - float(v.get("ts", 0)) <= self.period_s * 3]
        s = self.stats.get(dep)
        for name in ("ttft_ms", "tokens_per_s"):
            known = [(float(v[name]), float(v["weight"])) for v in fresh
                     if v.get(name) is not None]
            if known:
                total = sum(w for _, w in known)
                setattr(s, name, sum(x * w for x, w in known) / total)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()
