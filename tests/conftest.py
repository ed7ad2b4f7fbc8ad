"""Shared fixtures: routers on inline configs of simulated deployments.

Deployments run with `ttft_ms: 0` and `tokens_per_s: 0` unless a test says otherwise, so a
whole stream takes well under a millisecond; latency *priors* are what routing sees, so
routing decisions stay realistic while the streams themselves are instant.

Fixtures: `fleet` (session; `fleet.config(options={id: {...}}, tasks=..., seed=...)`,
`fleet.load`, `fleet.router`, `fleet.sim(router)`, `await fleet.collect(router, prompt, ...)`)
`make_router` (a factory whose routers are closed after the test), and `redis_url` (a
throwaway `redis-server` on loopback, per test module).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest

from providers.simulated import SimulatedProvider
from router.config import LoadedConfig, parse_config
from router.core import Router
from router.events import Event

# Three deployments with realistic priors and prices, streaming instantly.
FLEET: dict[str, Any] = {
    "version": 1,
    "providers": {"sim": {"kind": "simulated", "options": {"seed": 3}}},
    "deployments": [
        {
            "id": "fast", "provider": "sim", "model": "sim-flash",
            "price": {"input_per_mtok": 0.10, "cached_input_per_mtok": 0.01,
                      "output_per_mtok": 0.40},
            "context_window": 32768,
            "latency_prior": {"ttft_ms": 120, "tokens_per_s": 400},
            "quality": 0.55, "capabilities": ["tools"],
            "options": {"ttft_ms": 0, "tokens_per_s": 0},
        },
        {
            "id": "mid", "provider": "sim", "model": "sim-standard",
            "price": {"input_per_mtok": 0.80, "output_per_mtok": 3.20},
            "context_window": 128000,
            "latency_prior": {"ttft_ms": 350, "tokens_per_s": 120},
            "quality": 0.75, "capabilities": ["tools", "prefill"],
            "options": {"ttft_ms": 0, "tokens_per_s": 0},
        },
        {
            "id": "strong", "provider": "sim", "model": "sim-pro",
            "price": {"input_per_mtok": 3.00, "cached_input_per_mtok": 0.30,
                      "output_per_mtok": 15.00},
            "context_window": 200000,
            "latency_prior": {"ttft_ms": 900, "tokens_per_s": 50},
            "quality": 0.92, "capabilities": ["tools", "reasoning", "prefill"],
            "options": {"ttft_ms": 0, "tokens_per_s": 0},
        },
    ],
    "tasks": {
        "general": {"candidates": ["mid", "fast", "strong"], "prefer": "balanced"},
        "cheap": {"candidates": ["strong", "mid", "fast"], "prefer": "cost"},
        "quick": {"candidates": ["strong", "mid", "fast"], "prefer": "latency"},
        "best": {"candidates": ["fast", "mid", "strong"], "prefer": "quality"},
    },
    "defaults": {"task": "general", "max_tokens": 400},
    # One attempt per deployment and no backoff: fault tests stay instant and exact.
    "resilience": {
        "retry": {"attempts": 1, "initial_backoff_ms": 0, "max_backoff_ms": 0},
        "timeouts": {"ttft_s": 5, "idle_s": 5, "total_s": 30},
    },
}


class Fleet:
    """Stateless helpers around FLEET (the `fleet` fixture)."""

    @staticmethod
    def config(
        *,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        tasks: Mapping[str, Any] | None = None,
        seed: int | None = None,
        **top: Any,
    ) -> dict[str, Any]:
        """A copy of FLEET with per-deployment simulated `options` merged in (by id), extra
        `tasks`, the provider `seed`, and other top-level keys replaced."""
        cfg = copy.deepcopy(FLEET)
        for dep in cfg["deployments"]:
            dep["options"].update((options or {}).get(dep["id"], {}))
        cfg["tasks"].update(tasks or {})
        if seed is not None:
            cfg["providers"]["sim"]["options"]["seed"] = seed
        cfg.update(top)
        return cfg

    @staticmethod
    def load(data: Mapping[str, Any], source: str = "test.yaml") -> LoadedConfig:
        return parse_config(copy.deepcopy(dict(data)), source, env={})

    def router(self, data: Mapping[str, Any] | None = None, **kwargs: Any) -> Router:
        """A Router on `data`, or on `config(**kwargs)`."""
        return Router(self.load(data if data is not None else self.config(**kwargs)))

    @staticmethod
    def sim(r: Router, name: str = "sim") -> SimulatedProvider:
        """The router's simulated provider (created on first use)."""
        provider = r.provider(name)
        assert isinstance(provider, SimulatedProvider)
        return provider

    @staticmethod
    async def collect(r: Router, input: Any = "Explain circuit breakers", **options: Any
                      ) -> list[Event]:
        """Every event of one request."""
        return [ev async for ev in r.stream(input, **options)]


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture
async def make_router(fleet: Fleet) -> AsyncIterator[Callable[..., Router]]:
    """`make_router(data=None, **Fleet.config kwargs)`: a Router, closed after the test."""
    routers: list[Router] = []

    def make(data: Mapping[str, Any] | None = None, **kwargs: Any) -> Router:
        r = fleet.router(data, **kwargs)
        routers.append(r)
        return r

    yield make
    for r in routers:
        await r.aclose()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on loopback (no persistence), stopped after the module."""
    from router.testing.redis_server import RedisServer

    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A redis-server of the test's own, to pause, kill and restart."""
    from router.testing.redis_server import RedisServer

    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
