"""Per-chunk CPU of each provider adapter versus the floor: raw httpx + orjson.

    python -m benchmarks.adapters [--chunks 2000] [--reps 7]

The loopback provider server (`router.testing`) runs in a child process and streams the
same scripted answer (`--chunks` text chunks, then usage and the terminal marker) in each
wire protocol. In this process, for each protocol, we drain that stream once with the
adapter (`provider.stream()`, every delta built) and once with the floor — `httpx`
`aiter_lines()` plus `orjson.loads` of every data payload — and measure process CPU time
(`time.process_time`), alternating the two over `--reps` repetitions after a warm-up. The
table shows the median µs per chunk and the adapter/floor ratio (target: at most 1.3x).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from providers.base import ProviderRequest, ProviderSettings, create_provider, make_client

PROTOCOLS = ("openai", "openai_responses", "anthropic", "ollama", "gemini")
PATHS = {"openai": "/v1/chat/completions", "openai_responses": "/v1/responses",
         "anthropic": "/v1/messages", "ollama": "/api/chat",
         "gemini": "/v1beta/models/bench:streamGenerateContent?alt=sse"}
MODEL = "bench"


def _serve(conn: Connection, chunks: int) -> None:
    """Child process: run the loopback server until the parent says stop."""
    from router.testing import LoopbackProvider, Reply

    async def main() -> None:
        text = tuple(f" tok{i}" for i in range(chunks))
        reply = Reply(text=text, input_tokens=100, output_tokens=chunks)
        async with LoopbackProvider(reply) as srv:
            conn.send(srv.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def _settings(protocol: str, base: str) -> ProviderSettings:
    return ProviderSettings(name=protocol, kind=protocol,
                            base_url=base + "/v1" if protocol.startswith("openai") else base,
                            api_key=SecretStr("sk-bench"), read_timeout_s=60.0)


async def _floor(client: httpx.AsyncClient, protocol: str, base: str) -> int:
    """Read lines, `orjson.loads` each data payload: the least any client must do."""
    body: dict[str, Any] = {"model": MODEL, "stream": True,
                            "messages": [{"role": "user", "content": "go"}]}
    if protocol == "openai":
        body["stream_options"] = {"include_usage": True}
    loads = orjson.loads
    n = 0
    async with client.stream("POST", base + PATHS[protocol], content=orjson.dumps(body),
                             headers={"content-type": "application/json"}) as response:
        if protocol == "ollama":
            async for line in response.aiter_lines():
                if line:
                    loads(line)
                    n += 1
        else:
            async for line in response.aiter_lines():
                if line.startswith("data:") and line != "data: [DONE]":
                    loads(line[5:])
                    n += 1
    return n


async def _measure(fn: Callable[[], Awaitable[int]]) -> float:
    start = time.process_time()
    await fn()
    return time.process_time() - start


async def _bench(base: str, chunks: int, reps: int) -> list[tuple[str, float, float]]:
    request = ProviderRequest(model=MODEL, messages=[{"role": "user", "content": "go"}])
    rows = []
    for protocol in PROTOCOLS:
        settings = _settings(protocol, base)
        client = make_client(settings)
        provider = create_provider(settings, client=client)

        async def adapter(provider: Any = provider) -> int:
            n = 0
            async for _ in provider.stream(request):
                n += 1
            return n

        async def floor(client: httpx.AsyncClient = client, protocol: str = protocol) -> int:
            return await _floor(client, protocol, base)

        await adapter()  # warm-up: connection, caches
        await floor()
        floors, adapters = [], []
        for _ in range(reps):
            floors.append(await _measure(floor))
            adapters.append(await _measure(adapter))
        await client.aclose()
        rows.append((protocol, statistics.median(floors) / chunks * 1e6,
                     statistics.median(adapters) / chunks * 1e6))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, args.chunks), daemon=True)
    server.start()
    try:
        port = parent.recv()
        rows = asyncio.run(_bench(f"http://127.0.0.1:{port}", args.chunks, args.reps))
    finally:
        parent.send("stop")
        server.join(5)
        if server.is_alive():
            server.terminate()
    print(f"Adapter CPU per chunk, {args.chunks} chunks, median of {args.reps} "
          "(process_time, server in another process)\n")
    print("| adapter | floor µs/chunk | adapter µs/chunk | ratio |")
    print("|---|---:|---:|---:|")
    for protocol, floor_us, adapter_us in rows:
        print(f"| {protocol} | {floor_us:.1f} | {adapter_us:.1f} | "
              f"{adapter_us / floor_us:.2f}x |")


if __name__ == "__main__":
    main()
