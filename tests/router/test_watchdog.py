"""The watchdog's hand-over from the first-token phase to the answer: the timer armed for
the first token is kept when it fires early enough, and the idle deadline is never late."""

from __future__ import annotations

import asyncio

import pytest

from router.resilience.watchdog import Watchdog


async def _wait_on_provider(wd: Watchdog, seconds: float | None) -> None:
    """A read of the provider as `stream_opened` marks it: `seconds` None never ends."""
    wd.waiting_since = wd.time()
    wd.task = asyncio.current_task()
    try:
        if seconds is None:
            await asyncio.get_running_loop().create_future()
        else:
            await asyncio.sleep(seconds)
    finally:
        wd.waiting_since = None


async def _times_out_idle(wd: Watchdog) -> None:
    """A read that never ends is cut by the idle deadline (never by the 5 s guard)."""
    try:
        async with asyncio.timeout(5.0):  # a guard: a late watchdog fails here
            with pytest.raises(asyncio.CancelledError):
                await _wait_on_provider(wd, None)
        error = wd.expired()
        assert error is not None and error.message.startswith("idle")
    finally:
        wd.disarm()


async def test_an_idle_deadline_shorter_than_the_first_tokens_is_not_late() -> None:
    wd = Watchdog(ttft_s=30.0, idle_s=0.05, total_s=60.0)
    wd.content_started()
    await _times_out_idle(wd)


async def test_a_kept_first_token_timer_firing_early_cancels_nothing() -> None:
    # ttft 0.02 s < idle 30 s: the first token's timer is kept and fires during the answer.
    wd = Watchdog(ttft_s=0.02, idle_s=30.0, total_s=60.0)
    wd.content_started()
    try:
        await _wait_on_provider(wd, 0.1)  # past the first-token deadline: not a timeout
        assert wd.fired is None
    finally:
        wd.disarm()


async def test_a_disarmed_watchdog_is_armed_again_for_the_answer() -> None:
    wd = Watchdog(ttft_s=0.02, idle_s=0.05, total_s=60.0)
    wd.disarm()  # as a hedge race hands its winner over
    wd.content_started()
    await _times_out_idle(wd)
