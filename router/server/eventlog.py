"""The event log behind resume and run channels: in memory, bounded per stream.

Each log is an append-only sequence of `(type, json)` entries numbered from 0 — for a routed
stream the number is the event's `seq`, for a run channel the run's own counter. Readers
`follow(after)` a log: they get every entry numbered above `after` once, in order, then the
live ones as they arrive, and stop after the log is closed (its terminal entry). A log is
kept `retention_s` after it closes (or after its last entry, for a run nobody closes), then
swept. Past `max_events` the oldest entries are dropped; a reader asking for a dropped entry
gets `LogGap` rather than a silent hole. (Heartbeats are the SSE response's business.)

A log with a `sink` (the shared event log on Redis, `router.server.eventlog_redis`) is
written through: `append` only marks it dirty for the sink's writer, which writes batches
and then advances `flushed`; readers see an entry once it is flushed, so whatever a client
was sent is in Redis, and another instance can resume or take over exactly after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

Entry = tuple[str, bytes]  # (event type, compact JSON object)


class LogGap(Exception):
    """The entries a reader asked for were dropped (the log's bound was reached)."""

    def __init__(self, first_kept: int) -> None:
        super().__init__(f"events before {first_kept} are no longer kept")
        self.first_kept = first_kept


class LogLost(LogGap):
    """Events of a shared log were never written to it: they were delivered while Redis was
    unavailable and the instance's backlog bound was reached (`state.event_backlog_max`)."""

    def __init__(self, first_lost: int | str) -> None:
        Exception.__init__(self, f"events from {first_lost} on were delivered while the "
                           "shared event log (Redis) was unavailable and could not be kept "
                           "for it (state.event_backlog_max); they are not in the shared log")
        self.first_kept = -1


class LogSink(Protocol):
    def mark(self, log: StreamLog) -> None:
        """`log` has entries (or an end) not yet written: write it soon, then wake it."""
        ...


class StreamLog:
    __slots__ = ("_waiters", "cancel_requested", "closed", "detach", "dirty", "dropped",
                 "entries", "flushed", "key", "max_events", "owner", "owner_hash", "run",
                 "sink", "task", "touched_at", "writer")

    def __init__(self, key: str, owner: str | None, max_events: int, now: float) -> None:
        self.key = key
        self.owner = owner
        self.max_events = max_events
        self.entries: deque[Entry] = deque()
        self.dropped = 0  # number of entries dropped from the front
        self.closed = False
        self.detach = False
        # Set by an explicit cancel (not a disconnect): the stream then ends normally, with
        # its `cancelled` event delivered to the reader that drives it.
        self.cancel_requested = False
        self.touched_at = now
        # The task producing the entries of a routed stream; cancelling it cancels upstream.
        self.task: asyncio.Task[Any] | None = None
        self._waiters: list[asyncio.Future[bool]] = []
        self.sink: LogSink | None = None
        self.dirty = False  # marked to the sink, not yet written
        self.flushed = 0  # with a sink: entries numbered below this are written
        # A log read back from the shared store knows its owner by hash only.
        self.owner_hash: str | None = None
        # With the shared log: the run (its qualified key) this stream's events are copied
        # into, in the same step as they are written (see `eventlog_lua.WRITE_STREAM`).
        self.run: str | None = None
        self.writer = ""  # the shared log's name for this log as a writer (set there)

    def owned_by(self, name: str) -> bool:
        """May the key called `name` read this log?"""
        if self.owner_hash is not None:
            return owner_hash(name) == self.owner_hash
        return self.owner is None or self.owner == name

    @property
    def next_seq(self) -> int:
        return self.dropped + len(self.entries)

    def append(self, etype: str, data: bytes) -> int:
        """Add one entry; returns its number. Wakes the readers waiting for it."""
        entries = self.entries
        entries.append((etype, data))
        if len(entries) > self.max_events:
            entries.popleft()
            self.dropped += 1
        if self.sink is not None:
            if not self.dirty:
                self.dirty = True
                self.sink.mark(self)
        elif self._waiters:
            self.wake()
        return self.dropped + len(entries) - 1

    def close(self, now: float) -> None:
        self.closed = True
        self.touched_at = now
        if self.sink is not None:
            self.dirty = True
            self.sink.mark(self)  # its end is written too; readers wake once it is
        else:
            self.wake()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(False)

    def replay(self, after: int) -> Iterator[tuple[int, Entry]]:
        """The kept entries numbered above `after` (a snapshot; raises LogGap)."""
        start = after + 1
        if start < self.dropped:
            raise LogGap(self.dropped)
        entries = self.entries
        for i in range(start - self.dropped, len(entries)):
            yield self.dropped + i, entries[i]

    async def follow_batches(self, after: int) -> AsyncIterator[tuple[int, list[Entry]]]:
        """Entries numbered above `after`, then live ones until the log closes, as batches
        `(number of the first, entries)`: everything available at each wake-up, so a
        reader that fell behind catches up in one write."""
        loop = asyncio.get_running_loop()
        nxt = after + 1
        while True:
            dropped = self.dropped
            if nxt < dropped:
                raise LogGap(dropped)
            entries = self.entries
            end = dropped + len(entries)
            if self.sink is not None and self.flushed < end:
                end = self.flushed
            if nxt < end:
                yield nxt, [entries[i] for i in range(nxt - dropped, end - dropped)]
                nxt = end
                continue
            if self.closed and nxt >= dropped + len(entries):
                return
            fut: asyncio.Future[bool] = loop.create_future()
            self._waiters.append(fut)
            await fut

    async def follow(self, after: int) -> AsyncIterator[tuple[int, Entry]]:
        """`follow_batches` one entry at a time."""
        async for first, batch in self.follow_batches(after):
            for i, entry in enumerate(batch):
                yield first + i, entry


# What one kept entry costs beside its JSON (the tuple, the bytes object's header, its
# slot in the deque), so `max_retained_bytes` bounds memory, not only payload.
_ENTRY_OVERHEAD = 100


class EventLog:
    """The logs of one kind (routed streams, or run channels), by key.

    Finished logs (closed through `close`) are kept `retention_s`, and together at most
    `max_retained_bytes`: past it the longest finished go first, so memory does not grow
    with throughput times retention. They are kept in the order they finished, so a sweep
    reads only the expired ones."""

    def __init__(self, max_events: int, retention_s: float, *, expire_idle: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 max_retained_bytes: float = math.inf) -> None:
        # Run channels have no terminal event of their own: they expire after idling.
        self.expire_idle = expire_idle
        self.max_events = max_events
        self.retention_s = retention_s
        self.max_retained_bytes = max_retained_bytes
        self.clock = clock
        self.sink: LogSink | None = None  # given to every log opened (the shared log)
        self._logs: dict[str, StreamLog] = {}
        # Finished logs in the order they finished: (their size, when).
        self._finished: dict[str, tuple[int, float]] = {}
        self.retained_bytes = 0  # of the finished logs kept

    def __len__(self) -> int:
        return len(self._logs)

    def get(self, key: str) -> StreamLog | None:
        return self._logs.get(key)

    def open(self, key: str, owner: str | None) -> StreamLog:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = StreamLog(key, owner, self.max_events, self.clock())
            log.sink = self.sink
        return log

    def close(self, log: StreamLog) -> None:
        """`log` has its terminal entry: close it, and keep it for resume within the
        bounds (the longest finished dropped first past `max_retained_bytes`)."""
        now = self.clock()
        log.close(now)
        key = log.key
        if self._logs.get(key) is not log or key in self._finished:
            return
        entries = log.entries
        size = sum(len(data) for _, data in entries) + _ENTRY_OVERHEAD * len(entries)
        self._finished[key] = (size, now)
        self.retained_bytes += size
        while self.retained_bytes > self.max_retained_bytes:
            self._drop(next(iter(self._finished)))

    def active(self) -> list[StreamLog]:
        return [log for log in self._logs.values() if not log.closed]

    def running(self) -> int:
        """How many logs are open and not finished through `close` (for routed streams,
        which all finish through it: `active()`'s length, without the scan)."""
        return len(self._logs) - len(self._finished)

    def _drop(self, key: str) -> StreamLog:
        log = self._logs.pop(key)
        size, _ = self._finished.pop(key, (0, 0.0))
        self.retained_bytes -= size
        log.sink = None  # its retention in the shared store is the store's own
        return log

    def sweep(self) -> int:
        """Drop logs finished (or, for run channels, idle) longer than `retention_s`;
        returns how many."""
        horizon = self.clock() - self.retention_s
        expired = []
        for key, (_, finished_at) in self._finished.items():
            if finished_at > horizon:
                break
            expired.append(key)
        for key in expired:
            self._drop(key)
        if not self.expire_idle:
            return len(expired)
        stale = [k for k, log in self._logs.items() if log.touched_at <= horizon]
        for key in stale:
            log = self._drop(key)
            log.close(log.touched_at)
        return len(expired) + len(stale)


def owner_hash(name: str) -> str:
    """What the shared store keeps of a log's owner: a hash of the key's name."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]
