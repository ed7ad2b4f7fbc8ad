"""Scaling out: one server process vs `serve --workers 2` vs two instances on one Redis,
under many concurrent SSE clients on the simulated fleet.

    python -m benchmarks.scale [--clients 500] [--seconds 8] [--tokens 60]
                               [--tokens-per-s 300] [--plot scale.png]

Each client runs requests back to back for `--seconds` (a closed loop), so the events/s a
setup delivers is its capacity at that concurrency. The library alone (the same closed loop
of `Router.stream()` calls in this process) gives the latency floor: "added" is the setup's
percentile minus the library's. CPU per event and RSS are summed over the server processes
(uvicorn's workers included); Redis commands per stream come from `INFO commandstats`
before and after (commands run inside Lua scripts are counted by Redis too).
Runs: `1 process` (memory state, as before), `1 process + Redis` (shared event log),
`2 workers + Redis`, `2 instances + Redis` (clients split over two ports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from benchmarks import plot_path
from benchmarks.server_load import (
    Sample,
    _config,
    _cpu_s,
    _direct_one,
    _free_port,
    _pct,
    _rss_mb,
    _sse_one,
    _wait_ready,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    name: str
    samples: list[Sample]
    seconds: float
    events: int
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    redis_calls: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def streams(self) -> int:
        return sum(1 for s in self.samples if s.ok)


async def _closed_loop(one: Any, clients: int, seconds: float) -> tuple[list[Sample], float]:
    deadline = time.perf_counter() + seconds
    out: list[Sample] = []

    async def client(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            out.append(await one(i * 100_000 + n))
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return out, time.perf_counter() - t0


async def run_library(path: str, clients: int, seconds: float, per_stream: int) -> Result:
    from router.core import Router

    router = Router.from_config(path)
    try:
        await _direct_one(router, -1)
        samples, took = await _closed_loop(lambda i: _direct_one(router, i), clients, seconds)
    finally:
        await router.aclose()
    ok = sum(1 for s in samples if s.ok)
    return Result("library (in-process)", samples, took, ok * per_stream)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _cpu_total(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            user, system = _cpu_s(p)
        except OSError:
            continue
        total += user + system
    return total


def _redis_calls(port: int) -> tuple[int, int]:
    """(every command, XADD): a stream's XADDs are the event-log pipelines it was in."""
    import redis

    stats = redis.Redis(port=port).info("commandstats")
    total = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    return total, int(stats.get("cmdstat_xadd", {}).get("calls", 0))


def _start(path: str, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cmd = [sys.executable, "-m", "router.cli", "serve", "--config", path, "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, port


async def run_servers(name: str, path: str, workers: int, instances: int, clients: int,
                      seconds: float, per_stream: int, redis_port: int | None) -> Result:
    started = [_start(path, workers) for _ in range(instances)]
    try:
        for proc, port in started:
            await _wait_ready(port, proc)
            await _sse_one(port, -1)  # warm up (each worker gets some of these)
            await asyncio.gather(*(_sse_one(port, -2 - i) for i in range(8)))
        pids = [p for proc, _ in started for p in _tree(proc.pid)]
        cpu0 = _cpu_total(pids)
        calls0 = _redis_calls(redis_port) if redis_port else None
        ports = [port for _, port in started]
        client0 = time.process_time()
        samples, took = await _closed_loop(
            lambda i: _sse_one(ports[(i // 100_000) % len(ports)], i), clients, seconds)
        cpu = _cpu_total(pids) - cpu0
        client_cpu = (time.process_time() - client0) / took
        calls = None
        if redis_port and calls0 is not None:
            calls1 = _redis_calls(redis_port)
            calls = (calls1[0] - calls0[0], calls1[1] - calls0[1])
        rss = sum(_rss_mb(p) for p in pids)
    finally:
        for proc, _ in started:
            proc.send_signal(signal.SIGINT)
        for proc, _ in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ok = sum(1 for s in samples if s.ok)
    return Result(name, samples, took, ok * per_stream, cpu, rss, calls,
                  {"client_cores": client_cpu, "server_cores": cpu / took})


def _row(r: Result, base: Result) -> str:
    def q(res: Result, attr: str, p: float) -> float:
        return _pct([getattr(s, attr) for s in res.samples if s.ok], p)

    added = [q(r, "ttft_s", 0.5) - q(base, "ttft_s", 0.5),
             q(r, "ttft_s", 0.99) - q(base, "ttft_s", 0.99),
             q(r, "total_s", 0.99) - q(base, "total_s", 0.99)]
    eps = r.events / r.seconds
    cpu_us = f"{r.cpu_s / r.events * 1e6:.0f}" if r.events and r.cpu_s else "-"
    rss = f"{r.rss_mb:.0f}" if r.rss_mb else "-"
    ops = "- | -"
    if r.redis_calls is not None and r.streams:
        ops = f"{r.redis_calls[0] / r.streams:.1f} | {r.redis_calls[1] / r.streams:.1f}"
    fails = sum(1 for s in r.samples if not s.ok)
    cells = " | ".join(f"{a:+.0f}" for a in added) if r is not base else "- | - | -"
    cores = (f"{r.extra['server_cores']:.2f} / {r.extra['client_cores']:.2f}"
             if r.extra else "-")
    return (f"| {r.name} | {r.streams} | {eps:,.0f} | {cells} | {cpu_us} | {rss} | {ops} "
            f"| {cores} | {fails} |")


def _plot(results: list[Result], base: Result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    eps = [r.events / r.seconds for r in results]
    p99 = [_pct([s.total_s for s in r.samples if s.ok], 0.99)
           - _pct([s.total_s for s in base.samples if s.ok], 0.99) for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.barh(names, eps, color="#4c78a8")
    ax1.set_xlabel("events/s delivered")
    ax2.barh(names, p99, color="#e45756")
    ax2.set_xlabel("added total p99 vs library (ms)")
    ax2.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is required (Debian package redis-server)")
    redis_port = _free_port()
    redis_proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL)
    per_stream = args.tokens + 4  # route, start, text per token, done
    base_cfg = _config(args.tokens, args.ttft_ms, args.tokens_per_s)
    base_cfg["server"]["retention_s"] = 30
    shared_cfg = {**base_cfg, "state": {"backend": "redis",
                                        "url": f"redis://127.0.0.1:{redis_port}/0"}}
    tmp = tempfile.mkdtemp()
    paths = {}
    for label, cfg in (("memory", base_cfg), ("redis", shared_cfg)):
        paths[label] = os.path.join(tmp, f"{label}.yaml")
        with open(paths[label], "w") as f:  # noqa: ASYNC230 - before any load
            yaml.safe_dump(cfg, f)
    try:
        await asyncio.sleep(0.3)
        c, s = args.clients, args.seconds
        lib = await run_library(paths["memory"], c, s, per_stream)
        results = [lib]
        for name, path, workers, instances, rport in (
                ("1 process (memory)", paths["memory"], 1, 1, None),
                ("1 process + Redis", paths["redis"], 1, 1, redis_port),
                ("2 workers + Redis", paths["redis"], 2, 1, redis_port),
                ("2 instances + Redis", paths["redis"], 1, 2, redis_port)):
            results.append(await run_servers(name, path, workers, instances, c, s,
                                             per_stream, rport))
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.clients} concurrent SSE clients, closed loop for {args.seconds:g} s; "
          f"simulated deployment: TTFT {args.ttft_ms:g} ms, {args.tokens_per_s:g} tokens/s, "
          f"{args.tokens} tokens ({per_stream} events) per stream; machine: "
          f"{os.cpu_count()} cores, shared. Added latencies in ms vs the library.\n")
    print("| setup | streams | events/s | added TTFT p50 | added TTFT p99 | added total p99 "
          "| CPU us/event | RSS MB | Redis commands/stream | event-log round trips/stream "
          "| cores used: servers / client | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_row(r, lib))
    one = next(r for r in results if r.name == "1 process + Redis")
    two = next(r for r in results if r.name == "2 workers + Redis")
    ratio = (two.events / two.seconds) / (one.events / one.seconds)
    print(f"\n2 workers / 1 process (both on Redis): {ratio:.2f}x events/s")
    if two.redis_calls is not None and two.streams:
        trips = two.redis_calls[1] / two.streams
        print(f"Event-log round trips per stream (2 workers): {trips:.1f} for {per_stream} "
              f"events (target 3 + {per_stream / 20:.1f}); all Redis commands per stream, "
              f"spend and breakers included: {two.redis_calls[0] / two.streams:.1f}")
    if args.plot:
        _plot(results[1:], lib, args.plot)
        print(f"plot: {args.plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--tokens-per-s", type=float, default=300.0)
    p.add_argument("--plot", default="scale.png", help="PNG to write ('' for none)")
    args = p.parse_args()
    args.plot = plot_path(args.plot)
    try:  # the load generator's own cost competes with the servers for the same cores
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
