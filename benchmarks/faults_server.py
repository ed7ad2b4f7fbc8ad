"""The server rows of `python -m benchmarks.faults`: a real `llm-router serve` process on a
real redis-server, `--streams` concurrent SSE clients (each starts its next request when one
ends, from two loopback source addresses), and

- `sigterm`: SIGTERM mid-load. Every stream must end with exactly one terminal event: `done`
  (finished within `server.shutdown_grace_s`) or `error cancelled`, retryable, with the
  resume hint. Spend booked must equal the `done.cost_usd` delivered plus the cut streams'
  partial spend, which the client computes from what it received (the input tokens every
  `done` reports for this prompt, and the output counted from the text deltas as the ledger
  counts them, at the deployment's prices).
- `slow`: 500 slow clients beside the load, from two other addresses, each in a loop: open
  a connection, send part of its headers (or all headers and part of a body, or nothing),
  wait until the server closes it, again. They must all be closed by the server (408) while
  every legitimate stream is served.

The server's event-loop lag comes from its own `/metrics` (`llm_router_event_loop_lag_*`,
a 10 ms ticker): the p99 is the histogram bucket's upper bound, scraped before SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.faults import Tally, count, fleet, settle_down
from benchmarks.server_load import _free_port, _wait_ready
from providers.base import estimate_tokens
from router.config import parse_config
from router.core import Router
from router.routing.cost import cost_of
from router.testing.redis_server import RedisServer

# One server process and its 300 clients share this machine's cores: its time to first
# token under that load is seconds (issue 11), so the server rows allow a longer total.
TOTAL_S = 10.0
GRACE_S = 0.5  # shorter than an answer (~1 s): about half finish, half are cut
SLOW_CLIENTS = 500
SLOW_LIMITS = {"header_timeout_s": 2.0, "body_timeout_s": 2.0}
LEGIT_FROM = ("127.0.1.1", "127.0.1.2")
SLOW_FROM = ("127.0.2.1", "127.0.2.2")
PARTIAL = {
    "headers": b"POST /v1/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n",
    "body": b"POST /v1/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{\"input\": ",
    "nothing": b"",
}


@dataclass
class Cut:
    """What the client saw of the streams the shutdown cut."""

    streams: int = 0
    output_tokens: dict[str, int] = field(default_factory=Counter)  # by deployment
    by_deployment: dict[str, int] = field(default_factory=Counter)  # cut streams
    without_hint: int = 0
    unanswered: int = 0  # connections closed before any response (safe to retry)
    gaps: int = 0  # events missing before the terminal one (by `id:`): must be 0
    input_tokens: int = 0  # of this prompt, from any `done`


async def sse_stream(session: aiohttp.ClientSession, url: str, user: str, tally: Tally,
                     cut: Cut) -> bool:
    """One stream, counted in `tally` (and `cut`); False when the server refused the
    connection (it stopped accepting)."""
    event, dep, tokens, end, gaps, last_id = "", "", 0, None, 0, -1
    answered = False
    try:
        async with session.post(url, json={"input": "Explain leases",
                                           "metadata": {"user": user}}) as resp:
            answered = True
            if resp.status != 200:
                body = await resp.read()
                code = orjson.loads(body).get("error", {}).get("code", "?")
                count(tally, ["error", f"http {resp.status} {code}", 0.0])
                return True
            async for raw in resp.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"id: "):
                    seq = int(line[4:])
                    gaps += seq != last_id + 1
                    last_id = seq
                elif line.startswith(b"event: "):
                    event = line[7:].decode()
                elif not line.startswith(b"data: "):
                    continue
                elif event == "text":  # counted as the ledger counts a cut stream's output
                    tokens += estimate_tokens(orjson.loads(line[6:])["delta"]) or 1
                elif event == "start":
                    dep = orjson.loads(line[6:])["deployment"]
                elif event in ("done", "error"):
                    end = (event, orjson.loads(line[6:]))
    except aiohttp.ClientConnectorError:
        return False
    except aiohttp.ClientError:
        if not answered:  # accepted, never read: the server closed it unanswered at exit
            cut.unanswered += 1
            return False
    if end is None:
        count(tally, ["none", "", 0.0])
    elif end[0] == "done":
        count(tally, ["done", "", end[1]["cost_usd"]])
        cut.input_tokens = end[1]["usage"]["input_tokens"]
    else:
        data = end[1]
        count(tally, ["error", data["code"], 0.0])
        if data["code"] == "cancelled":
            cut.streams += 1
            cut.output_tokens[dep] += tokens
            cut.by_deployment[dep] += 1
            cut.gaps += gaps
            cut.without_hint += not (data["retryable"] and "retry" in (data["suggestion"] or ""))
    return True


async def legit_load(port: int, streams: int, stop: asyncio.Event, tally: Tally,
                     cut: Cut) -> None:
    url = f"http://127.0.0.1:{port}/v1/stream"
    sessions = [aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True, local_addr=(addr, 0)),
        timeout=aiohttp.ClientTimeout(total=60)) for addr in LEGIT_FROM]

    async def worker(i: int) -> None:
        session = sessions[i % len(sessions)]
        await asyncio.sleep(i / streams)  # staggered over one answer's time: not in lockstep
        while not stop.is_set():
            if not await sse_stream(session, url, f"u{i % 50}", tally, cut):
                return

    try:
        await asyncio.gather(*(worker(i) for i in range(streams)))
    finally:
        for s in sessions:
            await s.close()


@dataclass
class Slow:
    connections: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # first status line, or "none"
    held_s: list[float] = field(default_factory=list)
    not_closed: int = 0  # still open 30 s after it was made: must be 0


async def slow_client(port: int, i: int, stop: asyncio.Event, slow: Slow) -> None:
    kind = list(PARTIAL)[i % len(PARTIAL)]
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(SLOW_FROM[i % len(SLOW_FROM)], 0))
        except OSError:
            slow.answers["connect refused"] += 1
            await asyncio.sleep(0.1)
            continue
        slow.connections += 1
        try:
            if PARTIAL[kind]:
                writer.write(PARTIAL[kind])
            answer = await asyncio.wait_for(reader.read(), 30)  # to the server's close
            status = answer.split(b"\r\n", 1)[0].decode(errors="replace")[9:] or "none"
            slow.answers[f"{kind}: {status}"] += 1
            slow.held_s.append(time.perf_counter() - t0)
        except TimeoutError:
            slow.not_closed += 1
        except OSError:
            slow.answers[f"{kind}: reset"] += 1
        finally:
            writer.close()


def start_server(path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(path), "--port",
             str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def server_lag(port: int) -> tuple[float, float]:
    """(p99 upper bound, max) of the server's event-loop lag, in seconds, from /metrics."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    buckets, worst = [], 0.0
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == "llm_router_event_loop_lag_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "llm_router_event_loop_lag_max_seconds":
                worst = sample.value
    total = buckets[-1][1] if buckets else 0.0
    p99 = next((le for le, n in sorted(buckets) if n >= 0.99 * total), 0.0)
    return p99, worst


async def run_fault(key: str, streams: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        redis = await asyncio.to_thread(RedisServer, tmp)
        try:
            return await _against_server(key, streams, Path(tmp), redis.url)
        finally:
            await asyncio.to_thread(redis.stop)


async def _against_server(key: str, streams: int, tmp: Path, url: str) -> dict[str, Any]:
    data = fleet(url, f"bench{time.monotonic_ns()}:")
    data["server"] = {"shutdown_grace_s": GRACE_S, "limits": SLOW_LIMITS}
    data["resilience"]["timeouts"]["total_s"] = TOTAL_S
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    port = _free_port()
    proc = start_server(path, port, tmp / "server.log")
    tally, cut, slow, stop = Tally(), Cut(), Slow(), asyncio.Event()
    try:
        await _wait_ready(port, proc)
        slow_tasks = [asyncio.create_task(slow_client(port, i, stop, slow))
                      for i in range(SLOW_CLIENTS if key == "slow" else 0)]
        load = asyncio.create_task(legit_load(port, streams, stop, tally, cut))
        await asyncio.sleep(6 if key == "sigterm" else 12)
        lag = await server_lag(port)
        t_term = time.perf_counter()
        if key == "sigterm":
            proc.send_signal(signal.SIGTERM)  # mid-load: every stream is open
        stop.set()
        await asyncio.wait_for(asyncio.gather(load, *slow_tasks), 60)
        if key != "sigterm":
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        exit_s = time.perf_counter() - t_term
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    loaded = parse_config(data, "faults.yaml", env={})
    r = Router(loaded)
    booked, reserved = await settle_down(r, wait_lease=True,
                                         lease_s=TOTAL_S + data["state"]["lease_slack_s"])
    await r.aclose()
    # Each cut stream's input, and its output as the clients counted it. (A cut stream
    # without a `start`, none here, would have cost nothing.)
    cut_usd = sum(cost_of(loaded.deployments[d].price, cut.input_tokens * streams, 0,
                          cut.output_tokens[d]).total_usd
                  for d, streams in cut.by_deployment.items() if d)
    row = {**tally.as_json(), "lags": [], "lag_p99_max": lag, "booked_usd": booked,
           "cut_checked": True,
           "reserved_usd": reserved, "cut_usd": cut_usd, "cut_streams": cut.streams,
           "exit": f"exit {code} {exit_s:.1f} s after SIGTERM"}
    if key == "sigterm":
        row["note"] = (f"{cut.streams} cut by the shutdown after {GRACE_S:g} s of grace, "
                       f"{cut.without_hint} without retryable + hint, {cut.gaps} missing ids; "
                       f"server {row['exit']}; after it {cut.unanswered} connections closed "
                       "with no response (request not read: safe to retry), new ones refused")
    else:
        held = sorted(slow.held_s) or [0.0]
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(slow.answers.items()))
        row["note"] = (f"{SLOW_CLIENTS} slow clients made {slow.connections} connections: "
                       f"{answers}; still open after 30 s: {slow.not_closed}; held p50 "
                       f"{held[len(held) // 2]:.1f} s, max {held[-1]:.1f} s (deadlines "
                       f"{SLOW_LIMITS['header_timeout_s']:g} s)")
    return row
