"""The shared event log against a real redis-server: batched writes, replay and live
follow from Redis, ownership by hash, and delivery when Redis is unavailable."""

from __future__ import annotations

import asyncio
import uuid

import redis

from router.config.schema import StateConfig
from router.server.eventlog import EventLog, StreamLog
from router.server.eventlog_redis import STREAM, SharedLogs, pack, unpack

TERMINAL = frozenset({"done", "error"})


def _shared(url: str, **state: float) -> SharedLogs:
    cfg = StateConfig(backend="redis", url=url, prefix=f"e{uuid.uuid4().hex[:6]}:", **state)
    return SharedLogs(cfg, max_events=1000, retention_s=60, stream_ttl_s=60)


def _log(shared: SharedLogs, key: str, owner: str = "alice") -> StreamLog:
    logs = EventLog(1000, 60)
    logs.sink = shared.streams_sink
    slog = logs.open(key, owner)
    shared.describe(slog, {"owner": "", "detach": "0", "req": "{}"})
    return slog


async def _drain(slog: StreamLog) -> list[tuple[int, tuple[str, bytes]]]:
    return [item async for item in slog.follow(-1)]


def test_packing_round_trips_entries() -> None:
    entries = [("text", b'{"delta":"a b"}'), ("done", b"{}")]
    assert unpack(pack(entries)) == entries


async def test_a_stream_is_written_in_a_few_batches_and_read_back(redis_url: str) -> None:
    shared = _shared(redis_url, event_flush_ms=5, event_batch_ms=1000)
    client = redis.Redis.from_url(redis_url)
    await shared.start()
    try:
        slog = _log(shared, "r1")
        slog.append("route", b'{"seq":0}')
        slog.append("start", b'{"seq":1}')
        deltas = [slog.append("text", b'{"delta":"%d"}' % i) for i in range(45)]
        slog.append("done", b'{"seq":47}')
        slog.close(0.0)
        seen = await _drain(slog)  # readers here see what is written
        assert [n for n, _ in seen] == list(range(48)) and deltas[-1] == 46
        writes = client.xlen(shared.key(STREAM, "r1"))
        # route+start+first text, then text in batches of 20, then the end: not one a chunk.
        assert writes <= 5
        snap = await shared.snapshot(STREAM, "r1")
        assert snap is not None and snap.log.closed and snap.log.next_seq == 48
        assert list(snap.log.entries) == [e for _, e in seen]
        replay = [item async for item in shared.follow(STREAM, "r1", 40, TERMINAL)]
        assert replay[0][0] == 41 and sum(len(b) for _, b in replay) == 7
    finally:
        await shared.aclose()


async def test_a_reader_elsewhere_follows_live_with_a_blocking_read(redis_url: str) -> None:
    shared = _shared(redis_url, event_flush_ms=0, event_batch_ms=0)
    await shared.start()
    try:
        slog = _log(shared, "r2")
        slog.append("route", b"{}")
        got: list[int] = []

        async def reader() -> None:
            async for first, batch in shared.follow(STREAM, "r2", -1, TERMINAL):
                got.extend(range(first, first + len(batch)))

        task = asyncio.create_task(reader())
        for i in range(5):
            await asyncio.sleep(0)
            slog.append("text", b'{"delta":"%d"}' % i)
        slog.append("done", b"{}")
        slog.close(0.0)
        await asyncio.wait_for(task, 10)
        assert got == list(range(7))
    finally:
        await shared.aclose()


async def test_redis_unavailable_still_delivers_to_local_readers() -> None:
    shared = _shared("redis://127.0.0.1:1/0", connect_timeout_s=0.2, socket_timeout_s=0.2)
    await shared.start()
    try:
        slog = _log(shared, "r3")
        slog.append("route", b"{}")
        slog.append("done", b"{}")
        slog.close(0.0)
        assert [n for n, _ in await _drain(slog)] == [0, 1]
        assert shared.failures >= 1
        assert await shared.snapshot(STREAM, "r3") is None
    finally:
        await shared.aclose()
