"""Router CPU per token event versus draining the simulated provider directly.

    python -m benchmarks.overhead [--tokens 5000] [--reps 7] [--profile]

One simulated deployment with `ttft_ms: 0` and `tokens_per_s: 0` streams a `--tokens`-token
answer. In one process we drain it `--reps` times directly (`provider.stream()`, every
delta) and `--reps` times through `Router.stream()` (route, start, one `text` event per
token, done), alternating after a warm-up, and measure process CPU time
(`time.process_time`). The table shows the median µs per token event of each, the router's
overhead per event and the ratio (aim: overhead at most 5 µs/event). `import router` is
timed in fresh interpreters (best of 5), next to the floor of importing pydantic and
defining one model, since the machine's speed moves both. `--profile` prints where the
router's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from providers.base import ProviderRequest, TextDelta
from router.config import parse_config
from router.core import Router
from router.events import TextEvent

PROMPT = "Explain circuit breakers"


def _config(tokens: int) -> dict[str, Any]:
    return {
        "providers": {"sim": {"kind": "simulated", "options": {"seed": 1}}},
        "deployments": [{
            "id": "bench", "provider": "sim", "model": "sim-bench",
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            "context_window": 1_000_000,
            "options": {"ttft_ms": 0, "tokens_per_s": 0, "output_tokens": tokens},
        }],
        "defaults": {"max_tokens": tokens},
    }


async def _direct(r: Router, tokens: int) -> int:
    provider = r.provider("sim")
    request = ProviderRequest(model="sim-bench", max_tokens=tokens,
                              messages=[{"role": "user", "content": PROMPT}],
                              options={"ttft_ms": 0, "tokens_per_s": 0, "output_tokens": tokens})
    n = 0
    async for delta in provider.stream(request):
        if type(delta) is TextDelta:
            n += 1
    return n


async def _routed(r: Router, tokens: int) -> int:
    n = 0
    async for ev in r.stream(PROMPT, model="bench", max_tokens=tokens):
        if type(ev) is TextEvent:
            n += 1
    return n


async def _cpu_us_per_event(fn: Callable[[], Awaitable[int]]) -> float:
    gc.collect()
    start = time.process_time()
    n = await fn()
    return (time.process_time() - start) * 1e6 / n


async def _bench(tokens: int, reps: int) -> tuple[float, float]:
    r = Router(parse_config(_config(tokens), "<benchmark>", env={}))

    async def direct() -> int:
        return await _direct(r, tokens)

    async def routed() -> int:
        return await _routed(r, tokens)

    assert await direct() == tokens and await routed() == tokens  # warm-up and sanity
    direct_us: list[float] = []
    routed_us: list[float] = []
    for _ in range(reps):
        direct_us.append(await _cpu_us_per_event(direct))
        routed_us.append(await _cpu_us_per_event(routed))
    await r.aclose()
    return statistics.median(direct_us), statistics.median(routed_us)


# The floor no pydantic-based library goes under: pydantic itself and one model class.
PYDANTIC_FLOOR = ("import pydantic\n"
                  "class M(pydantic.BaseModel):\n"
                  "    x: int\n")


def import_time_ms(runs: int = 5, statement: str = "import router") -> float:
    """Best of `runs` fresh interpreters: wall time of `statement` alone."""
    code = ("import time\nt = time.perf_counter()\n" + statement + "\n"
            "print((time.perf_counter() - t) * 1000)")
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  check=True, text=True).stdout) for _ in range(runs)]
    return min(times)


def _profile(tokens: int) -> None:
    r = Router(parse_config(_config(tokens), "<benchmark>", env={}))
    asyncio.run(_routed(r, tokens))  # warm-up (provider created, code paths hot)
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_routed(r, tokens))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    direct_us, routed_us = asyncio.run(_bench(args.tokens, args.reps))
    print(f"Router overhead per token event: simulated provider, {args.tokens} tokens, "
          f"median of {args.reps} (process CPU)\n")
    print("| direct µs/event | via router µs/event | overhead µs/event | ratio |")
    print("|---:|---:|---:|---:|")
    print(f"| {direct_us:.2f} | {routed_us:.2f} | {routed_us - direct_us:.2f} | "
          f"{routed_us / direct_us:.2f}x |")
    router_ms, floor_ms = import_time_ms(), import_time_ms(statement=PYDANTIC_FLOOR)
    print(f"\n`import router`: {router_ms:.0f} ms (best of 5 fresh interpreters; "
          f"`import pydantic` + one model, the floor, {floor_ms:.0f} ms in the same run)")
    if args.profile:
        print()
        _profile(args.tokens)


if __name__ == "__main__":
    main()
