"""Stopping a background task (store syncs, the spend journal's replayer, event-log writers).

One `cancel()` is not always enough: a library that turns the `CancelledError` raised
inside one of its awaits into its own connection error (redis-py can), caught by a loop
that retries on such errors, swallows the cancellation, and `await task` then waits
forever — a shutdown that never ends. So the task is cancelled until it is done, within a
bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("router")


async def stop_task(task: asyncio.Task[Any] | None, bound_s: float = 5.0) -> None:
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("background task %s did not stop within %.1f s", task.get_name(),
                        bound_s)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.1, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s ended with %r", task.get_name(), task.exception())
