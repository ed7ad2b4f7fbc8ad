"""Instructions per request of `router.stream` and raw aiohttp, counted by valgrind:
`python -m benchmarks.per_request_ir [--chunks 1] [--n1 50] [--n2 250]`.

CPU time on a shared machine moves with the load; the count of instructions does not. The
provider (`benchmarks.paced_provider`, no delay) runs outside valgrind; each client runs
`--n1` and then `--n2` sequential requests after a warm-up, each run under
`valgrind --tool=callgrind`, and the difference of their totals over `n2 - n1` is one
request's count (start-up and imports cancel out). Slow: about a minute per run. Runs go
one at a time (two valgrinds side by side on this machine made the slower one's requests
fail).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from benchmarks.concurrency import ROOT, _raw_one, _router_one, start_provider


async def _requests(kind: str, url: str, n: int) -> None:
    if kind == "router":
        close, one = await _router_one(1, url.rsplit("/chat/completions", 1)[0])
    else:
        close, one = _raw_one(1, url, "aiohttp")
    for i in range(20 + n):  # 20 warm-up requests in both runs: they cancel out
        out = {"i": i, "chunks": 0, "t0": time.perf_counter()}
        await one(out)
        if "total" not in out:
            raise RuntimeError(f"request {i} did not finish: {out}")
    await close()


def _instructions(kind: str, url: str, n: int) -> int:
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-m", "benchmarks.per_request_ir", "--worker", kind, "--url", url, "--n", str(n)],
        capture_output=True, text=True, cwd=ROOT, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {run.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1)
    parser.add_argument("--n1", type=int, default=50)
    parser.add_argument("--n2", type=int, default=250)
    parser.add_argument("--worker", choices=("router", "aiohttp"))
    parser.add_argument("--url")
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    import uvloop
    if args.worker:
        uvloop.run(_requests(args.worker, args.url, args.n))
        return
    provider, port = start_provider(argparse.Namespace(ttft_ms=0, chunks=args.chunks,
                                                       gap_ms=0))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        counts = {kind: (_instructions(kind, url, args.n2) - _instructions(kind, url, args.n1))
                  / (args.n2 - args.n1) for kind in ("aiohttp", "router")}
    finally:
        provider.terminate()
        provider.wait(10)
    print(f"{args.chunks} chunk(s) per request, runs of {args.n1} and {args.n2} requests:\n")
    print("| client | instructions per request | ratio |")
    print("|---|---:|---:|")
    print(f"| raw aiohttp + orjson | {counts['aiohttp']:,.0f} | - |")
    print(f"| `router.stream` | {counts['router']:,.0f} | "
          f"{counts['router'] / counts['aiohttp']:.2f}x |")


if __name__ == "__main__":
    main()
