"""Stopping background tasks: a task whose loop swallows a cancellation still stops."""

from __future__ import annotations

import asyncio

from router.background import stop_task


async def test_a_task_that_swallows_one_cancellation_still_stops() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed == 0:  # like a client library turning it into its own error
                    swallowed += 1
                    continue
                raise

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_stops_is_given_up_after_the_bound() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(deaf())
    await asyncio.sleep(0)
    await stop_task(task, bound_s=0.3)
    assert not task.done()  # left behind rather than awaited forever
    release.set()
    task.cancel()
    await asyncio.wait({task})


async def test_none_is_nothing_to_stop() -> None:
    await stop_task(None)
