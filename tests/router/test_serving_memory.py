"""A served request is freed by reference counting alone: once its stream has ended (done,
rescued by a retry or a failover, or left early by the caller), none of the serving
objects — ledger, attempts, emitter, failover state, the provider stream's decoder and
body — is kept alive by a reference cycle for the cyclic garbage collector to find.

Why a user cares: under hundreds of concurrent streams every object a request leaves for
the collector makes each collection longer, and a collection stops every stream at once
(first tokens wait for it). Checked over real loopback HTTP, with the collector off while
the streams run and `gc.DEBUG_SAVEALL` to see what a collection would have freed."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from router.config import parse_config
from router.core import Router
from router.testing import LoopbackProvider, Reply

PIECES = ("one ", "two ", "three ", "four ", "five")
FULL = Reply(text=PIECES)
# What one request's serving holds: none of their objects may be left in a cycle. (A
# retried request also leaves tenacity's own retry loop, a cycle of its internals.)
OURS = ("router.serving.", "router.events", "router.request", "router.budgets.",
        "providers.transport", "providers.sse", "providers.openai", "providers.http")


def config(base_url: str) -> dict[str, Any]:
    price = {"input_per_mtok": 1.0, "output_per_mtok": 4.0}
    prior = {"ttft_ms": 100, "tokens_per_s": 100}
    return {
        "version": 1,
        "providers": {"lb": {"kind": "openai_compatible", "base_url": base_url + "/v1",
                             "api_key": "sk-test"}},
        "deployments": [
            {"id": "primary", "provider": "lb", "model": "primary", "price": price,
             "context_window": 8000, "latency_prior": prior, "quality": 0.9,
             "max_concurrency": 8},
            {"id": "fallback", "provider": "lb", "model": "fallback", "price": price,
             "context_window": 8000, "latency_prior": prior, "quality": 0.5},
        ],
        "tasks": {"t": {"candidates": ["primary", "fallback"], "prefer": "quality"}},
        "defaults": {"task": "t", "max_tokens": 200},
        "resilience": {"retry": {"attempts": 2, "initial_backoff_ms": 1,
                                 "max_backoff_ms": 5},
                       "timeouts": {"connect_s": 2, "ttft_s": 5, "idle_s": 5,
                                    "total_s": 10}},
    }


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider(FULL) as server:
        yield server
        await server.wait_idle(5.0)


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The collector off, and what `gc.collect()` finds kept in `gc.garbage`."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def left_in_cycles() -> list[str]:
    """The types (of our modules) of the objects only the collector could free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                    if type(o).__module__.startswith(OURS)})
    gc.garbage.clear()
    return found


def runs(types: list[str]) -> list[str]:
    """Event types, a run of `text` events as one."""
    return [t for i, t in enumerate(types) if t != "text" or i == 0 or types[i - 1] != t]


async def to_the_end(r: Router) -> list[str]:
    async with r.stream("hi", max_cost_usd=1.0) as events:  # with a spending limit
        return runs([ev.type async for ev in events])


async def left_early(r: Router) -> list[str]:
    types = []
    async with r.stream("hi") as events:
        async for ev in events:
            types.append(ev.type)
            if ev.type == "text":
                break  # the caller stops reading: the stream is closed by the `async with`
    return types


Scenario = tuple[list[Reply], list[Reply], Callable[..., Awaitable[list[str]]], list[str]]
SCENARIOS: dict[str, Scenario] = {
    "done": ([FULL], [], to_the_end, ["route", "start", "text", "done"]),
    "retried": ([Reply.server_error(), FULL], [], to_the_end,
                ["route", "start", "retry", "start", "text", "done"]),
    "failed over before the first token": (
        [Reply.unavailable()] * 2, [FULL], to_the_end,
        ["route", "start", "retry", "start", "fallback", "start", "text", "done"]),
    "refused": ([Reply.unauthorized()], [], to_the_end, ["route", "start", "error"]),
    "continued after a cut": (
        [FULL.cut(2)], [Reply(text=PIECES[2:])], to_the_end,
        ["route", "start", "text", "fallback", "start", "text", "done"]),
    "left early by the caller": ([FULL], [], left_early, ["route", "start", "text"]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_a_finished_stream_leaves_no_reference_cycle(
        name: str, srv: LoopbackProvider, no_collector: None) -> None:
    primary, fallback, consume, expected = SCENARIOS[name]
    async with Router(parse_config(config(srv.base_url))) as r:
        assert await to_the_end(r) == ["route", "start", "text", "done"]  # warm: the pool
        gc.collect()  # what earlier tests left (a failed one's frames keep its router)
        srv.enqueue(*primary, model="primary")
        srv.enqueue(*fallback, model="fallback")
        assert await consume(r) == expected
        assert left_in_cycles() == []
