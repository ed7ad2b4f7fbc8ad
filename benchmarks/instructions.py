"""Instructions per request of `router.stream` and of raw aiohttp, counted by valgrind:

    python -m benchmarks.instructions [--requests 300]

The same sequential requests as `benchmarks.per_request` (zero-delay
`benchmarks.paced_provider`, one chunk, one keep-alive connection), run in this script
under callgrind, which counts the instructions the process executes while inside
`math.fsum` (each client's loop is run from one, so start-up and imports are not counted).
A count does not depend on what else the machine runs: on a shared machine it tells a
difference of a few percent that CPU time cannot (it does not see cache misses, so it is a
proxy for CPU time, not a measure of it). The collector is off while counting (its
collections would be counted where they happen to fall). Needs `valgrind`; ~1 minute.
"""

from __future__ import annotations

import argparse
import gc
import math
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.concurrency import start_provider
from benchmarks.per_request import _clients, _cpu_us_per_request


async def _run(one: Any, requests: int) -> None:
    for i in range(requests):
        out: dict[str, Any] = {"i": i, "chunks": 0, "t0": time.perf_counter()}
        await one(out)
        if "total" not in out:
            raise RuntimeError(f"request {i} did not finish: {out}")


def _inner(requests: int) -> None:
    """Under callgrind: warm up both clients, then each one's requests inside `math.fsum`."""
    import uvloop

    provider, port = start_provider(argparse.Namespace(ttft_ms=0, chunks=1, gap_ms=0))
    loop = uvloop.new_event_loop()
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        closers, raw, routed = loop.run_until_complete(_clients(url))
        for one in (raw, routed):
            loop.run_until_complete(_cpu_us_per_request(one, 50))
        gc.collect()
        gc.disable()
        for one in (raw, routed):  # one callgrind dump each, as `fsum` returns
            math.fsum(loop.run_until_complete(_run(one, requests)) or 0.0 for _ in range(1))
        gc.enable()
        for close in closers:
            loop.run_until_complete(close())
    finally:
        provider.terminate()
        provider.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        _inner(args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=math_fsum", "--dump-after=math_fsum",
             f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.instructions",
             "--inner", "--requests", str(args.requests)],
            check=True, capture_output=True)
        counts = []
        for dump in sorted(pathlib.Path(tmp).glob("cg.out.*"),
                           key=lambda p: int(p.suffix[1:])):
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    counts.append(int(line.split()[1]) / args.requests)
                    break
    raw, routed = counts[-2:]
    print(f"{args.requests} sequential requests each, 1 chunk, instructions per request:\n")
    print("| client | instructions/request | router's excess | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| raw aiohttp + orjson | {raw:,.0f} | - | - |")
    print(f"| `router.stream` | {routed:,.0f} | {routed - raw:,.0f} | {routed / raw:.2f}x |")


if __name__ == "__main__":
    main()
