"""CPU per request of `router.stream` against raw aiohttp, one request at a time.

    python -m benchmarks.per_request [--requests 2000] [--reps 5] [--chunks 1]
                                     [--profile | --steps]

The work a request does once (validation, routing, the `route` event, the budget
reservation, the attempt's books, settlement, `start`/`done`) is what a burst of simultaneous
starts pays before every later first token (see `benchmarks.concurrency`). Here it is
measured alone: `benchmarks.paced_provider` with no delay (`--chunks` chunks, 1 by
default) in its own process, pinned apart where `taskset` exists, and in this process
`--requests` sequential streams over one keep-alive connection through the same two
clients as the concurrency benchmark's `aiohttp` and `router` rows, alternating `--reps`
times after a warm-up. The table shows the median process CPU (`time.process_time`) per
request of each and the router's excess. `--profile` prints a cProfile of the router's
requests instead (cumulative and own time, top 40); `--steps` the median time of each step
of a request before its provider request is sent and at its end
(`benchmarks.per_request_steps`).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.concurrency import _pin, _raw_one, _router_one, start_provider

One = Callable[[dict[str, Any]], Awaitable[None]]


async def _cpu_us_per_request(one: One, requests: int) -> float:
    gc.collect()
    cpu0 = time.process_time()
    for i in range(requests):
        out: dict[str, Any] = {"i": i, "chunks": 0, "t0": time.perf_counter()}
        await one(out)
        if "total" not in out:
            raise RuntimeError(f"request {i} did not finish: {out}")
    return (time.process_time() - cpu0) / requests * 1e6


async def _clients(url: str) -> tuple[list[Callable[[], Awaitable[None]]], One, One]:
    close_raw, raw = _raw_one(1, url, "aiohttp")
    close_router, routed = await _router_one(1, url.rsplit("/chat/completions", 1)[0])
    return [close_raw, close_router], raw, routed


async def bench(url: str, requests: int, reps: int) -> tuple[list[float], list[float]]:
    closers, raw, routed = await _clients(url)
    try:
        await _cpu_us_per_request(raw, 50)  # warm-up: imports, first connection
        await _cpu_us_per_request(routed, 50)
        raws, routers = [], []
        for _ in range(reps):
            raws.append(await _cpu_us_per_request(raw, requests))
            routers.append(await _cpu_us_per_request(routed, requests))
        return raws, routers
    finally:
        for close in closers:
            await close()


async def profile(url: str, requests: int) -> None:
    closers, _, routed = await _clients(url)
    try:
        await _cpu_us_per_request(routed, 50)
        prof = cProfile.Profile()
        prof.enable()
        await _cpu_us_per_request(routed, requests)
        prof.disable()
    finally:
        for close in closers:
            await close()
    if os.environ.get("PROFILE_OUT"):
        prof.dump_stats(os.environ["PROFILE_OUT"])
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--steps", action="store_true")
    args = parser.parse_args()
    provider, port = start_provider(argparse.Namespace(ttft_ms=0, chunks=args.chunks,
                                                       gap_ms=0))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    if _pin("0"):
        os.sched_setaffinity(0, {0})  # the provider has the last core
    import uvloop
    try:
        if args.profile:
            uvloop.run(profile(url, args.requests))
            return
        if args.steps:
            from benchmarks.per_request_steps import steps_table
            print("\n".join(uvloop.run(steps_table(url, args.requests))))
            return
        raws, routers = uvloop.run(bench(url, args.requests, args.reps))
    finally:
        provider.terminate()
        provider.wait(10)
    raw, routed = statistics.median(raws), statistics.median(routers)
    print(f"{args.requests} sequential requests x {args.reps}, {args.chunks} chunk(s) each, "
          "median CPU per request:\n")
    print("| client | CPU/request µs | router's excess µs | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| raw aiohttp + orjson | {raw:.0f} | - | - |")
    print(f"| `router.stream` | {routed:.0f} | {routed - raw:.0f} | {routed / raw:.2f}x |")


if __name__ == "__main__":
    main()
