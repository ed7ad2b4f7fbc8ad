"""Where one request's own time goes before its provider request is sent, and at its end:
`python -m benchmarks.per_request --steps`.

Each step is timed where it runs, inside real requests (wall time of the call, median over
the requests; the collector is off while they run): the caches are as cold as a request
finds them after its predecessor's socket and parsing work, so the figures are larger than
a `timeit` loop of the same call would show. The timing wrappers are installed on the
functions by name, in this process only.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from benchmarks.concurrency import _router_one

Steps = dict[str, list[float]]


def _timed_sync(owner: Any, name: str, label: str, steps: Steps) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            steps[label].append((time.perf_counter() - t0) * 1e6)

    setattr(owner, name, timed)


def _timed_async(owner: Any, name: str, label: str, steps: Steps) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            steps[label].append((time.perf_counter() - t0) * 1e6)

    setattr(owner, name, timed)


def _install(steps: Steps, marks: dict[str, float]) -> None:
    import router.core as core
    import router.serving.orchestrator as orchestrator
    from router.budgets.manager import BudgetManager
    from router.routing.policy import RoutingPolicy
    from router.routing.stats import StatsRegistry
    from router.serving.ledger import Ledger

    _timed_sync(orchestrator, "prepare", "prepare (validate, build the request)", steps)
    _timed_sync(RoutingPolicy, "choose", "route (estimates, ranking)", steps)
    _timed_sync(StatsRegistry, "snapshot", "  of which the estimator snapshot", steps)
    _timed_sync(orchestrator, "route_event", "`route` event", steps)
    _timed_async(BudgetManager, "reserve", "budget reservation", steps)
    _timed_async(BudgetManager, "settle", "settlement (spend booked)", steps)
    _timed_sync(Ledger, "done_event", "`done` event", steps)

    stream: Callable[..., Any] = core.Router.stream

    def timed_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        marks["call"] = time.perf_counter()
        events = stream(self, *args, **kwargs)
        steps["`stream()` call"].append((time.perf_counter() - marks["call"]) * 1e6)
        return events

    core.Router.stream = timed_stream  # type: ignore[method-assign]
    routed = orchestrator._routed

    async def timed_routed(*args: Any) -> AsyncIterator[Any]:
        marks["routed"] = time.perf_counter()
        async for item in routed(*args):
            if isinstance(item, orchestrator.Served):
                steps["`stream()` called to routed and reserved"].append(
                    (time.perf_counter() - marks["call"]) * 1e6)
                marks["served"] = time.perf_counter()
            yield item

    orchestrator._routed = timed_routed  # type: ignore[assignment]
    request = aiohttp.ClientSession._request

    def timed_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        now = time.perf_counter()
        steps["routed and reserved to aiohttp's `_request`"].append(
            (now - marks["served"]) * 1e6)
        steps["TOTAL `stream()` to aiohttp's `_request`"].append((now - marks["call"]) * 1e6)
        return request(self, *args, **kwargs)

    aiohttp.ClientSession._request = timed_request  # type: ignore[method-assign]


async def steps_table(url: str, requests: int) -> list[str]:
    steps: Steps = defaultdict(list)
    marks: dict[str, float] = {}
    _install(steps, marks)
    close, routed = await _router_one(1, url.rsplit("/chat/completions", 1)[0])
    try:
        for i in range(200 + requests):
            if i == 200:
                steps.clear()  # warmed up
                gc.disable()
            await routed({"i": i, "chunks": 0, "t0": time.perf_counter()})
    finally:
        gc.enable()
        await close()
    order = ["`stream()` call", "prepare (validate, build the request)",
             "route (estimates, ranking)", "  of which the estimator snapshot",
             "`route` event", "budget reservation",
             "`stream()` called to routed and reserved",
             "routed and reserved to aiohttp's `_request`",
             "TOTAL `stream()` to aiohttp's `_request`",
             "settlement (spend booked)", "`done` event"]
    return ["| step | median µs |", "|---|---:|"] + [
        f"| {name} | {statistics.median(steps[name]):.1f} |" for name in order if steps[name]]
