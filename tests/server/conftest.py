"""Fixtures for server tests: the app on uvicorn on a free loopback port, in the test's own
event loop, on a simulated fleet (`tests/conftest.py`).

    async def test_x(serve):
        srv = await serve(keys={"alice": "sk-alice"}, server={"heartbeat_s": 0.05})
        async with srv.client("sk-alice") as c:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette

from router.core import Router
from router.server import create_app

# Slow enough to disconnect mid-stream, fast enough to finish in well under a second.
SLOW = {"ttft_ms": 5, "tokens_per_s": 200, "output_tokens": 60}


def key_entry(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), **extra}


@dataclass
class Served:
    app: Starlette
    router: Router
    server: uvicorn.Server
    base_url: str

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/ws"

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                 timeout=httpx.Timeout(10.0), **kwargs)


@dataclass
class Frame:
    """One parsed SSE frame (or a `:` comment when `comment` is set)."""

    id: int | None = None
    event: str | None = None
    data: Any = None
    comment: str | None = None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Parse an SSE response into frames (WHATWG rules for the fields used here)."""
    cur = Frame()
    # One line iterator per response, so a test can stop reading and go on later.
    lines = response.extensions.setdefault("sse_lines", response.aiter_lines())
    async for line in lines:
        if line == "":
            if cur.event is not None or cur.data is not None or cur.id is not None:
                yield cur
            cur = Frame()
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                cur.id = int(value)
            elif field == "event":
                cur.event = value
            elif field == "data":
                cur.data = orjson.loads(value)


async def read_until_terminal(response: httpx.Response) -> list[Frame]:
    out = []
    async for f in frames(response):
        if f.comment is None:
            out.append(f)
            if f.event in ("done", "error"):
                break
    return out


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait (polling the loop, not sleeping a fixed time) until `check()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
async def serve(fleet: Any) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """`await serve(keys={name: key}, server={...}, options={dep: {...}}, budgets=gate,
    config=None)`: the app serving a Router on a loopback port; stopped after the test."""
    running: list[tuple[Served, asyncio.Task[None]]] = []

    async def start(*, keys: Mapping[str, str] | None = None,
                    server: Mapping[str, Any] | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None,
                    key_options: Mapping[str, Mapping[str, Any]] | None = None,
                    budgets: Any = None, config: Mapping[str, Any] | None = None,
                    log_level: str = "warning") -> Served:
        data = dict(config) if config is not None else fleet.config(options=options)
        api_keys = [key_entry(n, k, **(key_options or {}).get(n, {}))
                    for n, k in (keys or {}).items()]
        data["server"] = {**data.get("server", {}), **(server or {}), "api_keys": api_keys}
        router = Router(fleet.load(data), budgets=budgets)
        app = create_app(router, close_router=True)
        cfg = uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level,
                             lifespan="on", timeout_graceful_shutdown=5)
        srv = uvicorn.Server(cfg)
        task = asyncio.create_task(srv.serve())
        while not srv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        port = srv.servers[0].sockets[0].getsockname()[1]
        served = Served(app, router, srv, f"http://127.0.0.1:{port}")
        running.append((served, task))
        return served

    yield start
    for served, task in running:
        served.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
