"""Latency the HTTP server adds over calling the library directly, under many concurrent SSE
clients, and the server's memory.

    python -m benchmarks.server_load [--clients 500] [--tokens 40] [--ttft-ms 100]
                                     [--tokens-per-s 50] [--rounds 2]

One simulated deployment (fixed TTFT and output rate, no jitter) serves every request.
First the library alone: `--clients` concurrent `Router.stream()` calls in this process;
then the same load against `llm-router`'s app on uvicorn in a separate process on
127.0.0.1, from `--clients` concurrent raw-socket SSE clients (a hand-written client, so
the client's own cost stays small). For each request we take the time to the first `text`
event (TTFT) and to the `done` event, from the moment the call (or the TCP connect) began.
"added" is server minus library at the same percentile. Server RSS is sampled from /proc
before, during (peak) and after the load. A 1-client run shows the unloaded cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

KEY = "sk-bench-server-load"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "Qualify this lead: ACME Corp, 200 seats, budget approved, wants a demo"


def _config(tokens: int, ttft_ms: float, tokens_per_s: float) -> dict[str, Any]:
    return {
        "version": 1,
        "providers": {"sim": {"kind": "simulated", "options": {"seed": 1}}},
        "deployments": [{
            "id": "bench", "provider": "sim", "model": "sim-bench",
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            "context_window": 1_000_000,
            "latency_prior": {"ttft_ms": ttft_ms, "tokens_per_s": tokens_per_s},
            "options": {"ttft_ms": ttft_ms, "tokens_per_s": tokens_per_s, "jitter": 0,
                        "output_tokens": tokens},
        }],
        "defaults": {"max_tokens": tokens},
        "resilience": {"timeouts": {"ttft_s": 60, "idle_s": 60, "total_s": 600}},
        # The load generator is one client address: lift the per-address connection cap
        # (256 by default) so its streams measure the server, not the cap.
        "server": {"api_keys": [{"name": "bench",
                                 "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
                   "limits": {"max_connections": 4096, "max_connections_per_client": 4096}},
    }


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    ok: bool


# --- the library alone --------------------------------------------------------------------


async def _direct_one(router: Any, i: int, delay_s: float = 0.0) -> Sample:
    await asyncio.sleep(delay_s)
    t0 = time.perf_counter()
    ttft = None
    ok = False
    async for ev in router.stream(f"{PROMPT} #{i}", model="bench"):
        if ttft is None and ev.type == "text":
            ttft = time.perf_counter() - t0
        ok = ev.type == "done"
    return Sample(ttft or float("nan"), time.perf_counter() - t0, ok)


async def run_direct(path: str, clients: int, ramp_s: float) -> list[Sample]:
    from router.core import Router

    router = Router.from_config(path)
    try:
        await _direct_one(router, -1)  # warm up: imports, provider creation
        return list(await asyncio.gather(*(_direct_one(router, i, ramp_s * i / clients)
                                           for i in range(clients))))
    finally:
        await router.aclose()


# --- over HTTP ------------------------------------------------------------------------------


async def _sse_one(port: int, i: int, delay_s: float = 0.0) -> Sample:
    await asyncio.sleep(delay_s)
    body = orjson.dumps({"input": f"{PROMPT} #{i}", "model": "bench"})
    head = (f"POST /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
            f"{KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Accept: text/event-stream\r\n\r\n").encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ttft = None
    ok = False
    try:
        writer.write(head + body)
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            window = tail + data  # markers may straddle reads
            if ttft is None and b"event: text" in window:
                ttft = time.perf_counter() - t0
            if b"event: done" in window:
                ok = True
                break
            if b"event: error" in window:
                break
            tail = window[-16:]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Sample(ttft or float("nan"), time.perf_counter() - t0, ok)


async def run_http(port: int, clients: int, ramp_s: float) -> list[Sample]:
    await _sse_one(port, -1)  # warm up
    return list(await asyncio.gather(*(_sse_one(port, i, ramp_s * i / clients)
                                       for i in range(clients))))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], _rss_mb(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        with contextlib.suppress(OSError):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            ok = b" 200 " in await r.readline()
            w.close()
            if ok:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


def _cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- report ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def _row(name: str, s: list[Sample], base: list[Sample] | None) -> str:
    ttft = [x.ttft_s for x in s if x.ok]
    total = [x.total_s for x in s if x.ok]
    cells = [_pct(ttft, 0.5), _pct(ttft, 0.99), _pct(total, 0.5), _pct(total, 0.99)]
    extra = ["-"] * 4
    if base is not None:
        bt = [x.ttft_s for x in base if x.ok]
        bl = [x.total_s for x in base if x.ok]
        extra = [f"{cells[0] - _pct(bt, 0.5):+.1f}", f"{cells[1] - _pct(bt, 0.99):+.1f}",
                 f"{cells[2] - _pct(bl, 0.5):+.1f}", f"{cells[3] - _pct(bl, 0.99):+.1f}"]
    fails = sum(1 for x in s if not x.ok)
    return (f"| {name} | {len(s)} | " + " | ".join(f"{c:.1f}" for c in cells) + " | "
            + " | ".join(extra) + f" | {fails} |")


async def main_async(args: argparse.Namespace) -> None:
    cfg = _config(args.tokens, args.ttft_ms, args.tokens_per_s)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
        path = f.name
    port = _free_port()
    profile = ["--profile", args.profile] if args.profile else []
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, "-m", "benchmarks.server_load", "--serve", path, "--port", str(port),
         *profile], cwd=ROOT)
    rows = []
    rss: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}
    lib_cpu: dict[str, float] = {}
    try:
        await _wait_ready(port, proc)
        rss["idle"] = _rss_mb(proc.pid)
        peak = [0.0]
        for n, ramp, label in ((1, 0.0, "1 client"), (args.clients, 0.0, "burst"),
                               (args.clients, args.ramp_s, f"ramp {args.ramp_s:g} s")):
            for r in range(args.rounds):
                lib0 = time.process_time()
                direct = await run_direct(path, n, ramp)
                lib_cpu[label] = time.process_time() - lib0
                stop = asyncio.Event()
                sampler = asyncio.create_task(_sample_rss(proc.pid, peak, stop))
                u0, s0 = _cpu_s(proc.pid)
                http = await run_http(port, n, ramp)
                u1, s1 = _cpu_s(proc.pid)
                cpu[label] = (u1 - u0, s1 - s0)
                stop.set()
                await sampler
                rows.append(_row(f"{label}: library, round {r + 1}", direct, None))
                rows.append(_row(f"{label}: server (SSE), round {r + 1}", http, direct))
        rss["peak"] = peak[0]
        await asyncio.sleep(1.0)
        rss["after"] = _rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        os.unlink(path)
    print(f"\nSimulated deployment: TTFT {args.ttft_ms:g} ms, {args.tokens_per_s:g} tokens/s, "
          f"{args.tokens} tokens per answer; {args.rounds} rounds each; times in ms from "
          "call/connect.\n")
    fast = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m) is not None]
    impl = ", ".join(fast) or "asyncio + h11 (uvicorn[standard] adds uvloop + httptools)"
    print(f"uvicorn with {impl}; server in its own process.\n")
    print("| run | clients | TTFT p50 | TTFT p99 | total p50 | total p99 | added TTFT p50 "
          "| added TTFT p99 | added total p50 | added total p99 | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(f"\nServer RSS: idle {rss['idle']:.1f} MB, peak under load {rss['peak']:.1f} MB, "
          f"1 s after {rss['after']:.1f} MB (events are kept server.retention_s for resume).")
    events = args.clients * (args.tokens + 4)
    print(f"CPU per event (~{events} events per {args.clients}-stream run; last round):")
    for label, (user, system) in cpu.items():
        if label != "1 client":
            print(f"  {label}: library (in-process) {lib_cpu[label] / events * 1e6:.0f} us; "
                  f"server process {(user + system) / events * 1e6:.0f} us "
                  f"(user {user / events * 1e6:.0f}, kernel {system / events * 1e6:.0f})")


def serve(path: str, port: int, profile: str | None = None) -> None:
    import uvicorn

    from router.core import Router
    from router.server import create_app

    app = create_app(Router.from_config(path), close_router=True)

    def run() -> None:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                    backlog=4096)

    if profile is None:
        run()
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
        pass
    finally:
        prof.disable()
        prof.dump_stats(profile)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--tokens-per-s", type=float, default=50.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ramp-s", type=float, default=1.0,
                   help="spread client arrivals over this many seconds in the ramp run")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--profile", help="write the server's cProfile stats to this file")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.profile)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
