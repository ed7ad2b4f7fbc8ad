"""Hedging against a heavy-tailed time to first token: p50/p95/p99 TTFT and cost, without
and with hedging.

    python -m benchmarks.hedging [--requests 600] [--concurrency 20] [--seed 3]

The loopback provider server (`router.testing`, in a child process) serves two equally
priced deployments whose first-token delay is heavy-tailed: most replies start after
~60 ms (log-normal), one in ten after 0.5-4 s (Pareto). Each mode runs the same number of
requests through a router: no hedging; hedging after a fixed 250 ms; hedging after the
live p95 of the primary's TTFT (`after_ms: p95`). TTFT is measured by the caller, from
`stream()` to the first `text` event. Cost is `done.cost_usd`, which includes the
prompt of every hedge that lost (its connection is closed at its first token race loss).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

ANSWER = "A short answer of a dozen words to measure the time to first token."


def _delay(rng: random.Random) -> float:
    if rng.random() < 0.1:
        return min(4.0, 0.5 * rng.paretovariate(1.5))
    return rng.lognormvariate(-2.8, 0.35)  # median ~60 ms


def _serve(conn: Connection, n: int, seed: int) -> None:
    from router.testing import LoopbackProvider, Reply

    async def main() -> None:
        rng = random.Random(seed)
        base = Reply.from_text(ANSWER)
        async with LoopbackProvider(base) as srv:
            for model in ("a", "b"):
                srv.enqueue(*(base.slow(_delay(rng)) for _ in range(n)), model=model)
            conn.send(srv.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def _config(base_url: str, hedge: dict[str, Any]) -> dict[str, Any]:
    price = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    prior = {"ttft_ms": 100, "tokens_per_s": 100}
    return {
        "version": 1,
        "providers": {"lb": {"kind": "openai_compatible", "base_url": base_url + "/v1",
                             "api_key": "sk-x"}},
        "deployments": [
            {"id": "a", "provider": "lb", "model": "a", "price": price, "latency_prior": prior,
             "quality": 0.9, "context_window": 100000},
            {"id": "b", "provider": "lb", "model": "b", "price": price, "latency_prior": prior,
             "quality": 0.8, "context_window": 100000},
        ],
        "tasks": {"t": {"candidates": ["a", "b"], "prefer": "quality", "hedge": hedge}},
        "defaults": {"task": "t", "max_tokens": 100},
        "resilience": {"timeouts": {"ttft_s": 30, "idle_s": 30, "total_s": 60},
                       "breaker": {"fail_max": 1000}},
    }


async def _mode(port: int, hedge: dict[str, Any], n: int, concurrency: int) -> dict[str, float]:
    from router.config import parse_config
    from router.core import Router

    router = Router(parse_config(_config(f"http://127.0.0.1:{port}", hedge), "hedge", env={}))
    ttfts: list[float] = []
    costs: list[float] = []
    hedged = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal hedged
        async with sem:
            t0 = time.perf_counter()
            first = None
            async for ev in router.stream(f"Question {i}: a short answer please"):
                if ev.type == "text" and first is None:
                    first = time.perf_counter() - t0
                elif ev.type == "start" and ev.hedge:
                    hedged += 1
                elif ev.type == "done":
                    costs.append(ev.cost_usd)
            assert first is not None
            ttfts.append(first * 1000)

    await asyncio.gather(*(one(i) for i in range(n)))
    await router.aclose()
    q = statistics.quantiles(ttfts, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "cost": statistics.fmean(costs),
            "hedged": hedged / n}


async def _all(port: int, n: int, concurrency: int) -> list[tuple[str, dict[str, float]]]:
    modes = [("no hedging", {"enabled": False}),
             ("hedge after 250 ms", {"enabled": True, "after_ms": 250}),
             ("hedge after live p95", {"enabled": True, "after_ms": "p95"})]
    return [(name, await _mode(port, hedge, n, concurrency)) for name, hedge in modes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve, args=(child, 4 * args.requests, args.seed),
                                   daemon=True)
    proc.start()
    port = parent.recv()
    results = asyncio.run(_all(port, args.requests, args.concurrency))
    parent.send("stop")
    proc.join(5)
    base = results[0][1]
    print(f"{args.requests} requests per mode, concurrency {args.concurrency}; "
          "TTFT 90% log-normal (median ~60 ms), 10% Pareto tail 0.5-4 s")
    print("| mode | p50 TTFT ms | p95 TTFT ms | p99 TTFT ms | p99 vs none | hedged | "
          "cost/request | extra cost |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results:
        print(f"| {name} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
              f"{r['p99'] / base['p99']:.2f}x | {r['hedged']:.0%} | ${r['cost'] * 1e6:.1f}e-6 | "
              f"{(r['cost'] / base['cost'] - 1):+.1%} |")


if __name__ == "__main__":
    main()
