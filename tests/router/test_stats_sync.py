"""Routing statistics merged between router instances through a real redis-server: what
one instance's estimators learn, the other's learn at its next sync."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from router.config.schema import BreakerConfig, StateConfig
from router.resilience.breaker import BreakerRegistry
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
        for i in range(30):  # A saw `mid` slow, failing and slower by half per request
            a.observe_ttft("mid", 5000.0 * (1 + 0.5 * (i % 3)), i % 3)  # beside it; B: nothing
            a.observe_outcome("mid", "overloaded")
        await sync_a.sync_once()
        await sync_b.sync_once()
        seen = b.snapshot(dep)
        assert seen.ttft_ms > prior_ttft and seen.ttft_ms == a.snapshot(dep).ttft_ms
        assert seen.error_rate == a.snapshot(dep).error_rate
        assert b.load_slope("mid") == a.load_slope("mid") > 0.3
        assert sync_b.applied == 90
        await sync_b.sync_once()  # nothing new: nothing learnt twice
        assert sync_b.applied == 90 and b.snapshot(dep).samples == 30
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


async def test_the_failure_rate_window_spans_every_instance(redis_url: str) -> None:
    """Two instances each see 6 calls of a 50% brown-out: neither reaches `min_calls` (10)
    alone, together they do, and both trip at their next sync (one round trip each)."""
    cfg = _cfg(redis_url)
    breaker_cfg = BreakerConfig(fail_max=100, reset_timeout_s=30, failure_rate=0.5,
                                min_calls=10, window_s=60)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    breakers = {name: BreakerRegistry(breaker_cfg, clock=lambda: now) for name in "AB"}
    syncs = {name: StatsSync(StatsRegistry(clock=lambda: 100.0), cfg, instance=name,
                             breakers=breakers[name]) for name in "AB"}
    try:
        for name in "AB":
            for i in range(6):
                permit = breakers[name].admit("mid")
                assert permit is not None
                permit.failure("overloaded") if i % 2 == 0 else permit.success()
            assert breakers[name].get("mid").state == "closed"  # 6 calls < min_calls
        await syncs["A"].sync_once()
        await syncs["B"].sync_once()  # learns A's 6: 12 calls, 6 failed
        await syncs["A"].sync_once()  # learns B's 6
        assert breakers["A"].get("mid").state == "open"
        assert breakers["B"].get("mid").state == "open"
        assert syncs["A"].applied == syncs["B"].applied == 6  # each outcome learnt once
    finally:
        for sync in syncs.values():
            await sync.aclose()


async def test_breaker_outcomes_are_not_shared_without_a_failure_rate(redis_url: str) -> None:
    breakers = BreakerRegistry(BreakerConfig(fail_max=5, reset_timeout_s=30))
    stats = StatsRegistry(clock=lambda: 100.0)
    sync = StatsSync(stats, _cfg(redis_url), instance="A", breakers=breakers)
    try:
        permit = breakers.admit("mid")
        assert permit is not None
        permit.failure("overloaded")
        assert stats.journal is not None and list(stats.journal) == []
    finally:
        await sync.aclose()
