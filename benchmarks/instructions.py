"""Instructions per request of `router.stream` and of raw aiohttp, counted by valgrind:

    python -m benchmarks.instructions [--requests 300] [--chunks N]

The same sequential requests as `benchmarks.per_request` (zero-delay
`benchmarks.paced_provider`, one keep-alive connection), run in this script under
callgrind, which counts the instructions the process executes while inside `math.fsum`
(each client's loop is run from one, so start-up and imports are not counted). A count does
not depend on what else the machine runs: on a shared machine it tells a difference of a
few percent that CPU time cannot (it does not see cache misses, so it is a proxy for CPU
time, not a measure of it). The collector is off while counting (its collections would be
counted where they happen to fall). Needs `valgrind`; ~1 minute at 1 chunk, ~5 more with
`--chunks 201`.

Each client runs with one chunk per response; with `--chunks N` (N > 1) also with N, and
the table adds the cost per chunk with the request's own taken out: (count at N - count at
1) / (N - 1). (The zero-delay provider may send several chunks in one read, as a real one
does to a reader that fell behind, and how they fall into reads varies: at 201 chunks the
per-chunk counts of runs differ by 1-2%, so compare a few.)
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


def _inner(requests: int, chunks: int) -> None:
    """Under callgrind: warm up both clients, then each one's requests inside `math.fsum`."""
    import uvloop

    provider, port = start_provider(argparse.Namespace(ttft_ms=0, chunks=chunks, gap_ms=0))
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


def count(requests: int, chunks: int) -> tuple[float, float]:
    """Instructions per request of raw aiohttp and of `router.stream`, `chunks` each."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=math_fsum", "--dump-after=math_fsum",
             f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.instructions",
             "--inner", "--requests", str(requests), "--chunks", str(chunks)],
            check=True, capture_output=True)
        counts = []
        for dump in sorted(pathlib.Path(tmp).glob("cg.out.*"),
                           key=lambda p: int(p.suffix[1:])):
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    counts.append(int(line.split()[1]) / requests)
                    break
    raw, routed = counts[-2:]
    return raw, routed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=1)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        _inner(args.requests, args.chunks)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    n = args.chunks
    one = count(args.requests, 1)
    if n == 1:
        print(f"{args.requests} sequential requests each, 1 chunk, instructions per request:\n")
        print("| client | instructions/request | router's excess | ratio |")
        print("|---|---:|---:|---:|")
        raw, routed = one
        print(f"| raw aiohttp + orjson | {raw:,.0f} | - | - |")
        print(f"| `router.stream` | {routed:,.0f} | {routed - raw:,.0f} | {routed / raw:.2f}x |")
        return
    many = count(args.requests, n)
    per_chunk = tuple((m - o) / (n - 1) for o, m in zip(one, many, strict=True))
    print(f"{args.requests} sequential requests each, instructions per request at 1 and {n} "
          f"chunks, and per chunk ((at {n} - at 1) / {n - 1}):\n")
    print(f"| client | 1 chunk | {n} chunks | per chunk |")
    print("|---|---:|---:|---:|")
    for name, i in (("raw aiohttp + orjson", 0), ("`router.stream`", 1)):
        cells = []
        for counts in (one, many, per_chunk):  # the router's with its ratio to raw aiohttp's
            ratio = f" ({counts[1] / counts[0]:.2f}x)" if i == 1 else ""
            cells.append(f"{counts[i]:,.0f}{ratio}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
