"""State-store faults under load: `python -m benchmarks.faults [--streams 300]`.

Keeps `--streams` concurrent streams going (each worker starts its next request when one
ends) on simulated deployments, with `state: {backend: redis}` and a budget (so every
request takes a lease), while one fault is injected on a real redis-server:

- `redis paused 20 s`: SIGSTOP, SIGCONT 20 s later;
- `redis killed, restarted`: SIGKILL, started again 5 s later (on its append-only file,
  fsynced on every write, so the restarted Redis has what it acknowledged);
- `instance killed -9`: two router processes on one Redis, one killed -9 mid-load.

A first row without a fault is the baseline (the lag of 300 streams on this machine).
Per fault, a table: requests served (`done`), clear errors (`error` events, by code),
streams without a terminal event (must be 0), spend booked in Redis vs the `done.cost_usd`
delivered (must match; after a kill -9, the cut streams' partial spend is booked too and
shown apart), reservations left after one lease time (must be 0), event-loop lag p99/max.
SIGTERM and 500 slow clients run against a real `llm-router serve` process
(`benchmarks/faults_server.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from router.config import parse_config
from router.core import Router
from router.testing.redis_server import RedisServer

LEASE_S = 4.0  # total_s 3 + slack 1


def fleet(url: str, prefix: str) -> dict[str, Any]:
    sim = {"ttft_ms": 50, "tokens_per_s": 40, "output_tokens": 40}
    return {
        "version": 1,
        "providers": {"sim": {"kind": "simulated", "options": {"seed": 1}}},
        "deployments": [
            {"id": d, "provider": "sim", "model": f"sim-{d}", "options": sim,
             "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
             "context_window": 32768, "latency_prior": {"ttft_ms": 50, "tokens_per_s": 40}}
            for d in ("a", "b")],
        "budgets": [{"scope": "user", "limit_usd": 1000.0}],
        "resilience": {"timeouts": {"total_s": 3.0}},
        "state": {"backend": "redis", "url": url, "prefix": prefix, "lease_slack_s": 1.0,
                  "book_every_s": 0.5},
    }


@dataclass
class Tally:
    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    no_terminal: int = 0
    delivered_usd: float = 0.0
    lags: list[float] = field(default_factory=list)
    echo: bool = False  # a child process: one stdout line per stream end, as it happens

    def as_json(self) -> dict[str, Any]:
        return {"done": self.done, "errors": dict(self.errors), "no_terminal": self.no_terminal,
                "delivered_usd": self.delivered_usd, "lags": self.lags}


async def one_stream(r: Router, user: str, tally: Tally) -> None:
    last = None
    try:
        async for ev in r.stream("Explain leases", metadata={"user": user}):
            last = ev
    except Exception as exc:  # counted: a stream that raised has no terminal event
        end = ["error", "raised:" + type(exc).__name__, 0.0]
    else:
        if last is None or last.type not in ("done", "error"):
            end = ["none", "", 0.0]
        elif last.type == "done":
            end = ["done", "", last.cost_usd]
        else:
            end = ["error", last.code, 0.0]
    count(tally, end)
    if tally.echo:
        print(json.dumps(end), flush=True)


def count(tally: Tally, end: list[Any]) -> None:
    kind, code, cost = end
    if kind == "done":
        tally.done += 1
        tally.delivered_usd += cost
    elif kind == "error":
        tally.errors[code] += 1
    else:
        tally.no_terminal += 1


async def ticker(tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        tally.lags.append(time.perf_counter() - t - 0.01)


async def load(r: Router, streams: int, seconds: float, tally: Tally) -> None:
    end = time.monotonic() + seconds
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        while time.monotonic() < end:
            await one_stream(r, f"u{i % 50}", tally)

    tick = asyncio.create_task(ticker(tally, stop))
    await asyncio.gather(*(worker(i) for i in range(streams)))
    stop.set()
    await tick


async def booked_and_reserved(r: Router) -> tuple[float, float]:
    report = await r.spend(window="day")
    return report.total_usd, sum(b.reserved_usd for b in report.budgets)


async def settle_down(r: Router, wait_lease: bool,
                      lease_s: float = LEASE_S) -> tuple[float, float]:
    """Wait for the journal to empty (bounded), and one lease time when asked."""
    manager: Any = r.budgets
    deadline = time.monotonic() + 60
    while not await manager.journal.flush() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    if wait_lease:
        await asyncio.sleep(lease_s + 0.5)
    return await booked_and_reserved(r)


async def fault_in_process(server: RedisServer, name: str, streams: int) -> dict[str, Any]:
    prefix = f"bench{time.monotonic_ns()}:"
    r = Router(parse_config(fleet(server.url, prefix), "faults.yaml", env={}))
    tally = Tally()
    if name == "none":
        async def inject() -> None:
            return None
        seconds = 12.0
    elif name == "pause":
        async def inject() -> None:
            await asyncio.sleep(2)
            server.pause()
            await asyncio.sleep(20)
            server.resume()
        seconds = 26.0
    else:
        async def inject() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(5)
            await asyncio.to_thread(server.start)
        seconds = 12.0
    await asyncio.gather(load(r, streams, seconds, tally), inject())
    booked, reserved = await settle_down(r, wait_lease=True)
    await r.aclose()
    return {**tally.as_json(), "booked_usd": booked, "reserved_usd": reserved, "cut_usd": 0.0}


CHILD = """
import asyncio, json, sys
from benchmarks.faults import Tally, load
from router.config import load_config
from router.core import Router

async def main():
    r = Router(load_config(sys.argv[1]))
    tally = Tally(echo=True)
    await load(r, int(sys.argv[2]), float(sys.argv[3]), tally)
    print(json.dumps({"lags": tally.lags}), flush=True)
    await r.aclose()

asyncio.run(main())
"""


async def run_child(path: Path, streams: int, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), str(streams), str(seconds),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path.cwd())})


async def child_tally(proc: asyncio.subprocess.Process) -> Tally:
    """What a child's clients received, line by line (up to its death, if killed)."""
    assert proc.stdout is not None
    tally = Tally()
    async for line in proc.stdout:
        item = json.loads(line)
        if isinstance(item, dict):
            tally.lags = item["lags"]
        else:
            count(tally, item)
    await proc.wait()
    return tally


async def fault_instance_kill(server: RedisServer, streams: int) -> dict[str, Any]:
    prefix = f"bench{time.monotonic_ns()}:"
    data = fleet(server.url, prefix)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.yaml"
        path.write_text(yaml.safe_dump(data))
        half = streams // 2
        survivor = await run_child(path, streams - half, 10.0)
        victim = await run_child(path, half, 10.0)
        victim_ends = asyncio.create_task(child_tally(victim))
        survivor_ends = asyncio.create_task(child_tally(survivor))
        await asyncio.sleep(5)
        os.kill(victim.pid, signal.SIGKILL)
        killed = await victim_ends  # what its clients had received by the kill
        alive = await survivor_ends
    r = Router(parse_config(data, "faults.yaml", env={}))
    booked, reserved = await settle_down(r, wait_lease=True)
    await r.aclose()
    delivered = alive.delivered_usd + killed.delivered_usd
    # The victim's open streams were cut by the kill (its clients saw the connection end,
    # not counted as streams without a terminal event): their partial spend, booked
    # incrementally, is the difference.
    return {"done": alive.done + killed.done, "no_terminal": alive.no_terminal + (
        killed.no_terminal), "delivered_usd": delivered,
            "errors": dict(alive.errors + killed.errors), "lags": alive.lags,
            "booked_usd": booked, "reserved_usd": reserved, "cut_usd": booked - delivered,
            "note": "served/errors: both instances (victim up to its kill); lag: survivor. "
                    "\\* The cut partials are booked - delivered: the victim's clients saw "
                    "their connection drop, so what its streams had cost is not known to them"}


HEADER = ("| fault | served | clear errors | no terminal event | done.cost_usd | booked | "
          "cut partials | booked = done + cut | leases left | loop lag p99 / max |\n"
          "|---|---:|---|---:|---:|---:|---:|---|---:|---|")


def table_row(title: str, row: dict[str, Any]) -> str:
    """One row of the table. `cut_checked`: the cut partials were computed by the clients
    from what they received (SIGTERM), not taken as booked - delivered (kill -9)."""
    if "lag_p99_max" in row:  # the server's own /metrics: p99 is a bucket's upper bound
        p99, worst = row["lag_p99_max"]
        lag = f"≤ {p99 * 1000:.0f} / {worst * 1000:.0f} ms"
    else:
        lags = sorted(row["lags"]) or [0.0]
        lag = f"{lags[int(len(lags) * 0.99)] * 1000:.0f} / {lags[-1] * 1000:.0f} ms"
    errors = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or "0"
    expected = row["delivered_usd"] + (row["cut_usd"] if row.get("cut_checked") else 0.0)
    if row["cut_usd"] and not row.get("cut_checked"):
        match = "booked - done, not checked\\*"
    else:
        # Each booking is rounded to a nano-dollar.
        tolerance = 1e-9 * (row["done"] + sum(row["errors"].values()) + 1) * 4
        match = "yes" if abs(row["booked_usd"] - expected) <= tolerance else (
            f"NO (off by ${row['booked_usd'] - expected:+.6f})")
    cut = f"${row['cut_usd']:.6f}" if row["cut_usd"] else "-"
    return (f"| {title} | {row['done']} | {errors} | {row['no_terminal']} | "
            f"${row['delivered_usd']:.6f} | ${row['booked_usd']:.6f} | {cut} | {match} | "
            f"${row['reserved_usd']:.6f} | {lag} |")


FAULTS = {"none": "none", "pause": "Redis paused 20 s", "kill": "Redis killed, restarted",
          "instance": "one of two instances kill -9", "sigterm": "SIGTERM (`serve` process)",
          "slow": "500 slow clients (`serve` process)"}


async def run_fault(key: str, streams: int) -> dict[str, Any]:
    if key in ("sigterm", "slow"):
        from benchmarks.faults_server import run_fault as against_server

        return await against_server(key, streams)
    tmp = tempfile.TemporaryDirectory()
    server = await asyncio.to_thread(RedisServer, tmp.name)
    try:
        return (await fault_instance_kill(server, streams) if key == "instance"
                else await fault_in_process(server, key, streams))
    finally:
        await asyncio.to_thread(server.stop)
        tmp.cleanup()


async def main(streams: int, only: str | None) -> None:
    print(f"{streams} concurrent streams, simulated 40-token answers at 40 tokens/s, "
          f"lease {LEASE_S:.0f} s\n")
    lines, notes = [HEADER], []
    for key, title in FAULTS.items():
        if only and key != only:
            continue
        row = await run_fault(key, streams)
        lines.append(table_row(title, row))
        print(lines[-1], flush=True)
        if "note" in row:
            notes.append(f"- {title}: {row['note']}")
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(notes))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--only", choices=list(FAULTS))
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.only))
