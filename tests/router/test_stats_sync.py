"""Routing statistics merged between router instances through a real redis-server: what
one instance's estimators learn, the other's learn at its next sync."""

from __future__ import annotations

import uuid

from router.config.schema import StateConfig
from router.routing.stats import StatsRegistry
from router.state.stats_sync import StatsSync


def _cfg(redis_url: str) -> StateConfig:
    return StateConfig(backend="redis", url=redis_url, prefix=f"s{uuid.uuid4().hex[:6]}:")


async def test_what_one_instance_observed_reaches_the_other(redis_url: str, fleet) -> None:
    dep = fleet.load(fleet.config()).deployments["mid"]
    cfg = _cfg(redis_url)
    a, b = StatsRegistry(clock=lambda: 100.0), StatsRegistry(clock=lambda: 100.0)
    sync_a, sync_b = StatsSync(a, cfg, instance="A"), StatsSync(b, cfg, instance="B")
    try:
        prior_ttft = b.snapshot(dep).ttft_ms
        for _ in range(30):  # A saw `mid` slow and failing; B saw nothing
            a.observe_ttft("mid", 5000.0)
            a.observe_outcome("mid", "overloaded")
        await sync_a.sync_once()
        await sync_b.sync_once()
        seen = b.snapshot(dep)
        assert seen.ttft_ms > prior_ttft and seen.ttft_ms == a.snapshot(dep).ttft_ms
        assert seen.error_rate == a.snapshot(dep).error_rate
        assert sync_b.applied == 60
        await sync_b.sync_once()  # nothing new: nothing learnt twice
        assert sync_b.applied == 60 and b.snapshot(dep).samples == 30
        await sync_a.sync_once()  # its own entries are not learnt again
        assert a.snapshot(dep).samples == 30
    finally:
        await sync_a.aclose()
        await sync_b.aclose()


async def test_redis_unavailable_keeps_the_local_estimates(fleet) -> None:
    dep = fleet.load(fleet.config()).deployments["mid"]
    cfg = StateConfig(backend="redis", url="redis://127.0.0.1:1/0", connect_timeout_s=0.2,
                      socket_timeout_s=0.2)
    stats = StatsRegistry(clock=lambda: 100.0)
    sync = StatsSync(stats, cfg, instance="A")
    try:
        stats.observe_ttft("mid", 300.0)
        before = stats.snapshot(dep)
        await sync.sync_once()
        assert stats.snapshot(dep) == before and sync.failures == 1
    finally:
        await sync.aclose()
