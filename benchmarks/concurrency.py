"""Many concurrent paced streams over real loopback HTTP: what each client stack (and the
gateway) adds over the provider's own pacing, and what it costs per chunk.

    python -m benchmarks.concurrency [--streams 100,500,2000] [--clients aiohttp,httpx,...]
                                     [--server-streams 200,500,2000] [--ttft-ms 200]
                                     [--chunks 40] [--gap-ms 20]

The provider is `benchmarks.paced_provider` (OpenAI wire, first chunk after 200 ms, then 40
chunks 20 ms apart) in its own process. Every client runs in its own fresh process, so CPU
time and peak RSS are its own; where `taskset` exists the provider is pinned to the last
core and the client (or, for `server`, the gateway) to the first. All streams start at once.

Clients:
- `aiohttp`: raw aiohttp + orjson, the floor (one `ClientSession`, connector limit = streams).
- `httpx`: raw httpx + orjson, one client whose pool is sized to the streams.
- `httpx-pools`: raw httpx over 8 clients of streams/8 connections each, round-robin.
- `httpx-aiohttp`: raw httpx with the `httpx_aiohttp.AiohttpTransport`.
- `pyreqwest`: the Rust (reqwest/hyper) client.
- `router`: `router.stream(...)` on one `openai_compatible` deployment (library level).
- `server`: `llm-router serve` (uvicorn, httptools, uvloop) in its own process; the load
  generator is raw aiohttp in another process (on the provider's core) posting to
  `/v1/chat/completions`, stream=true.
  CPU per chunk is the gateway's own; the load generator's is not counted.
- `load generator alone`: that load generator straight against the mock, on the core it
  shares with the mock in the gateway rows: the floor of those rows.
- `server-granian`: the same app on granian (ASGI, one worker, uvloop, no access log).

Columns: "added" is over the provider's schedule (TTFT 200 ms; total 200 + 39 x 20 ms);
"CPU/chunk" is the process's user+system CPU over the run divided by the chunks received;
"RSS" is peak resident memory; "core wait" is how long the measured process (the gateway,
for gateway rows) was ready to run while another process held its core — on a shared
machine, the part of a latency tail that is not the code's; "errors" counts streams that did
not end with `[DONE]` (or `done`), by error text. An `overloaded` error is a clear refusal,
not a silent failure.

`litellm`: the LiteLLM proxy as the peer gateway, when installed in `.venv-litellm/`
(`python3 -m venv .venv-litellm && .venv-litellm/bin/pip install "litellm[proxy]"`), run
as `litellm --config <file> --num_workers 1` with this config (model `bench` ->
`openai/bench-model` at the mock's `/v1`, master key = the benchmark's key):

    model_list:
      - model_name: bench
        litellm_params: {model: openai/bench-model, api_base: "http://127.0.0.1:<port>/v1",
                         api_key: sk-bench-concurrency}
    general_settings: {master_key: sk-bench-concurrency}
    litellm_settings: {drop_params: true}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-bench-concurrency"
BODY = orjson.dumps({"model": "bench", "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]})
CLIENTS = ("aiohttp", "httpx", "httpx-pools", "httpx-aiohttp", "pyreqwest", "router", "server",
           "server-granian", "litellm")
LITELLM = os.path.join(ROOT, ".venv-litellm", "bin", "litellm")


# --- worker side: one process runs one client stack ---------------------------------------


class Lines:
    """SSE `data:` payloads out of arbitrary byte chunks, the same for every raw client."""

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self.rest + chunk
        lines = data.split(b"\n")
        self.rest = lines.pop()
        return [line[6:] for line in lines if line.startswith(b"data: ")]


async def consume(chunks: AsyncIterator[bytes], t0: float, out: dict[str, Any]) -> None:
    lines = Lines()
    count = 0
    async for chunk in chunks:
        for payload in lines.feed(chunk):
            if payload == b"[DONE]":
                out["total"] = time.perf_counter() - t0
                out["chunks"] += count
                return
            event = orjson.loads(payload)
            if "error" in event:
                raise RuntimeError(str(event["error"].get("code") or event["error"]))
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                if count == 0:
                    out["ttft"] = time.perf_counter() - t0
                count += 1
    raise RuntimeError("body ended before [DONE]")


def _raw_one(n: int, url: str, kind: str) -> tuple[Callable[[], Awaitable[None]],
                                                     Callable[[dict[str, Any]], Awaitable[None]]]:
    """(close, one) for a raw client stack."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    if kind == "aiohttp":
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n),
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=60))

        async def one_aiohttp(out: dict[str, Any]) -> None:
            async with session.post(url, data=BODY, headers=headers) as resp:
                if resp.status != 200:  # a refusal: say which (e.g. 503 overloaded)
                    error = orjson.loads(await resp.read()).get("error") or {}
                    raise RuntimeError(f"HTTP {resp.status} {error.get('code')}")
                await consume(resp.content.iter_any(), out["t0"], out)

        return session.close, one_aiohttp
    if kind == "pyreqwest":
        from pyreqwest.client import ClientBuilder
        client = ClientBuilder().max_connections(n).read_timeout(
            __import__("datetime").timedelta(seconds=60)).build()

        async def chunks_of(resp: Any) -> AsyncIterator[bytes]:
            while (chunk := await resp.body_reader.read_chunk()) is not None:
                yield bytes(chunk)

        async def one_reqwest(out: dict[str, Any]) -> None:
            req = client.post(url).headers(headers).body_bytes(BODY).build_streamed()
            async with req as resp:
                await consume(chunks_of(resp), out["t0"], out)

        return client.close, one_reqwest
    import httpx
    timeout = httpx.Timeout(60, connect=10)
    pools = 8 if kind == "httpx-pools" else 1
    limits = httpx.Limits(max_connections=-(-n // pools), max_keepalive_connections=-(-n // pools))
    if kind == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport
        clients = [httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=timeout)]
    else:
        clients = [httpx.AsyncClient(limits=limits, timeout=timeout) for _ in range(pools)]

    async def one_httpx(out: dict[str, Any]) -> None:
        client = clients[out["i"] % len(clients)]
        async with client.stream("POST", url, content=BODY, headers=headers) as resp:
            await consume(resp.aiter_bytes(), out["t0"], out)

    async def close() -> None:
        for c in clients:
            await c.aclose()

    return close, one_httpx


def router_config(base_url: str, max_concurrency: int | None = None) -> dict[str, Any]:
    deployment: dict[str, Any] = {
        "id": "bench", "provider": "mock", "model": "bench-model",
        "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
        "context_window": 1_000_000, "latency_prior": {"ttft_ms": 200, "tokens_per_s": 50}}
    if max_concurrency is not None:
        deployment["max_concurrency"] = max_concurrency
    return {
        "version": 1,
        "providers": {"mock": {"kind": "openai_compatible", "base_url": base_url,
                               "api_key": KEY}},
        "deployments": [deployment],
        "resilience": {"retry": {"attempts": 1},
                       "timeouts": {"ttft_s": 60, "idle_s": 60, "total_s": 600}},
        # The load generator is one address, as a load balancer in front of the gateway
        # would be: the per-client connection cap (256 by default) must not refuse it.
        "server": {"api_keys": [{"name": "bench",
                                 "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
                   "limits": {"max_connections": 4096, "max_connections_per_client": 4096}},
    }


async def _router_one(n: int, base_url: str) -> tuple[Callable[[], Awaitable[None]],
                                                        Callable[[dict[str, Any]],
                                                                 Awaitable[None]]]:
    from router import Router
    from router.config import parse_config
    r = Router(parse_config(router_config(base_url, max_concurrency=max(n, 1))))

    async def one(out: dict[str, Any]) -> None:
        count = 0
        async for ev in r.stream("hi", model="bench"):
            if ev.type == "text":
                if count == 0:
                    out["ttft"] = time.perf_counter() - out["t0"]
                count += 1
            elif ev.type == "done":
                out["total"] = time.perf_counter() - out["t0"]
                out["chunks"] += count
            elif ev.type == "error":
                raise RuntimeError(ev.code)

    return r.aclose, one


async def run_worker(kind: str, n: int, url: str, repeat: int = 1) -> dict[str, Any]:
    if kind == "router":
        close, one = await _router_one(n, url.rsplit("/chat/completions", 1)[0])
    else:
        close, one = _raw_one(n, url, kind)
    # One warm-up stream, so that imports and first-connection costs are not measured.
    await _run_one(one, {"i": 0, "chunks": 0})
    errors: Counter[str] = Counter()
    outs = [{"i": i, "chunks": 0} for i in range(n * repeat)]

    async def lane(i: int) -> None:  # `repeat` streams one after the other
        for out in outs[i::n]:
            await _run_one(one, out)

    cpu0, wait0 = time.process_time(), _runqueue_wait_s(os.getpid())
    await asyncio.gather(*(lane(i) for i in range(n)))
    cpu, wait = time.process_time() - cpu0, _runqueue_wait_s(os.getpid()) - wait0
    await close()
    for out in outs:
        if "error" in out:
            errors[out["error"]] += 1
    return {"ttft": [o["ttft"] for o in outs if "total" in o],
            "total": [o["total"] for o in outs if "total" in o],
            "chunks": sum(o["chunks"] for o in outs), "cpu_s": cpu,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wait_s": wait, "errors": dict(errors)}


async def _run_one(one: Callable[[dict[str, Any]], Awaitable[None]], out: dict[str, Any]) -> None:
    out["t0"] = time.perf_counter()
    try:
        await one(out)
    except Exception as exc:  # a benchmark counts failures, by kind
        out.pop("total", None)
        out["error"] = f"{type(exc).__name__}: {str(exc)[:60]}"


# --- driver side --------------------------------------------------------------------------


def _pin(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 \
        else []


def _last_core() -> str:
    return str((os.cpu_count() or 1) - 1)


def _spawn_ready(cmd: list[str], env: dict[str, str] | None = None) -> tuple[
        subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{cmd[0:4]} did not start: {line!r}")
    return proc, int(line.split()[1])


def start_provider(args: argparse.Namespace) -> tuple[subprocess.Popen[str], int]:
    return _spawn_ready([*_pin(_last_core()), sys.executable, "-m", "benchmarks.paced_provider",
                         "--ttft-ms", str(args.ttft_ms), "--chunks", str(args.chunks),
                         "--gap-ms", str(args.gap_ms)])


def run_client(kind: str, n: int, url: str, core: str, repeat: int = 1) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        out = subprocess.run([*_pin(core), sys.executable, "-m", "benchmarks.concurrency",
                              "--worker", kind, "--n", str(n), "--url", url,
                              "--repeat", str(repeat), "--out", f.name],
                             capture_output=True, text=True, cwd=ROOT, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{kind} worker failed: {out.stderr[-2000:]}")
        result: dict[str, Any] = json.load(f)
    return result


def litellm_config(provider_port: int) -> dict[str, Any]:
    return {"model_list": [{"model_name": "bench", "litellm_params": {
                "model": "openai/bench-model", "api_key": KEY,
                "api_base": f"http://127.0.0.1:{provider_port}/v1"}}],
            "general_settings": {"master_key": KEY},
            "litellm_settings": {"drop_params": True}}


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (granian serves from a worker process)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in os.listdir(f"/proc/{pids[i]}/task"):
            with contextlib.suppress(OSError), \
                    open(f"/proc/{pids[i]}/task/{task}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        i += 1
    return pids


def _proc_cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _runqueue_wait_s(pid: int) -> float:
    """Time the threads of `pid` and its descendants were ready to run but waited for a
    core (/proc/<pid>/task/*/schedstat, field 2): what other processes on the pinned core
    took. A latency tail that this accounts for is the machine's, not the code's."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
    return total / 1e9


def _proc_rss_mb(pid: int, key: str = "VmHWM") -> float:
    total = 0.0
    for p in _tree(pid):
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith(key):
                    total += int(line.split()[1]) / 1024
    return total


@contextlib.contextmanager
def running_server(provider_port: int, impl: str = "uvicorn") -> Any:
    """`llm-router serve` pinned to the first core, with the default admission limits."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(router_config(f"http://127.0.0.1:{provider_port}/v1"), f)
    if impl == "litellm":  # the peer, from its own venv (see the docstring)
        with open(f.name, "w") as cfg:
            yaml.safe_dump(litellm_config(provider_port), cfg)
        cmd = [LITELLM, "--config", f.name,
               "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    elif impl == "granian":  # one worker, one thread, uvloop, no access log: like uvicorn's
        cmd = ["granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--runtime-mode", "st", "--loop", "uvloop",
               "--no-access-log", "--no-ws", "benchmarks.granian_app:app"]
    else:
        cmd = [sys.executable, "-m", "router.cli", "serve", "--config", f.name,
               "--port", str(port)]
    env = {**os.environ, "LLM_ROUTER_CONFIG": f.name}
    proc = subprocess.Popen([*_pin("0"), *cmd], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # a gateway still busy with a backlog (LiteLLM)
            proc.kill()
            proc.wait(10)
        os.unlink(f.name)


def run_server_case(provider_port: int, n: int, repeat: int = 1,
                    impl: str = "uvicorn") -> dict[str, Any]:
    with running_server(provider_port, impl) as (proc, port):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        run_client("aiohttp", 1, url, _last_core())  # warm-up: imports, first connection
        cpu0, wait0 = _proc_cpu_s(proc.pid), _runqueue_wait_s(proc.pid)
        result = run_client("aiohttp", n, url, _last_core(), repeat)
        result["cpu_s"] = _proc_cpu_s(proc.pid) - cpu0
        result["wait_s"] = _runqueue_wait_s(proc.pid) - wait0  # the gateway's, not the client's
        result["rss_mb"] = _proc_rss_mb(proc.pid)
        return result


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, n: int, r: dict[str, Any], args: argparse.Namespace) -> str:
    base_ttft = args.ttft_ms
    base_total = args.ttft_ms + (args.chunks - 1) * args.gap_ms
    ttft = [t * 1000 - base_ttft for t in r["ttft"]]
    total = [t * 1000 - base_total for t in r["total"]]
    per_chunk = r["cpu_s"] / r["chunks"] * 1e6 if r["chunks"] else float("nan")
    errors = ", ".join(f"{k} x{v}" for k, v in r["errors"].items()) or "0"
    return (f"| {name} | {n} | {_pct(ttft, 0.5):,.0f} | {_pct(ttft, 0.99):,.0f} | "
            f"{_pct(total, 0.99):,.0f} | {per_chunk:,.0f} | {r['rss_mb']:,.0f} | "
            f"{r.get('wait_s', 0.0) * 1000:,.0f} | {errors} |")


def print_zero_delay(args: argparse.Namespace, impl: str) -> None:
    """The gateway's own cost with nothing to wait for: 50 lanes of 40 streams each against
    a provider with no pacing (its latency columns are then over 0 ms, not the schedule)."""
    zero = argparse.Namespace(ttft_ms=0, chunks=args.chunks, gap_ms=0)
    provider, port = start_provider(zero)
    try:
        result = run_server_case(port, 50, repeat=40, impl=impl)
        name = {"uvicorn": "server", "granian": "server-granian"}.get(impl, impl)
        print(row(f"{name}, zero-delay provider, c=50 x 40", 2000, result, zero), flush=True)
    finally:
        provider.terminate()
        provider.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,500,2000")
    parser.add_argument("--server-streams", default="100,200,500,2000")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--ttft-ms", type=float, default=200)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import uvloop
        result = uvloop.run(run_worker(args.worker, args.n, args.url, args.repeat))
        with open(args.out, "w") as f:  # a file, not stdout: some clients' runtimes cut it
            json.dump(result, f)
        return
    provider, port = start_provider(args)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    print("| client | streams | added TTFT p50 ms | added TTFT p99 ms | added total p99 ms | "
          "CPU/chunk µs | RSS MB | core wait ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    try:
        gateways = ("server", "server-granian", "litellm")
        for kind in [c for c in args.clients.split(",") if c and c not in gateways]:
            for n in [int(x) for x in args.streams.split(",") if x]:
                print(row(kind, n, run_client(kind, n, url, "0"), args), flush=True)
        if any(g in args.clients.split(",") for g in gateways):
            # The gateways' load generator alone against the mock, where it runs for them (on
            # the provider's core): what it adds itself is the floor of the gateway rows.
            for n in [int(x) for x in args.server_streams.split(",") if x]:
                print(row("load generator alone (provider's core)", n,
                          run_client("aiohttp", n, url, _last_core()), args), flush=True)
        for impl in ("uvicorn", "granian", "litellm"):
            name = {"uvicorn": "server", "granian": "server-granian"}.get(impl, impl)
            if name not in args.clients.split(","):
                continue
            if impl == "litellm" and not os.path.exists(LITELLM):
                print(f"| litellm | - | not installed ({LITELLM}: see the docstring) |")
                continue
            for n in [int(x) for x in args.server_streams.split(",") if x]:
                print(row(name, n, run_server_case(port, n, impl=impl), args), flush=True)
            print_zero_delay(args, impl)
    finally:
        provider.terminate()
        provider.wait(10)


if __name__ == "__main__":
    main()
