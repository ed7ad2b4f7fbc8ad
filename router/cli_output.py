"""What the CLI prints besides tables: events as JSON with costs rounded for display,
the answer apart from the reasoning, and the state store's reachability; and how it
recognises the errors it turns into one line (a missing extra, an unreachable Redis)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from router.events import Event, RouteEvent, encode_event
from router.state.store import StateUnavailable

# The extra that installs a top-level module (a `No module named ...` becomes a hint).
EXTRAS = {"uvicorn": "server", "starlette": "server", "prometheus_client": "server",
          "redis": "redis"}


def is_redis_error(exc: BaseException) -> bool:
    # redis-py's errors, recognised without importing redis (an optional extra), and the
    # state layer's own (its message names the store without credentials).
    return isinstance(exc, StateUnavailable) or any(
        c.__module__.startswith("redis.") for c in type(exc).__mro__)


def round_usd(data: Any) -> Any:
    """`data` with every `*_usd` float rounded to 1e-12 USD (display only)."""
    if isinstance(data, dict):
        return {k: round(v, 12) if k.endswith("_usd") and isinstance(v, float)
                else round_usd(v) for k, v in data.items()}
    if isinstance(data, list):
        return [round_usd(v) for v in data]
    return data


def event_json(ev: Event) -> str:
    if ev.type in ("route", "done", "budget"):  # the events that carry costs
        return orjson.dumps(round_usd(ev.model_dump(mode="json"))).decode()
    return encode_event(ev).decode()


class StreamOutput:
    """Where `stream` writes: the answer on stdout; reasoning (unless hidden) on stderr, as
    its own paragraph, so the answer is never glued to it."""

    def __init__(self, show_reasoning: bool) -> None:
        self.show_reasoning = show_reasoning
        self.reasoning_open = False
        self.route: RouteEvent | None = None

    def reasoning(self, delta: str) -> None:
        if not self.show_reasoning:
            return
        if not self.reasoning_open:
            sys.stderr.write("reasoning: ")
            self.reasoning_open = True
        sys.stderr.write(delta)
        sys.stderr.flush()

    def end_reasoning(self) -> None:
        if self.reasoning_open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.reasoning_open = False


def state_problem(backend: str, url: str, timeout_s: float = 2.0) -> str | None:
    """Why the configured state store cannot be reached now (None when it answers a PING
    within `timeout_s`). Without the `redis` extra the import fails: the CLI names it."""
    if backend != "redis":
        return None
    import redis.asyncio as aioredis

    async def ping() -> None:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                         socket_timeout=timeout_s)
        try:
            await asyncio.wait_for(client.ping(), timeout_s)
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:  # any failure to reach it is the report
        return f"Redis at {without_password(url)} is unreachable ({exc or type(exc).__name__})"
    return None


def without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"
