"""The shared event log: every stream's events and every run channel in a Redis Stream, so
any instance can resume a stream, show its status, follow a run, or take over a stream
whose instance died.

Writes never happen per chunk: an appended log is only marked dirty (`mark`), and one
writer task (`eventlog_writer`) writes the dirty logs in one pipeline, a few writes per
stream plus one per ~20 events, each ONE stream entry holding all the log's new events
(format: `eventlog_lua`), whose ID `0-<end>` is the number after the last, so `XREAD` from
`0-<after+1>` starts at the entry holding `after + 1`. Readers on the producing instance
see an event once it is flushed (`StreamLog.flushed`).

Readers elsewhere block in `XREAD BLOCK` (no polling). Each instance refreshes a heartbeat
key `inst:<id>` every `stream_lease_s / 3`; a stream whose meta names an instance whose heartbeat
has been missing for a whole lease (`eventlog_lua.DEAD`: counted from the first reader that
found it missing, so a Redis pause that expired every heartbeat is not a death) is
orphaned, and the first reader to claim it (one Lua step) continues it.

Keys (under `state.prefix`): `log:<s|r>:<key>` (the Stream), `...:meta` (owner hash,
state, instance, the request to rebuild), `log:r:<run>:n` (a run's counter), `inst:<id>`,
`suspect:<id>`.
When Redis fails, the events are delivered anyway (the instance keeps serving its own
clients) and kept in a bounded backlog (`eventlog_backlog`): no write is tried again for
`retry_s`, then the backlog is written, in order and at most once each (the scripts of
`eventlog_lua` are idempotent), so a resume elsewhere after Redis returns gets the whole
stream. A stream's copy into its run channel is written in the same step as the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.background import stop_task
from router.config.schema import StateConfig
from router.server.eventlog import Entry, LogGap, StreamLog, owner_hash
from router.server.eventlog_lua import (
    APPEND_RUN,
    CLAIM,
    DEAD,
    pack,
    unpack,
)
from router.server.eventlog_writer import RUN, STREAM, LogWriter

log = logging.getLogger("router.server")

__all__ = ["RUN", "STREAM", "SharedLogs", "Snapshot", "pack", "unpack"]

@dataclass(slots=True)
class Snapshot:
    """A log read back from Redis: its entries as a `StreamLog`, and its meta."""

    log: StreamLog
    meta: dict[str, str]


class _Sink:
    __slots__ = ("kind", "shared")

    def __init__(self, shared: SharedLogs, kind: str) -> None:
        self.shared, self.kind = shared, kind

    def mark(self, log: StreamLog) -> None:
        self.shared.mark(log, self.kind)


class SharedLogs:
    """The Redis side of the streams' and runs' event logs, for one instance."""

    def __init__(self, cfg: StateConfig, *, max_events: int, retention_s: float,
                 stream_ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        import redis.asyncio as aioredis

        self.instance = uuid.uuid4().hex[:12]
        self.prefix = cfg.prefix
        self.max_events = max_events
        self.retention_s = max(1, int(retention_s))
        self.stream_ttl_s = max(1, int(stream_ttl_s + retention_s))
        self.flush_s = cfg.event_flush_ms / 1000.0
        self.batch_s = cfg.event_batch_ms / 1000.0
        self.lease_s = cfg.stream_lease_s
        self.timeout_s = cfg.socket_timeout_s
        self.block_ms = max(50, int(cfg.stream_lease_s * 500))
        self.clock = clock
        self.redis: Any = aioredis.Redis.from_url(
            cfg.url, socket_connect_timeout=cfg.connect_timeout_s,
            socket_timeout=cfg.socket_timeout_s)
        # Blocked readers each hold a connection for up to `block_ms`: their own pool.
        self._readers: Any = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool
                                            .from_url(cfg.url, max_connections=2048,
                                                      timeout=cfg.connect_timeout_s,
                                                      socket_connect_timeout=cfg.connect_timeout_s,
                                                      socket_timeout=cfg.socket_timeout_s
                                                      + self.block_ms / 1000.0))
        self._append_run = self.redis.register_script(APPEND_RUN)
        self._claim = self.redis.register_script(CLAIM)
        self._dead_script = self.redis.register_script(DEAD)
        self.streams_sink, self.runs_sink = _Sink(self, STREAM), _Sink(self, RUN)
        self.writer = LogWriter(
            self.redis, self.key, self.instance, max_events=max_events,
            retention_s=self.retention_s, stream_ttl_s=self.stream_ttl_s,
            flush_s=cfg.event_flush_ms / 1000.0, batch_s=cfg.event_batch_ms / 1000.0,
            timeout_s=cfg.socket_timeout_s, retry_s=min(1.0, self.lease_s / 3),
            backlog_max=cfg.event_backlog_max)
        self._tasks: list[asyncio.Task[None]] = []
        # Called with the id of a stream of this instance another instance asked to cancel.
        self.on_cancel: Callable[[str], object] | None = None

    @property
    def flushes(self) -> int:
        return self.writer.flushes

    @property
    def failures(self) -> int:
        return self.writer.failures

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}log:{kind}:{name}"

    def _inst_key(self, instance: str) -> str:
        return f"{self.prefix}inst:{instance}"

    async def _dead(self, instances: list[str]) -> list[bool]:
        """Which of `instances` are dead (see `eventlog_lua.DEAD`); raises when Redis fails."""
        if not instances:
            return []
        keys = [k for inst in instances
                for k in (self._inst_key(inst), f"{self.prefix}suspect:{inst}")]
        found = await self._dead_script(keys=keys, args=[int(self.lease_s * 1000)])
        return [bool(d) for d in found]

    # --- writing ----------------------------------------------------------------------

    def describe(self, slog: StreamLog, fields: dict[str, str]) -> None:
        """Meta of a stream to write with its first flush (owner, request...)."""
        self.writer.meta[slog.key] = {"inst": self.instance, "state": "running", **fields}

    def mark(self, slog: StreamLog, kind: str) -> None:
        self.writer.mark(slog, kind)

    async def start(self) -> None:
        await self._beat_once()
        self._tasks = [asyncio.create_task(self.writer.run(), name="eventlog-writer"),
                       asyncio.create_task(self._heartbeat(), name="eventlog-heartbeat")]

    async def append_run(self, run_id: str, entries: Sequence[Entry], closes: bool) -> int:
        """Append to a run at once (an agent's POST); returns the run's count after it, or
        -1 when the run has ended."""
        base = self.key(RUN, run_id)
        async with asyncio.timeout(self.timeout_s * 2):
            return int(await self._append_run(
                keys=[base + ":n", base, base + ":meta"],
                args=[len(entries), pack(entries), self.max_events, self.retention_s,
                      int(closes)]))

    async def claim_run(self, run_id: str, owner: str | None) -> str | None:
        """Record `owner` as the run's owner unless it has one; returns the owner hash on
        record ('' for an open run), None when Redis cannot tell."""
        meta = self.key(RUN, run_id) + ":meta"
        try:
            async with asyncio.timeout(self.timeout_s * 2), self.redis.pipeline(
                    transaction=False) as pipe:
                pipe.hsetnx(meta, "owner", owner_hash(owner) if owner else "")
                pipe.hget(meta, "owner")
                pipe.expire(meta, self.retention_s, nx=True)
                _, found, _ = await pipe.execute()
        except Exception:
            return None
        return found.decode() if found is not None else ""

    async def _beat_once(self) -> list[str]:
        """Refresh the heartbeat; returns the streams other instances asked to cancel."""
        asked: list[bytes] = []
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s * 2), self.redis.pipeline(
                    transaction=False) as pipe:
                pipe.set(self._inst_key(self.instance), b"1", px=int(self.lease_s * 1000))
                pipe.delete(f"{self.prefix}suspect:{self.instance}")
                pipe.spop(self._cancel_key(self.instance), 256)
                _, _, asked = await pipe.execute()
        return [rid.decode() for rid in asked or ()]

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            for rid in await self._beat_once():
                if self.on_cancel is not None:
                    self.on_cancel(rid)

    def _cancel_key(self, instance: str) -> str:
        return f"{self.prefix}cancel:{instance}"

    async def request_cancel(self, rid: str, meta: dict[str, str]) -> bool:
        """Ask the instance running stream `rid` to cancel it (it hears within a heartbeat
        period). False when the stream has ended or Redis is unavailable."""
        inst = meta.get("inst")
        if meta.get("state") != "running" or not inst:
            return False
        try:
            async with asyncio.timeout(self.timeout_s * 2), self.redis.pipeline(
                    transaction=False) as pipe:
                pipe.sadd(self._cancel_key(inst), rid)
                pipe.expire(self._cancel_key(inst), max(1, int(self.lease_s * 3)))
                await pipe.execute()
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        await self.writer.flush_all()  # the last events
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s):
                await self.redis.delete(self._inst_key(self.instance))
        await self.redis.aclose()
        await self._readers.aclose()

    # --- reading ----------------------------------------------------------------------

    async def snapshot(self, kind: str, name: str) -> Snapshot | None:
        """The log as Redis has it, or None when Redis has none (or is unavailable)."""
        base = self.key(kind, name)
        try:
            async with asyncio.timeout(self.timeout_s * 2), self.redis.pipeline(
                    transaction=False) as pipe:
                pipe.hgetall(base + ":meta")
                pipe.xrange(base)
                raw_meta, items = await pipe.execute()
        except Exception:
            return None
        if not raw_meta and not items:
            return None
        meta = {k.decode(): v.decode() for k, v in raw_meta.items()}
        slog = StreamLog(name, None, self.max_events, self.clock())
        slog.owner_hash = meta.get("owner") or None
        slog.detach = meta.get("detach") == "1"
        slog.closed = meta.get("state") == "closed"
        entries: deque[Entry] = deque()
        for n, (_, fields) in enumerate(items):
            if n == 0:
                slog.dropped = int(fields[b"f"])
            entries.extend(unpack(fields[b"d"]))
        slog.entries = entries
        return Snapshot(slog, meta)

    async def meta(self, kind: str, name: str) -> dict[str, str] | None:
        """A log's meta; None when it has none, or Redis cannot tell."""
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                raw = await self.redis.hgetall(self.key(kind, name) + ":meta")
        except Exception:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def orphaned(self, meta: dict[str, str]) -> bool:
        """Is the stream of `meta` running on an instance that is dead (see `_dead`)?"""
        inst = meta.get("inst")
        if meta.get("state") != "running" or not inst or inst == self.instance:
            return False
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                return (await self._dead([inst]))[0]
        except Exception:
            return False

    async def orphans_of_run(self, run_id: str) -> list[str]:
        """The streams copied into run `run_id` that are orphaned (see `orphaned`); none
        when Redis cannot tell. Three round trips, whatever the number of streams."""
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                rids = [r.decode() for r in await self.redis.smembers(
                    self.key(RUN, run_id) + ":streams")]
                async with self.redis.pipeline(transaction=False) as pipe:
                    for rid in rids:
                        pipe.hmget(self.key(STREAM, rid) + ":meta", "state", "inst")
                    metas = await pipe.execute()
                running = [(rid, inst.decode()) for rid, (state, inst) in zip(
                    rids, metas, strict=True) if state == b"running" and inst
                    and inst.decode() != self.instance]
                dead = await self._dead([inst for _, inst in running])
        except Exception:
            return []
        return [rid for (rid, _), gone in zip(running, dead, strict=True) if gone]

    async def claim(self, snap: Snapshot) -> bool:
        """Make this instance the one serving an orphaned stream (one winner)."""
        inst = snap.meta.get("inst", "")
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                won = await self._claim(keys=[self.key(STREAM, snap.log.key) + ":meta",
                                              self._inst_key(inst)],
                                        args=[inst, self.instance])
        except Exception:
            return False
        return bool(won)

    async def follow(self, kind: str, name: str, after: int, end_types: frozenset[str],
                     on_idle: Callable[[], Awaitable[bool]] | None = None
                     ) -> AsyncIterator[tuple[int, list[Entry]]]:
        """Entries numbered above `after`, then live ones, in batches `(first, entries)`,
        until an entry of `end_types`, or the log expires. `on_idle` runs when a blocking
        read found nothing new (False: stop)."""
        stream = self.key(kind, name)
        last_id, nxt = f"0-{after + 1}", after + 1
        while True:
            try:
                resp = await self._readers.xread({stream: last_id}, count=64,
                                                 block=self.block_ms)
            except Exception as exc:  # Redis went away: end; the client resumes later
                log.warning("shared event log: reading %s failed: %r", stream, exc)
                return
            if not resp:
                if on_idle is not None and not await on_idle():
                    return
                continue
            for item_id, fields in resp[0][1]:
                last_id = item_id
                first = int(fields[b"f"])
                if first > nxt:
                    raise LogGap(first)
                entries = unpack(fields[b"d"])[nxt - first:]
                if not entries:
                    continue
                yield nxt, entries
                nxt += len(entries)
                if any(etype in end_types for etype, _ in entries):
                    return
