"""Soak: many concurrent streams through the router against a loopback provider that fails
about one request in ten, in every way the fault matrix knows.

    python -m benchmarks.soak [--streams 2000] [--concurrency 100] [--fault-rate 0.1]
                              [--wire openai|anthropic|ollama] [--seed 1]

The loopback server (`router.testing`) runs in a child process. Its primary deployment gets a
shuffled script of replies: `fault-rate` of them faulty (429 with and without Retry-After,
500, 503, 529, reset, no response, slow first token, cut, stall, malformed chunk, missing
terminal marker, in-stream error), the rest whole answers. The fallback deployment always
answers in full, and has no prefill, so rescues after tokens use the explicit continuation
request — the loopback server repeats the whole answer, and the splice must remove what
the caller already has. Every stream's text is checked against the answer.

Reported: streams completed (a `done`), of which rescued (after a `fallback`), failed (an
`error` event), wrong text, unhandled exceptions (must be 0), wall time, peak RSS of this
process, and sockets open in this process and on the server after the router is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

ANSWER = "Soak answer: the router keeps streaming while providers fail around it."


def _script(n: int, fault_rate: float, seed: int) -> list[Any]:
    from router.testing import Reply

    full = Reply.from_text(ANSWER)
    faults = [
        Reply.rate_limited(retry_after=0.05), Reply.rate_limited(), Reply.server_error(),
        Reply.unavailable(), Reply.overloaded(), Reply.reset(), Reply.no_response(),
        full.slow(5.0), full.cut(3), full.stall(3), full.malformed(3),
        full.without_terminal(), full.stream_error(3),
    ]
    rng = random.Random(seed)
    return [rng.choice(faults) if rng.random() < fault_rate else full for _ in range(n)]


def _serve(conn: Connection, n: int, fault_rate: float, seed: int) -> None:
    """Child process: the loopback server, scripted, until the parent says stop."""
    from router.testing import LoopbackProvider, Reply

    async def main() -> None:
        async with LoopbackProvider(Reply.from_text(ANSWER)) as srv:
            srv.enqueue(*_script(n, fault_rate, seed), model="primary")
            conn.send(srv.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            conn.send({"open_connections": srv.open_connections,
                       "active_streams": srv.active_streams, "requests": len(srv.requests)})

    asyncio.run(main())


def _config(wire: str, base_url: str) -> dict[str, Any]:
    provider: dict[str, Any] = {
        "openai": {"kind": "openai_compatible", "base_url": base_url + "/v1", "api_key": "sk-x"},
        "anthropic": {"kind": "anthropic", "base_url": base_url, "api_key": "sk-ant-x"},
        "ollama": {"kind": "ollama", "base_url": base_url},
    }[wire]
    price = {"input_per_mtok": 1.0, "output_per_mtok": 4.0}
    prior = {"ttft_ms": 100, "tokens_per_s": 100}
    return {
        "version": 1, "providers": {"lb": provider},
        "deployments": [
            {"id": "primary", "provider": "lb", "model": "primary", "price": price,
             "latency_prior": prior, "quality": 0.9, "context_window": 100000},
            {"id": "fallback", "provider": "lb", "model": "fallback", "price": price,
             "latency_prior": prior, "quality": 0.5, "context_window": 100000},
        ],
        "tasks": {"t": {"candidates": ["primary", "fallback"], "prefer": "quality"}},
        "defaults": {"task": "t", "max_tokens": 200},
        "resilience": {
            "retry": {"attempts": 2, "initial_backoff_ms": 20, "max_backoff_ms": 500},
            # A soak wants every stream to try the primary: keep its breaker from opening.
            "breaker": {"fail_max": 1000, "reset_timeout_s": 1},
            # Generous deadlines: 100 concurrent streams share a busy 2-core machine here.
            "timeouts": {"connect_s": 5, "ttft_s": 3.0, "idle_s": 3.0, "total_s": 60},
        },
    }


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


async def _run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    from router.config import parse_config
    from router.core import Router

    router = Router(parse_config(_config(args.wire, f"http://127.0.0.1:{port}"), "soak", env={}))
    counts: Counter[str] = Counter()
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        async with sem:
            try:
                text: list[str] = []
                kinds: set[str] = set()
                async for ev in router.stream(f"Request {i}: say the soak answer"):
                    kinds.add(ev.type)
                    if ev.type in ("fallback", "retry"):
                        counts[f"{ev.type}: {ev.error}"] += 1
                    if ev.type == "text":
                        text.append(ev.delta)
                if "done" in kinds:
                    counts["completed"] += 1
                    counts["rescued"] += "fallback" in kinds
                    counts["wrong text"] += "".join(text) != ANSWER
                else:
                    counts["failed"] += 1
            except Exception:  # the point of the soak: there must be none
                counts["unhandled exceptions"] += 1

    sockets_before = _sockets()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.streams)))
    wall = time.perf_counter() - t0
    await router.aclose()
    await asyncio.sleep(0)
    tasks_left = len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
    return {"counts": counts, "wall": wall, "tasks_left": tasks_left,
            "sockets": _sockets() - sockets_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--wire", choices=("openai", "anthropic", "ollama"), default="openai")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    # Each faulty first attempt may be retried once on the primary: script enough replies.
    proc = multiprocessing.Process(target=_serve, daemon=True,
                                   args=(child, 2 * args.streams, args.fault_rate, args.seed))
    proc.start()
    port = parent.recv()
    result = asyncio.run(_run(args, port))
    parent.send("stop")
    server = parent.recv()
    proc.join(5)
    c = result["counts"]
    rows = [
        ("streams", args.streams), ("concurrency", args.concurrency),
        ("injected fault rate", f"{args.fault_rate:.0%} of primary replies ({args.wire})"),
        ("completed", c["completed"]), ("  of which rescued", c["rescued"]),
        ("  of which wrong text", c["wrong text"]), ("failed (error event)", c["failed"]),
        ("unhandled exceptions", c["unhandled exceptions"]),
        ("wall time", f"{result['wall']:.1f} s ({args.streams / result['wall']:.0f} streams/s)"),
        ("peak RSS (router process)",
         f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"),
        ("sockets opened and not closed (router)", result["sockets"]),
        ("connections open after (server)", server["open_connections"]),
        ("responses still streaming (server)", server["active_streams"]),
        ("tasks left after", result["tasks_left"]),
        ("requests the server saw", server["requests"]),
        ("retry / fallback events by error", ""),
    ]
    rows += [(f"  {k}", v) for k, v in sorted(c.items()) if ":" in k]
    width = max(len(k) for k, _ in rows)
    print(f"| {'soak':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


if __name__ == "__main__":
    main()
