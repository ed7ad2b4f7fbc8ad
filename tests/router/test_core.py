"""`Router.stream()` / `Router.complete()` end to end on the simulated fleet: the event
invariants over many seeded runs (property-based), the `done` event's accounting, typed
errors, routing seen from the stream, and cancellation closing the provider stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core import Completion, EventStream, Router
from router.errors import AuthError, InvalidRequestError, NoRouteError, StreamError
from router.events import (
    EVENT_ADAPTER,
    DoneEvent,
    ErrorEvent,
    Event,
    FallbackEvent,
    RouteEvent,
    StartEvent,
    TextEvent,
    decode_event,
    encode_event,
)

MakeRouter = Callable[..., Router]


# --- cancellation -----------------------------------------------------------------------------


async def _first_text(stream: EventStream) -> TextEvent:
    async for ev in stream:
        if isinstance(ev, TextEvent):
            return ev
    raise AssertionError("no text event")


async def test_aclose_closes_the_provider_stream_at_once(make_router: MakeRouter,
                                                          fleet: Any) -> None:
    r = make_router()
    provider = fleet.sim(r)
    stream = r.stream("Explain circuit breakers", model="strong")
    await _first_text(stream)
    assert provider.open_streams == 1
    await stream.aclose()
    assert provider.open_streams == 0


async def test_async_with_closes_the_provider_stream_on_exit(make_router: MakeRouter,
                                                             fleet: Any) -> None:
    r = make_router()
    provider = fleet.sim(r)
    async with r.stream("Explain circuit breakers", model="strong") as stream:
        async for ev in stream:
            if isinstance(ev, TextEvent):
                assert provider.open_streams == 1
                break
    assert provider.open_streams == 0


async def test_breaking_out_closes_the_provider_stream_once_the_loop_runs(
        make_router: MakeRouter, fleet: Any) -> None:
    # Without `aclose()` Python finalizes an abandoned async generator through the event
    # loop's asyncgen hook: the provider stream closes within a few loop turns, no GC needed.
    r = make_router()
    provider = fleet.sim(r)
    async for ev in r.stream("Explain circuit breakers", model="strong"):
        if isinstance(ev, TextEvent):
            break
    for _ in range(10):
        if provider.open_streams == 0:
            break
        await asyncio.sleep(0)
    assert provider.open_streams == 0


async def test_cancelling_the_consumer_task_closes_the_provider_stream(
        make_router: MakeRouter, fleet: Any) -> None:
    # A slow provider: the consumer is parked inside the provider's pacing sleep.
    r = make_router(options={"strong": {"tokens_per_s": 5}})
    provider = fleet.sim(r)
    started = asyncio.Event()

    async def consume() -> None:
        async for ev in r.stream("Explain circuit breakers", model="strong"):
            if isinstance(ev, TextEvent):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    assert provider.open_streams == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.open_streams == 0
