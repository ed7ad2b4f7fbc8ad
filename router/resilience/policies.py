"""`Resilience`: what one router needs to survive failing providers — its circuit breakers,
the retry policy, when to hedge, and the continuation ways each deployment has refused
(see `router.resilience.continuation`)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from router.config.schema import Deployment, HedgeConfig, LoadedConfig
from router.resilience.breaker import (
    BreakerRegistry,
    Clock,
    StorageFactory,
    memory_storage,
    utc_now,
)
from router.resilience.breaker_sync import BreakerSync
from router.resilience.continuation import Way
from router.resilience.retry import RetryPolicy, Sleep
from router.routing.stats import StatsRegistry


class Resilience:
    """Breakers, retry policy and learned continuation refusals of one router."""

    def __init__(self, loaded: LoadedConfig, *, clock: Clock = utc_now,
                 storage_factory: StorageFactory | None = None, sleep: Sleep = asyncio.sleep,
                 rng: Callable[[], float] = random.random,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.loaded = loaded
        cfg = loaded.config.resilience
        self.cfg = cfg
        state = loaded.config.state
        shared = storage_factory is not None or state.backend == "redis"
        self.sync: BreakerSync | None = None
        if storage_factory is None and state.backend == "redis":
            # With `state: {backend: redis}` breakers are shared by every router instance,
            # synced in the background (decisions never wait for Redis).
            from router.state.redis import RedisState

            self.sync = BreakerSync(RedisState(
                state.url, max_connections=4, connect_timeout_s=state.connect_timeout_s,
                socket_timeout_s=state.socket_timeout_s), state.prefix)
            storage_factory = self.sync
        storage_factory = storage_factory or memory_storage
        self.breakers = BreakerRegistry(cfg.breaker, clock=clock, storage_factory=storage_factory,
                                        shared=shared)
        self.retry = RetryPolicy(cfg.retry, sleep=sleep, rng=rng, clock=monotonic)
        self._refused: dict[str, set[Way]] = {}

    def start(self) -> None:
        """Start syncing shared breakers now (inside the loop that will serve), so that the
        first decisions already see the other instances' trips; otherwise the sync starts
        at the first decision made in a loop."""
        if self.sync is not None:
            self.sync.start()

    async def aclose(self) -> None:
        if self.sync is not None:
            await self.sync.aclose()

    def continuation_ways(self, dep: Deployment) -> list[Way]:
        """The ways to ask `dep` for a continuation, best first, minus learned refusals."""
        ways: list[Way] = ["prefill", "instruct"] if "prefill" in dep.capabilities else [
            "instruct"]
        refused = self._refused.get(dep.id, set())
        return [w for w in ways if w not in refused] or ways[-1:]

    def learn_refusal(self, deployment: str, way: Way) -> None:
        self._refused.setdefault(deployment, set()).add(way)

    def refusals(self) -> dict[str, list[str]]:
        return {dep: sorted(ways) for dep, ways in self._refused.items()}

    def hedge_config(self, task: str | None) -> HedgeConfig:
        tasks = self.loaded.config.tasks
        task_cfg = tasks.get(task) if task is not None else None
        if task_cfg is not None and task_cfg.hedge is not None:
            return task_cfg.hedge
        return self.cfg.hedge

    def hedge_after_s(self, task: str | None, dep: Deployment,
                      stats: StatsRegistry) -> float | None:
        """Seconds without a first token after which a hedge starts, or None (off)."""
        hedge = self.hedge_config(task)
        if not hedge.enabled:
            return None
        after_ms = stats.p95_ttft_ms(dep) if hedge.after_ms == "p95" else hedge.after_ms
        return max(0.0, after_ms / 1000.0)
