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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette

from router.config import parse_config
from router.core import Router
from router.events import DoneEvent, Event, TextEvent
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


@contextlib.asynccontextmanager
async def uvicorn_on_loopback(app: Any, **config: Any) -> AsyncIterator[tuple[uvicorn.Server,
                                                                              str]]:
    """Run `app` under uvicorn on a free loopback port, in this event loop, for the block:
    `async with uvicorn_on_loopback(app) as (server, base_url): ...`."""
    config = {"log_level": "warning", "lifespan": "on", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **config))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def base_url(router: Any) -> AsyncIterator[str]:
    """The test module's `router` fixture served by a real uvicorn on loopback (a module
    that builds its server otherwise defines its own `base_url`)."""
    async with uvicorn_on_loopback(create_app(router)) as (_, url):
        yield url


@pytest.fixture
async def serve(fleet: Any) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """`await serve(keys={name: key}, server={...}, options={dep: {...}}, budgets=gate,
    config=None)`: the app serving a Router on a loopback port; stopped after the test."""
    running = contextlib.AsyncExitStack()

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
        srv, url = await running.enter_async_context(uvicorn_on_loopback(
            app, log_level=log_level, timeout_graceful_shutdown=5))
        return Served(app, router, srv, url)

    yield start
    with contextlib.suppress(Exception):
        await running.aclose()


class RecordingRouter:
    """A `Router` that keeps every event it streams, by request id, so a test can compare
    what a client received with what the router said. `id_prefix` is what the endpoint
    puts before the request id in its own ids (`msg_` for the Anthropic API)."""

    def __init__(self, inner: Router, id_prefix: str = "") -> None:
        self._inner = inner
        self._id_prefix = id_prefix
        self.events: dict[str, list[Event]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        self.last_args, self.last_kwargs = args, kwargs
        inner = self._inner.stream(*args, **kwargs)
        return _Recorded(inner, self.events.setdefault(inner.request_id, []))

    def of(self, response_id: str) -> list[Event]:
        return self.events[response_id.removeprefix(self._id_prefix)]

    def done(self, response_id: str) -> DoneEvent:
        end = self.of(response_id)[-1]
        assert isinstance(end, DoneEvent), end
        return end

    def text(self, response_id: str) -> str:
        return "".join(e.delta for e in self.of(response_id) if isinstance(e, TextEvent))


class _Recorded:
    def __init__(self, inner: Any, log: list[Event]) -> None:
        self._inner = inner
        self._log = log
        self.request_id = inner.request_id

    def __aiter__(self) -> _Recorded:
        return self

    async def __anext__(self) -> Event:
        ev: Event = await self._inner.__anext__()
        self._log.append(ev)
        return ev

    async def aclose(self) -> None:
        await self._inner.aclose()


class ScriptedRouter(Router):
    """Streams a fixed event list whatever the request: shapes the simulated provider never
    produces (interleaved parallel tool calls, a restart) reach the client exactly as
    scripted. `config` supplies what the app reads (API keys, tasks, deployments)."""

    def __init__(self, events: list[Event], config: Mapping[str, Any]) -> None:
        super().__init__(parse_config(dict(config)))
        self.script = events

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Scripted(iter(self.script))


class _Scripted:
    request_id = "scripted"

    def __init__(self, script: Iterator[Event]) -> None:
        self._script = script

    def __aiter__(self) -> _Scripted:
        return self

    async def __anext__(self) -> Event:
        try:
            return next(self._script)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        return None


def script(*specs: tuple[type[Any], dict[str, Any]]) -> list[Event]:
    """Events of a scripted stream: `(EventClass, fields)` each, numbered from 0."""
    return [cls(request_id="scripted", seq=i, elapsed_ms=float(i), **fields)
            for i, (cls, fields) in enumerate(specs)]
