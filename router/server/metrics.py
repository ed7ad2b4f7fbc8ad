"""Prometheus metrics of the server, on the `prometheus-client` library.

Each app has its own `CollectorRegistry` (two apps in one process, as in tests, do not
collide). Streams are observed at their few per-request events (`retry`, `fallback`, `done`,
`error`), never per token. Breaker state and live latency are read from the router when
`/metrics` is scraped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from router.events import DoneEvent, ErrorEvent, Event, FallbackEvent, RetryEvent

PREFIX = "llm_router"
CONTENT_TYPE = CONTENT_TYPE_LATEST
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
# Event-loop lag: a blocked loop (synchronous I/O, a long computation) delays every stream.
LAG_TICK_S = 0.01
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                1.0, 2.0, 5.0)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _LiveCollector(Collector):
    """Breaker state (0 closed, 1 half-open, 2 open) and live TTFT / tokens per second per
    deployment, read at scrape time."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        breaker = GaugeMetricFamily(f"{PREFIX}_breaker_state",
                                    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                                    labels=["deployment"])
        ttft = GaugeMetricFamily(f"{PREFIX}_live_ttft_seconds",
                                 "Moving average of observed time to first token",
                                 labels=["deployment"])
        rate = GaugeMetricFamily(f"{PREFIX}_live_tokens_per_second",
                                 "Moving average of observed output rate", labels=["deployment"])
        for dep, row in self._snapshot().items():
            state = row.get("breaker")
            if isinstance(state, str) and state in BREAKER_STATES:
                breaker.add_metric([dep], BREAKER_STATES[state])
            if isinstance(row.get("ttft_ms"), int | float):
                ttft.add_metric([dep], float(row["ttft_ms"]) / 1000.0)
            if isinstance(row.get("tokens_per_s"), int | float):
                rate.add_metric([dep], float(row["tokens_per_s"]))
        return [breaker, ttft, rate]


class ServerMetrics:
    def __init__(self, snapshot: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(f"{PREFIX}_ttft_seconds", "Time to first token per deployment",
                              ["deployment"], buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(f"{PREFIX}_latency_seconds",
                                 "Total stream latency per deployment", ["deployment"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens by deployment and kind",
                              ["deployment", "kind"], registry=r)
        self.cost = Counter(f"{PREFIX}_cost_usd", "Spend in USD by deployment",
                            ["deployment"], registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "Finished streams by outcome",
                                ["deployment", "outcome"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Streams ended by an error, by code",
                              ["code", "deployment"], registry=r)
        self.retries = Counter(f"{PREFIX}_retries", "Retries by deployment and error code",
                               ["deployment", "code"], registry=r)
        self.fallbacks = Counter(f"{PREFIX}_fallbacks", "Fallbacks by origin and error code",
                                 ["from_deployment", "code"], registry=r)
        self.active = Gauge(f"{PREFIX}_active_streams", "Streams being produced now",
                            registry=r)
        self.loop_lag = Histogram(f"{PREFIX}_event_loop_lag_seconds",
                                  "How late the event loop ran a 10 ms timer", registry=r,
                                  buckets=_LAG_BUCKETS)
        self.loop_lag_max = Gauge(f"{PREFIX}_event_loop_lag_max_seconds",
                                  "The longest event-loop lag since the server started",
                                  registry=r)
        r.register(_LiveCollector(snapshot))

    async def watch_loop(self) -> None:
        """Sample the event loop's lag every `LAG_TICK_S` until cancelled (the server's
        lifespan runs it; about 100 wake-ups a second, a few µs each)."""
        worst = 0.0
        while True:
            t = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            lag = time.perf_counter() - t - LAG_TICK_S
            self.loop_lag.observe(lag)
            if lag > worst:
                worst = lag
                self.loop_lag_max.set(lag)

    def observe(self, ev: Event) -> None:
        """Account one of the per-request events (call it for those types only)."""
        if isinstance(ev, DoneEvent):
            self._done(ev)
        elif isinstance(ev, ErrorEvent):
            self.errors.labels(ev.code, ev.deployment or "").inc()
            self.requests.labels(ev.deployment or "", "error").inc()
        elif isinstance(ev, RetryEvent):
            self.retries.labels(ev.deployment, ev.error).inc()
        elif isinstance(ev, FallbackEvent):
            self.fallbacks.labels(ev.from_deployment, ev.error).inc()

    def _done(self, ev: DoneEvent) -> None:
        dep = ev.deployment
        if ev.latency.ttft_ms is not None:
            self.ttft.labels(dep).observe(ev.latency.ttft_ms / 1000.0)
        self.latency.labels(dep).observe(ev.latency.total_ms / 1000.0)
        u = ev.usage
        for kind, n in (("input", u.input_tokens), ("cached_input", u.cached_input_tokens),
                        ("output", u.output_tokens), ("reasoning", u.reasoning_tokens)):
            if n:
                self.tokens.labels(dep, kind).inc(n)
        if ev.cost_usd:
            self.cost.labels(dep).inc(ev.cost_usd)
        self.requests.labels(dep, ev.finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


OBSERVED_TYPES = frozenset({"done", "error", "retry", "fallback"})



def _breaker_state(row: Mapping[str, Any]) -> str:
    """The breaker state in a `router.health()` row (a state name, or a breaker snapshot
    dict with a `state`); a deployment never tried has a closed breaker."""
    value = row.get("breaker")
    if isinstance(value, Mapping):
        value = value.get("state")
    return value.replace("-", "_") if isinstance(value, str) else "closed"


def deployment_rows(router: Any) -> list[dict[str, Any]]:
    """`GET /v1/deployments`: per deployment, `router.health()` (availability, breaker,
    live TTFT and tokens/s, outcomes) with the breaker state normalized, and its price,
    context window, quality and capabilities."""
    health: Mapping[str, Mapping[str, Any]] = router.health()
    rows = []
    for dep_id, dep in router.loaded.deployments.items():
        live = dict(health.get(dep_id, {}))
        rows.append({
            "id": dep_id, "provider": dep.provider, "model": dep.model, **live,
            "breaker": _breaker_state(live),
            "breaker_detail": live.get("breaker") if isinstance(live.get("breaker"), Mapping)
            else None,
            "prior": {"ttft_ms": dep.latency_prior.ttft_ms,
                      "tokens_per_s": dep.latency_prior.tokens_per_s},
            "price": dep.price.model_dump(), "context_window": dep.context_window,
            "quality": dep.quality, "capabilities": sorted(dep.capabilities),
        })
    return rows


def live_snapshot(router: Any) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in deployment_rows(router)}
