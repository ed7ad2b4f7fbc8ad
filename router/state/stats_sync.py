"""Routing statistics shared by every instance on one Redis, merged in the background.

Each instance keeps learning per request, in memory (`StatsRegistry` and its estimators: no
Redis on the request path), and records what its estimators learn in the registry's
bounded `journal`. Every `state.stats_sync_s` one task makes one round trip: it appends
this instance's new observations as ONE entry of the Redis Stream `stats` (bounded
`MAXLEN ~`) and reads the entries other instances appended since its last read, which it
feeds to its own estimators as if it had observed them itself (now: they are at most one
period old). So every instance's estimates (TTFT distribution, decode rate, error rate,
load sensitivity) rest on every instance's traffic, and an instance routes on the others'
observations at most `stats_sync_s` (plus one Redis timeout) late. Entries older than a
minute are not applied (a new instance starts from the recent past, not from hours ago).

The failure-rate breakers' windows ride along in the same round trip: each outcome a
closed breaker of this instance takes is journaled (`breaker`), and the others' outcomes
join this instance's windows (`Breaker.learn_remote`), so a deployment failing half of
everyone's calls trips on every instance even when each sees only a few of them. Breaker
states themselves (open, half-open, the consecutive count) are shared by
`router.resilience.breaker_sync`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from router.background import stop_task
from router.config.schema import StateConfig
from router.routing.stats import StatsRegistry

if TYPE_CHECKING:
    from router.resilience.breaker import BreakerRegistry

log = logging.getLogger("router.state")

JOURNAL_MAX = 10_000  # observations kept between two syncs (older ones are not shared)
STREAM_MAXLEN = 2_000
MAX_AGE_MS = 60_000


class StatsSync:
    def __init__(self, stats: StatsRegistry, cfg: StateConfig, *,
                 instance: str | None = None, breakers: BreakerRegistry | None = None) -> None:
        import redis.asyncio as aioredis

        self.stats = stats
        journal = stats.journal = deque(maxlen=JOURNAL_MAX)
        self.breakers = breakers
        if breakers is not None:
            breakers.on_outcome = lambda dep, failed: journal.append(
                ("breaker", dep, 1.0 if failed else 0.0, 0.0))
        self.key = f"{cfg.prefix}stats"
        self.period_s = cfg.stats_sync_s
        self.timeout_s = cfg.socket_timeout_s
        self.instance = instance or uuid.uuid4().hex[:12]
        self.redis: Any = aioredis.Redis.from_url(
            cfg.url, socket_connect_timeout=cfg.connect_timeout_s,
            socket_timeout=cfg.socket_timeout_s)
        self._last_id = b"-"
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.applied = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stats-sync")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.sync_once()

    async def sync_once(self) -> None:
        """Share this instance's new observations and learn the others' (one pipeline)."""
        journal = self.stats.journal
        assert journal is not None
        batch = list(journal)
        journal.clear()
        start = self._last_id if self._last_id == b"-" else b"(" + self._last_id
        try:
            async with asyncio.timeout(self.timeout_s * 2), self.redis.pipeline(
                    transaction=False) as pipe:
                if batch:
                    pipe.xadd(self.key, {"i": self.instance, "o": orjson.dumps(batch)},
                              maxlen=STREAM_MAXLEN, approximate=True)
                pipe.xrange(self.key, min=start, count=STREAM_MAXLEN)
                replies = await pipe.execute()
        except Exception as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("routing statistics not shared (%d failures): %r", self.failures,
                            exc)
            return
        self._apply(replies[-1], time.time() * 1000.0)

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]], now_ms: float) -> None:
        me = self.instance.encode()
        for entry_id, fields in entries:
            self._last_id = entry_id
            if fields.get(b"i") == me or now_ms - int(entry_id.split(b"-")[0]) > MAX_AGE_MS:
                continue
            for kind, dep, value, extra in orjson.loads(fields[b"o"]):
                self._learn(kind, dep, float(value), float(extra))

    def _learn(self, kind: str, dep: str, value: float, extra: float) -> None:
        if kind == "breaker":
            if self.breakers is not None:
                self.breakers.get(dep).learn_remote(value > 0.5)
                self.applied += 1
            return
        stats = self.stats.get(dep)
        est, now = stats.estimator, self.stats.clock()
        if kind == "load":  # a TTFT and the others in flight (there) as it was sent
            stats.load.observe(value, int(extra), now)
        elif kind == "ttft":
            est.observe_ttft(value, now)
        elif kind == "censored":
            est.observe_censored(value, now)
        elif kind == "decode":
            est.observe_decode(value, now)
        elif kind == "outcome":
            est.observe_outcome(value > 0.5, now, None if extra < 0 else extra)
        else:
            return
        self.applied += 1

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        await self.redis.aclose()
