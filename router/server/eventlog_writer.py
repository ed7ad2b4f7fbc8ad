"""The shared event log's writer: one task per instance that writes the dirty logs to Redis
in one pipeline, at most every `state.event_flush_ms`, never per chunk.

A stream's text deltas (and its opening `route` and `start`) are held back until 20 are
pending or the oldest waited `state.event_batch_ms`; its first text and every other event
go with the next write. Readers on this instance see an entry once it is written (or, when
Redis is unavailable, once the write failed: they are served all the same).

When a write fails, its logs go to the backlog (`eventlog_backlog`) and no write is tried
for `retry_s` (new events are delivered at once and join the backlog); then the backlog is
written with whatever is new. The scripts are idempotent (`eventlog_lua`): a write that
timed out but was executed anyway costs nothing when sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from router.server.eventlog import Entry, StreamLog
from router.server.eventlog_backlog import Backlog
from router.server.eventlog_lua import WRITE_RUN, WRITE_STREAM, packed_lines

log = logging.getLogger("router.server")

STREAM, RUN = "s", "r"
_CONTENT = frozenset({"text", "reasoning", "tool_call"})
# What may wait for a batch: content, and the opening `route`/`start` (they go with the
# first text, or after `event_batch_ms`).
_MAY_WAIT = _CONTENT | {"route", "start"}
_BATCH_EVENTS = 20
_RETRY_LOGS = 256  # backlog logs written per round after an outage (bounds one pipeline)
Planned = tuple[StreamLog, str, int, int]  # (log, kind, first to write, end)


class LogWriter:
    def __init__(self, redis: Any, key: Callable[[str, str], str], instance: str, *,
                 max_events: int, retention_s: int, stream_ttl_s: int, flush_s: float,
                 batch_s: float, timeout_s: float, retry_s: float, backlog_max: int) -> None:
        self.redis, self.key, self.instance = redis, key, instance
        self.max_events, self.retention_s, self.stream_ttl_s = (max_events, retention_s,
                                                                stream_ttl_s)
        self.flush_s, self.batch_s, self.timeout_s, self.retry_s = (flush_s, batch_s,
                                                                    timeout_s, retry_s)
        self.backlog = Backlog(backlog_max)
        self._write_stream = redis.register_script(WRITE_STREAM)
        self._write_run = redis.register_script(WRITE_RUN)
        self._writers = itertools.count()
        self.dirty: dict[StreamLog, str] = {}
        # Logs whose text waits for a batch: since when, and how far they were looked at
        # (each entry is looked at once, however many rounds it waits).
        self._held: dict[StreamLog, tuple[float, int]] = {}
        self._spoken: set[StreamLog] = set()  # streams whose first text was written
        self.meta: dict[str, dict[str, str]] = {}  # to write with a stream's first write
        self.wake = asyncio.Event()
        self._retry_at = 0.0  # no write is tried before (Redis failed a moment ago)
        self.flushes = 0
        self.failures = 0

    def mark(self, slog: StreamLog, kind: str) -> None:
        self.dirty[slog] = kind
        self.wake.set()

    async def run(self) -> None:
        while True:
            if self.backlog:  # wake up to try again even when nothing new comes
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._retry_at - time.monotonic())):
                        await self.wake.wait()
            else:
                await self.wake.wait()
            if self.flush_s:
                await asyncio.sleep(self.flush_s)  # let a batch gather
            self.wake.clear()
            now = time.monotonic()
            batch = self._due(now)
            if self.dirty:
                self.wake.set()  # held text: look again next round
            retrying = bool(self.backlog) and now >= self._retry_at
            if retrying:
                for slog, (kind, _) in itertools.islice(self.backlog.pending.items(),
                                                        _RETRY_LOGS):
                    batch.setdefault(slog, kind)
            if batch or retrying:
                await self.flush(batch)

    async def flush_all(self) -> None:
        """The last write at shutdown: everything dirty and the backlog, tried once."""
        batch, self.dirty = self.dirty, {}
        for slog, (kind, _) in self.backlog.pending.items():
            batch.setdefault(slog, kind)
        self._retry_at = 0.0
        if batch or self.backlog:
            await self.flush(batch)

    def _due(self, now: float) -> dict[StreamLog, str]:
        """Take the dirty logs to write now; leave those whose text may wait for more."""
        due: dict[StreamLog, str] = {}
        for slog, kind in list(self.dirty.items()):
            if kind == RUN or slog.closed or self._urgent(slog, now):
                due[slog] = kind
                del self.dirty[slog]
                self._held.pop(slog, None)
        return due

    def _urgent(self, slog: StreamLog, now: float) -> bool:
        start = max(slog.flushed, slog.dropped)
        end = slog.next_seq
        if end - start >= _BATCH_EVENTS:
            return True
        since, looked = self._held.get(slog, (now, start))
        if now - since >= self.batch_s:
            return True
        entries, base = slog.entries, slog.dropped
        spoken = slog in self._spoken
        for i in range(max(looked, start), end):
            etype = entries[i - base][0]
            if etype not in _MAY_WAIT:
                return True
            if not spoken and etype in _CONTENT:  # TTFT does not wait for a batch
                self._spoken.add(slog)
                return True
        self._held[slog] = (since, end)
        return False

    async def flush(self, batch: dict[StreamLog, str]) -> None:
        plan: list[Planned] = []
        ends: dict[StreamLog, int] = {}
        for slog, kind in batch.items():
            slog.dirty = False
            if slog.closed:
                self._spoken.discard(slog)
            ends[slog] = end = slog.next_seq
            if self.backlog.is_lost(kind, slog.key):
                continue
            start = self.backlog.start(slog)
            if start < slog.dropped:  # its bound dropped entries while they waited
                self.backlog.give_up(slog, kind, start)
                continue
            plan.append((slog, kind, start, end))
        try:
            if time.monotonic() < self._retry_at:
                self._defer(plan)  # Redis failed a moment ago: serve now, write later
            else:
                await self._write(plan)
        finally:
            for slog, end in ends.items():  # this instance's readers are served either way
                slog.flushed = max(slog.flushed, end)
                slog.wake()

    async def _write(self, plan: list[Planned]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        marks = list(self.backlog.unmarked.items())
        for (kind, key), (first, run) in marks:
            self._lost_commands(pipe, kind, key, first, run)
        results_at: list[int | None] = []
        for slog, kind, start, end in plan:
            results_at.append(await (self._stream_commands if kind == STREAM
                                     else self._run_commands)(pipe, slog, start, end))
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                results = await pipe.execute(raise_on_error=False)
            _raise_if_unavailable(results)
        except Exception as exc:
            self._failed(exc, plan)
            return
        self.flushes += 1
        self._retry_at = 0.0
        self.backlog.marked([log_id for log_id, _ in marks])
        for (slog, kind, start, _), at in zip(plan, results_at, strict=True):
            self._written(slog, kind, start, None if at is None else results[at])

    def _written(self, slog: StreamLog, kind: str, start: int, result: Any) -> None:
        self.backlog.written(slog)
        if kind == STREAM:
            self.meta.pop(slog.key, None)
        if isinstance(result, Exception):  # the command's own error: trying again won't do
            log.error("shared event log: writing %s failed: %r; its later events are not "
                      "shared", slog.key, result)
            self.backlog.give_up(slog, kind, start)
        elif result == -2:
            log.warning("stream %s was taken over by another instance while this one was "
                        "cut off from Redis; its events here are no longer shared", slog.key)
            self.backlog.disown(slog, kind, start)

    def _failed(self, exc: Exception, plan: list[Planned]) -> None:
        self.failures += 1
        self._retry_at = time.monotonic() + self.retry_s
        if self.failures == 1 or self.failures % 1000 == 0:
            log.warning("shared event log: write failed (%d so far): %r; events are "
                        "delivered here and kept to be shared when Redis returns",
                        self.failures, exc)
        self._defer(plan)

    def _defer(self, plan: list[Planned]) -> None:
        for slog, kind, start, end in plan:
            if start < end or slog.closed:
                self.backlog.keep(slog, kind, start)
        given_up = self.backlog.enforce()
        if given_up:
            log.warning("shared event log: backlog over state.event_backlog_max (%d "
                        "events): %d log(s) pending the longest are no longer shared "
                        "(their resume elsewhere answers 410 events_lost)",
                        self.backlog.max_events, len(given_up))

    async def _stream_commands(self, pipe: Any, slog: StreamLog, start: int,
                               end: int) -> int:
        """Queue the write of a stream; returns where in the results its script's is."""
        ev = self.key(STREAM, slog.key)
        meta = ev + ":meta"
        fields = self.meta.get(slog.key)
        if fields is not None:  # before the script: it checks which instance writes
            pipe.hset(meta, mapping=fields)
            pipe.expire(meta, self.stream_ttl_s)
            pipe.expire(ev, self.stream_ttl_s)
        keys = [ev, meta]
        if slog.run is not None:
            run = self.key(RUN, slog.run)
            keys += [run + ":n", run, run + ":meta"]
            if fields is not None:  # a reader of the run can then take the stream over
                pipe.sadd(run + ":streams", slog.key)
                pipe.expire(run + ":streams", self.stream_ttl_s)
        at = len(pipe)
        await self._write_stream(keys=keys, args=[
            self.instance, start, self.max_events, self.retention_s, int(slog.closed),
            self.retention_s, *packed_lines(_entries(slog, start, end))], client=pipe)
        return at

    async def _run_commands(self, pipe: Any, slog: StreamLog, start: int,
                            end: int) -> int | None:
        entries = _entries(slog, start, end)
        if not entries:
            return None
        if not slog.writer:
            slog.writer = f"{self.instance}.{next(self._writers)}"
        base = self.key(RUN, slog.key)
        closes = int(slog.closed and entries[-1][0] == "run_end")
        at = len(pipe)
        await self._write_run(keys=[base + ":n", base, base + ":meta"], args=[
            slog.writer, start, self.max_events, self.retention_s, closes,
            *packed_lines(entries)], client=pipe)
        return at

    def _lost_commands(self, pipe: Any, kind: str, key: str, first: int,
                       run: str | None) -> None:
        meta = self.key(kind, key) + ":meta"
        pipe.hset(meta, mapping={"lost": first, **({"state": "lost"} if kind == STREAM
                                                   else {})})
        pipe.expire(meta, self.retention_s)
        if run is not None:  # its run's copy has the same hole
            pipe.hset(self.key(RUN, run) + ":meta", "lost", f"stream {key}")


def _entries(slog: StreamLog, start: int, end: int) -> list[Entry]:
    base = slog.dropped
    return [slog.entries[i - base] for i in range(start, end)]


def _raise_if_unavailable(results: list[Any]) -> None:
    """Redis answered, but not as a store that can take writes (still loading its data
    after a restart, a read-only replica): the write is tried again later."""
    from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError

    for result in results:
        if isinstance(result, BusyLoadingError | ReadOnlyError | ConnectionError):
            raise result
