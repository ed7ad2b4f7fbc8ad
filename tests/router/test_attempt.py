"""One attempt: the first-token phase (deadlines name which one, the upstream is closed on
every failure) and the streaming phase (idle deadline, keep-alives do not count)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from providers.base import (
    Delta,
    FinishDelta,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    TextDelta,
    UsageDelta,
)
from router.serving.attempt import open_upstream


class Scripted:
    """A provider that plays `(delay_s, delta | exception)` steps and records closing."""

    def __init__(self, steps: list[tuple[float, Any]]) -> None:
        self.settings = ProviderSettings(name="s", kind="simulated")
        self.steps = steps
        self.open = 0
        self.closed = 0

    async def aclose(self) -> None:
        return None

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        return self._play()

    async def _play(self) -> AsyncIterator[Delta]:
        self.open += 1
        try:
            for delay, step in self.steps:
                if delay:
                    await asyncio.sleep(delay)
                if isinstance(step, BaseException):
                    raise step
                yield step
        finally:
            self.closed += 1


REQ = ProviderRequest(model="m", messages=[{"role": "user", "content": "hi"}])


async def test_reads_up_to_the_first_content_delta_and_keeps_the_stream_open() -> None:
    p = Scripted([(0, UsageDelta(10, 0)), (0, TextDelta("Hel")), (0, TextDelta("lo")),
                  (0, FinishDelta("stop"))])
    loop = asyncio.get_running_loop()
    upstream, head, _ = await open_upstream(p, REQ, loop.time(), 1.0, 10.0)
    assert [type(d).__name__ for d in head] == ["UsageDelta", "TextDelta"]
    assert p.closed == 0
    rest = [d async for d in upstream]
    assert [type(d).__name__ for d in rest] == ["TextDelta", "FinishDelta"]


@pytest.mark.parametrize(("ttft_s", "total_s", "which"), [
    (0.05, 10.0, "first token timeout after 0.05 s"),
    (10.0, 0.05, "total timeout after 0.05 s"),
])
async def test_first_token_deadline_names_which_and_closes_the_upstream(
        ttft_s: float, total_s: float, which: str) -> None:
    p = Scripted([(5.0, TextDelta("late"))])
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    with pytest.raises(ProviderError) as info:
        await open_upstream(p, REQ, loop.time(), ttft_s, total_s)
    assert time.perf_counter() - t0 < 1.0  # does not wait for the provider
    assert (info.value.code, info.value.message) == ("timeout", which)
    assert (p.open, p.closed) == (1, 1)


async def test_the_deadline_counts_from_the_attempt_start() -> None:
    """Time spent before (e.g. waiting for a hedge slot) is part of the first-token wait."""
    p = Scripted([(0.2, TextDelta("x"))])
    loop = asyncio.get_running_loop()
    with pytest.raises(ProviderError, match="first token timeout"):
        await open_upstream(p, REQ, loop.time() - 0.9, 1.0, 10.0)


async def test_a_provider_error_closes_the_upstream_and_propagates() -> None:
    err = ProviderError("overloaded", "busy", status=529)
    p = Scripted([(0, err)])
    loop = asyncio.get_running_loop()
    with pytest.raises(ProviderError) as info:
        await open_upstream(p, REQ, loop.time(), 1.0, 10.0)
    assert info.value is err and p.closed == 1


async def test_cancellation_closes_the_upstream() -> None:
    p = Scripted([(5.0, TextDelta("late"))])
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(open_upstream(p, REQ, loop.time(), 10.0, 10.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (p.open, p.closed) == (1, 1)


async def test_a_stream_that_ends_before_content_returns_its_head() -> None:
    p = Scripted([(0, UsageDelta(3, 0)), (0, FinishDelta("content_filter"))])
    loop = asyncio.get_running_loop()
    _, head, _ = await open_upstream(p, REQ, loop.time(), 1.0, 10.0)
    assert [type(d).__name__ for d in head] == ["UsageDelta", "FinishDelta"]
