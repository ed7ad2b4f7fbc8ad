"""Routing statistics merged between router instances through a real redis-server."""

from __future__ import annotations

import uuid

from router.config.schema import StateConfig
from router.routing.stats import StatsRegistry
from router.state.stats_sync import StatsSync


def _pair(redis_url: str) -> tuple[StatsRegistry, StatsSync, StatsRegistry, StatsSync]:
    cfg = StateConfig(backend="redis", url=redis_url, prefix=f"s{uuid.uuid4().hex[:6]}:",
                      stats_sync_s=2.0)
    a, b = StatsRegistry(), StatsRegistry()
    return a, StatsSync(a, ["d"], cfg, instance="A"), b, StatsSync(b, ["d"], cfg, instance="B")


async def test_what_one_instance_observed_reaches_the_other(redis_url: str) -> None:
    a, sync_a, b, sync_b = _pair(redis_url)
    try:
        for _ in range(9):  # A saw a slow deployment; B saw nothing yet
            a.observe_ttft("d", 900.0)
            a.observe_outcome("d", None)
        await sync_a.sync_once(now=100.0)
        await sync_b.sync_once(now=100.5)
        assert b.get("d").ttft_ms == 900.0
        # B's own observation counts, weighted by the requests behind each view.
        b.observe_ttft("d", 100.0)
        b.observe_outcome("d", None)
        await sync_b.sync_once(now=101.0)
        merged = b.get("d").ttft_ms
        assert merged is not None and 100.0 < merged < 900.0
    finally:
        await sync_a.aclose()
        await sync_b.aclose()


async def test_a_stopped_instance_view_is_ignored_after_three_periods(redis_url: str) -> None:
    a, sync_a, b, sync_b = _pair(redis_url)
    try:
        a.observe_ttft("d", 900.0)
        await sync_a.sync_once(now=100.0)
        b.observe_ttft("d", 100.0)
        await sync_b.sync_once(now=107.0)  # A's view is 7 s old: more than 3 x 2 s
        assert b.get("d").ttft_ms == 100.0
    finally:
        await sync_a.aclose()
        await sync_b.aclose()


async def test_redis_unavailable_keeps_the_local_estimates() -> None:
    cfg = StateConfig(backend="redis", url="redis://127.0.0.1:1/0", connect_timeout_s=0.2,
                      socket_timeout_s=0.2)
    stats = StatsRegistry()
    stats.observe_ttft("d", 300.0)
    sync = StatsSync(stats, ["d"], cfg, instance="A")
    try:
        await sync.sync_once(now=1.0)
        assert stats.get("d").ttft_ms == 300.0 and sync.failures == 1
    finally:
        await sync.aclose()
