"""Reading logs that live in the shared event log (Redis), for the routes and the
WebSocket: a stream another instance produces (taking it over when that instance died),
and run channels, which every instance reads from Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

from router.events import TERMINAL_TYPES
from router.server.eventlog import Entry
from router.server.eventlog_redis import RUN, STREAM, Snapshot
from router.server.hub import StreamHub
from router.server.runs import RUN_END

Batches = AsyncIterator[tuple[int, list[Entry]]]
_RUN_END = frozenset({RUN_END})


async def stream_batches(hub: StreamHub, snap: Snapshot, after: int) -> Batches:
    """The events of a stream above `after` from Redis, live until its terminal event.
    When its instance has died (now, or while waiting) this instance takes it over."""
    shared = hub.shared
    assert shared is not None
    rid = snap.log.key
    ended_at_idle = 0

    async def on_idle() -> bool:
        nonlocal ended_at_idle
        if hub.streams.get(rid) is not None:
            return True  # produced here now
        meta = await shared.meta(STREAM, rid)
        if not meta:
            return False  # expired
        if meta.get("state") == "closed":
            ended_at_idle += 1  # its last entry was written before it was marked closed
            return ended_at_idle < 2
        if await shared.orphaned(meta):
            current = await shared.snapshot(STREAM, rid)
            if current is not None:
                await hub.take_over(current)
        return True

    if await shared.orphaned(snap.meta):
        await hub.take_over(snap)
    async for item in shared.follow(STREAM, rid, after, TERMINAL_TYPES, on_idle):
        yield item


async def run_batches(hub: StreamHub, run_id: str, after: int) -> Batches:
    """A run's events above `after` from Redis, live until its `run_end` (or expiry)."""
    shared = hub.shared
    assert shared is not None

    async def on_idle() -> bool:
        return bool(await shared.meta(RUN, run_id))

    async for item in shared.follow(RUN, run_id, after, _RUN_END, on_idle):
        yield item


async def find(hub: StreamHub, kind: str, key: str) -> Snapshot | None:
    return await hub.shared.snapshot(kind, key) if hub.shared is not None else None
