"""Admission (router.serving.admission): the per-deployment concurrency limit, its bounded
FIFO and deadline, and what a router does past them over real loopback HTTP — the next
candidate, or one clear `overloaded` error — with no slot leaked on any path."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from providers.base import TextDelta
from router.config import parse_config
from router.core import Router
from router.events import ErrorEvent, Event, FallbackEvent
from router.serving.admission import Admission, AdmissionRefused, admitted
from router.testing import LoopbackProvider, Reply


async def settle() -> None:
    """Let every ready task run (waiters enqueue, grants resume); no wall-clock wait."""
    for _ in range(20):
        await asyncio.sleep(0)


def gate(limit: int = 1, max_queued: int = 8, timeout_s: float = 30.0) -> Admission:
    return Admission({"a": limit}, max_queued=max_queued, queue_timeout_s=timeout_s)


async def test_within_the_limit_acquire_is_immediate_and_counted() -> None:
    adm = gate(limit=2)
    await adm.acquire("a")
    await adm.acquire("a")
    assert adm.inflight("a") == 2 and adm.queued("a") == 0
    adm.release("a")
    adm.release("a")
    assert adm.inflight("a") == 0


async def test_an_unlimited_deployment_is_not_counted() -> None:
    adm = gate()
    await adm.acquire("other")
    assert adm.inflight("other") == 0
    adm.release("other")  # a no-op, never negative


async def test_waiters_are_served_in_fifo_order() -> None:
    adm = gate(limit=1)
    await adm.acquire("a")
    order: list[int] = []

    async def wait(i: int) -> None:
        await adm.acquire("a")
        order.append(i)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(wait(i)))
        await settle()  # each one queued before the next arrives
    assert adm.queued("a") == 4 and adm.inflight("a") == 1
    for _ in range(4):
        adm.release("a")
        await settle()
    assert order == [0, 1, 2, 3]
    await asyncio.gather(*tasks)
    assert adm.inflight("a") == 1 and adm.queued("a") == 0
    adm.release("a")
    assert adm.inflight("a") == 0


async def test_a_full_queue_refuses_at_once_with_overloaded() -> None:
    adm = gate(limit=1, max_queued=1)
    await adm.acquire("a")
    queued = asyncio.create_task(adm.acquire("a"))
    await settle()
    with pytest.raises(AdmissionRefused) as refused:
        await adm.acquire("a")
    assert refused.value.code == "overloaded" and refused.value.retryable
    assert "'a'" in refused.value.message and "queued" in refused.value.message
    adm.release("a")
    await queued
    adm.release("a")
    assert adm.inflight("a") == 0 and adm.queued("a") == 0


async def test_the_queue_deadline_refuses_with_overloaded() -> None:
    adm = gate(limit=1, timeout_s=0.001)
    await adm.acquire("a")
    with pytest.raises(AdmissionRefused, match="no slot within"):
        await adm.acquire("a")
    assert adm.queued("a") == 0 and adm.inflight("a") == 1
    adm.release("a")
    assert adm.inflight("a") == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_is_served() -> None:
    adm = gate(limit=1)
    await adm.acquire("a")
    first = asyncio.create_task(adm.acquire("a"))
    second = asyncio.create_task(adm.acquire("a"))
    await settle()
    first.cancel()
    await settle()
    assert adm.queued("a") == 1
    adm.release("a")
    await second
    assert first.cancelled() and adm.inflight("a") == 1
    adm.release("a")
    assert adm.inflight("a") == 0


async def test_a_waiter_cancelled_after_its_grant_hands_the_slot_on() -> None:
    adm = gate(limit=1)
    await adm.acquire("a")
    first = asyncio.create_task(adm.acquire("a"))
    second = asyncio.create_task(adm.acquire("a"))
    await settle()
    adm.release("a")  # granted to `first`, which has not resumed yet
    first.cancel()
    await settle()
    await second
    assert first.cancelled() and adm.inflight("a") == 1 and adm.queued("a") == 0
    adm.release("a")
    assert adm.inflight("a") == 0


async def test_give_ups_do_not_grow_the_queue_without_bound() -> None:
    adm = gate(limit=1, timeout_s=0.001)
    await adm.acquire("a")
    for _ in range(200):
        with pytest.raises(AdmissionRefused):
            await adm.acquire("a")
    assert len(adm._gates["a"].waiters) <= 16
    adm.release("a")


async def _deltas(n: int, fail: bool = False) -> AsyncIterator[Any]:
    for i in range(n):
        yield TextDelta(str(i))
    if fail:
        raise RuntimeError("upstream broke")


async def test_admitted_holds_the_slot_until_closed_on_every_path() -> None:
    adm = gate(limit=1)
    ended = await admitted(adm, "a", _deltas(2))
    assert adm.inflight("a") == 1  # taken before the first read
    assert [d.text async for d in ended] == ["0", "1"]
    await ended.aclose()
    assert adm.inflight("a") == 0
    left = await admitted(adm, "a", _deltas(5))
    await anext(left)
    await left.aclose()  # the caller left early
    await left.aclose()  # closing twice gives the slot back once
    assert adm.inflight("a") == 0
    broken = await admitted(adm, "a", _deltas(1, fail=True))
    with pytest.raises(RuntimeError):
        async for _ in broken:
            pass
    await broken.aclose()
    assert adm.inflight("a") == 0


async def test_an_admitted_stream_dropped_unclosed_gives_its_slot_back() -> None:
    adm = gate(limit=1)
    dropped = await admitted(adm, "a", _deltas(2))
    await anext(dropped)
    del dropped  # never closed: the backstop, when it is collected
    gc.collect()
    assert adm.inflight("a") == 0


# --- over real loopback HTTP ----------------------------------------------------------------


def config(base_url: str, *, limit: int, max_queued: int, two: bool = False) -> dict[str, Any]:
    price = {"input_per_mtok": 1.0, "output_per_mtok": 4.0}
    prior = {"ttft_ms": 100, "tokens_per_s": 100}
    deployments = [{"id": "a", "provider": "lb", "model": "a", "price": price,
                    "latency_prior": prior, "quality": 0.9, "max_concurrency": limit}]
    if two:
        deployments.append({"id": "b", "provider": "lb", "model": "b", "price": price,
                            "latency_prior": prior, "quality": 0.5})
    return {
        "version": 1,
        "providers": {"lb": {"kind": "openai_compatible", "base_url": base_url + "/v1",
                             "api_key": "sk-test"}},
        "deployments": deployments,
        "tasks": {"t": {"candidates": [d["id"] for d in deployments], "prefer": "quality"}},
        "defaults": {"task": "t", "max_tokens": 50},
        "resilience": {"retry": {"attempts": 2, "initial_backoff_ms": 1},
                       "admission": {"max_queued": max_queued, "queue_timeout_s": 30}},
    }


async def until_text(events: AsyncIterator[Event]) -> None:
    async for ev in events:
        if ev.type == "text":
            return
    raise AssertionError("no text event")


async def rest_of(events: AsyncIterator[Event]) -> list[Event]:
    return [ev async for ev in events]


async def until_queued(adm: Admission, deployment: str) -> None:
    for _ in range(10_000):  # event-loop turns, not wall time: the request is in flight
        if adm.queued(deployment):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"no request queued for {deployment}")


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider(Reply(text=("one ", "two ", "three"))) as server:
        yield server
        await server.wait_idle(5.0)


async def test_past_limit_and_queue_a_stream_ends_overloaded_and_the_queued_one_is_served(
        srv: LoopbackProvider) -> None:
    async with Router(parse_config(config(srv.base_url, limit=2, max_queued=1))) as r:
        holders = [r.stream("hi"), r.stream("hi")]
        for s in holders:
            await until_text(s)  # both hold a slot of `a` while they stay open
        assert r.inflight("a") == 2
        waiting = asyncio.create_task(rest_of(r.stream("hi")))
        await until_queued(r.admission, "a")
        refused = await rest_of(r.stream("hi"))
        last = refused[-1]
        assert isinstance(last, ErrorEvent) and last.code == "overloaded" and last.retryable
        assert last.deployment == "a" and [e.type for e in refused].count("error") == 1
        for s in holders:
            assert (await rest_of(s))[-1].type == "done"
        served = await waiting
        assert served[-1].type == "done"
        assert "".join(e.delta for e in served if e.type == "text") == "one two three"
        assert r.inflight("a") == 0 and r.admission.queued("a") == 0
        # The refusal was the router's own: the deployment's breaker heard nothing of it.
        assert r.resilience.breakers.admit("a") is not None
    assert len(srv.requests) == 3  # the refused stream never reached the provider


async def test_a_full_deployment_fails_over_to_the_next_candidate(
        srv: LoopbackProvider) -> None:
    async with Router(parse_config(config(srv.base_url, limit=1, max_queued=0,
                                          two=True))) as r:
        holder = r.stream("hi")
        await until_text(holder)
        events = await rest_of(r.stream("hi"))
        fallback = next(e for e in events if isinstance(e, FallbackEvent))
        assert (fallback.from_deployment, fallback.to_deployment) == ("a", "b")
        assert fallback.error == "overloaded" and fallback.after_tokens == 0
        assert events[-1].type == "done" and events[-1].deployment == "b"
        assert not any(e.type == "retry" for e in events)  # a full queue is not retried
        await holder.aclose()
        assert r.inflight("a") == 0


async def test_a_caller_leaving_while_queued_leaks_no_slot(srv: LoopbackProvider) -> None:
    async with Router(parse_config(config(srv.base_url, limit=1, max_queued=4))) as r:
        holder = r.stream("hi")
        await until_text(holder)
        waiting = asyncio.create_task(rest_of(r.stream("hi")))
        await until_queued(r.admission, "a")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert r.admission.queued("a") == 0 and r.inflight("a") == 1
        await holder.aclose()
        assert r.inflight("a") == 0
        assert (await rest_of(r.stream("hi")))[-1].type == "done"
