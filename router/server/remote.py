"""The routes' and the WebSocket's side of the shared event log (Redis): finding a log
this instance does not produce, reading a stream another instance produces (taking it over
when that instance died), reading and publishing run channels, which every instance does
through Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response

from router.config.schema import ServerConfig
from router.events import TERMINAL_TYPES
from router.server.auth import problem
from router.server.eventlog import Entry, LogLost, StreamLog
from router.server.eventlog_redis import RUN, STREAM, SharedLogs, Snapshot
from router.server.hub import StreamHub
from router.server.runs import RUN_END, RunError

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
        if "lost" in meta:
            raise LogLost(meta["lost"])
        if meta.get("state") == "closed":
            ended_at_idle += 1  # its last entry was written before it was marked closed
            return ended_at_idle < 2
        if await shared.orphaned(meta):
            current = await shared.snapshot(STREAM, rid)
            if current is not None:
                await hub.take_over(current)
        return True

    if "lost" in snap.meta:
        raise LogLost(snap.meta["lost"])
    if await shared.orphaned(snap.meta):
        await hub.take_over(snap)
    async for item in shared.follow(STREAM, rid, after, TERMINAL_TYPES, on_idle):
        yield item


async def run_batches(hub: StreamHub, run_id: str, after: int) -> Batches:
    """A run's events above `after` from Redis, live until its `run_end` (or expiry).
    When a stream copied into the run has lost its instance, this instance takes it over
    (as a reader of the stream itself would), so the run goes on."""
    shared = hub.shared
    assert shared is not None

    async def on_idle() -> bool:
        meta = await shared.meta(RUN, run_id)
        if meta and "lost" in meta:
            raise LogLost(meta["lost"])
        for rid in await shared.orphans_of_run(run_id):
            snap = await shared.snapshot(STREAM, rid)
            if snap is not None:
                await hub.take_over(snap)
        return bool(meta)

    async for item in shared.follow(RUN, run_id, after, _RUN_END, on_idle):
        yield item


async def find(hub: StreamHub, kind: str, key: str) -> Snapshot | None:
    return await hub.shared.snapshot(kind, key) if hub.shared is not None else None


async def located(hub: StreamHub, kind: str, key: str) -> tuple[StreamLog | None,
                                                                Snapshot | None]:
    """The log `key`: this instance's own (streams), else the shared log's copy."""
    slog = hub.streams.get(key) if kind == STREAM else None
    if slog is not None:
        return slog, None
    snap = await find(hub, kind, key)
    return (snap.log if snap else None), snap


async def status_log(hub: StreamHub, snap: Snapshot) -> StreamLog:
    """The log a status poll of another instance's stream reads. A poll is a reader too: a
    stream whose instance died is taken over first, so it goes on to its end instead of
    reading `running` for ever. One with a hole (`lost`) is read as it is."""
    shared = hub.shared
    if shared is not None and "lost" not in snap.meta and await shared.orphaned(snap.meta):
        await hub.take_over(snap)
    return hub.streams.get(snap.log.key) or snap.log


def lost_problem(snap: Snapshot | None) -> Response | None:
    """410 for a resume of a shared log with a hole: events its instance delivered while
    Redis was unavailable and could not keep for it (see `eventlog_backlog`)."""
    if snap is None or "lost" not in snap.meta:
        return None
    return problem(410, "events_lost", str(LogLost(snap.meta["lost"])), "Last-Event-ID")


async def publish_shared(hub: StreamHub, run_id: str, owner: str,
                         events: list[Any]) -> Response:
    """POST to a run with the shared log: straight to Redis, numbered there."""
    assert hub.shared is not None
    try:
        await hub.run_channel(run_id, owner)
        entries = []
        for ev in events:
            if not isinstance(ev, dict):
                return problem(422, "invalid_event", "body: expected a JSON object (or a "
                               "list of objects) with a `type`", "body")
            entries.append(hub.runs.prepare(run_id, ev))
    except RunError as exc:
        return problem(exc.status, exc.code, exc.message, exc.param)
    ends = [i for i, (etype, _) in enumerate(entries) if etype == RUN_END]
    entries = entries[:ends[0] + 1] if ends else entries
    try:
        count = await hub.shared.append_run(hub.runs.qualified(run_id, owner), entries,
                                            bool(ends))
    except Exception:  # Redis unavailable: say so, the agent may retry
        return problem(503, "state_unavailable", "the shared event log (Redis) is "
                       "unavailable; retry")
    if count < 0:
        return problem(409, "run_ended", f"run {run_id!r} has ended")
    body = {"run_id": run_id, "ids": list(range(count - len(entries), count))}
    return Response(orjson.dumps(body), status_code=201, media_type="application/json")


def shared_logs(router: Any, settings: ServerConfig) -> SharedLogs | None:
    """With `state: {backend: redis}`, the event log is shared through Redis Streams."""
    loaded = getattr(router, "loaded", None)
    if loaded is None or loaded.config.state.backend != "redis":
        return None
    return SharedLogs(loaded.config.state, max_events=settings.max_log_events,
                      retention_s=settings.retention_s,
                      stream_ttl_s=loaded.config.resilience.timeouts.total_s)
