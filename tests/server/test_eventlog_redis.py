"""The shared event log against a real redis-server: batched writes, replay and live
follow from Redis, ownership by hash, delivery when Redis is unavailable, and the backlog:
what was delivered while Redis was killed or paused is written when it returns, once each;
past its bound the oldest stream is given up and marked lost."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import redis
import websockets

from router.config import parse_config
from router.config.schema import StateConfig
from router.core import Router
from router.server.app import create_app
from router.server.eventlog import EventLog, StreamLog, owner_hash
from router.server.eventlog_redis import RUN, STREAM, SharedLogs, pack, unpack
from router.server.remote import lost_problem
from router.testing.redis_server import RedisServer
from tests.server.conftest import eventually, uvicorn_on_loopback
from tests.server.test_openai_compat import CONFIG, KEY

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


# --- Redis unavailable: the backlog ---------------------------------------------------


def _stored(url: str, shared: SharedLogs, kind: str, key: str) -> list[tuple[str, bytes]]:
    """Every entry of a log as Redis holds it, in order (packed batches unpacked)."""
    client = redis.Redis.from_url(url)
    return [e for _, fields in client.xrange(shared.key(kind, key))
            for e in unpack(fields[b"d"])]


async def _until(check: Callable[[], bool]) -> None:
    await eventually(check, within_s=20)


async def test_events_written_while_redis_is_killed_are_shared_when_it_returns(
        tmp_path: Path) -> None:
    server = RedisServer(persist_dir=str(tmp_path))  # restarted with what it had
    shared = _shared(server.url, event_flush_ms=0, event_batch_ms=0,
                     connect_timeout_s=0.2, socket_timeout_s=0.2)
    await shared.start()
    try:
        slog = _log(shared, "k1")
        slog.append("route", b'{"seq":0}')
        await _until(lambda: shared.flushes >= 1)
        await asyncio.to_thread(server.kill)
        for i in range(30):
            slog.append("text", b'{"delta":"%d"}' % i)
        slog.append("done", b"{}")
        slog.close(0.0)
        assert [n for n, _ in await _drain(slog)] == list(range(32))  # served here anyway
        assert shared.failures >= 1 and shared.writer.backlog
        await asyncio.to_thread(server.start)
        await _until(lambda: not shared.writer.backlog)
        assert _stored(server.url, shared, STREAM, "k1") == list(slog.entries)
        snap = await shared.snapshot(STREAM, "k1")
        assert snap is not None and snap.log.closed and snap.meta["req"] == "{}"
        other = _shared(server.url)  # another instance resumes it from the start
        other.prefix = shared.prefix
        resumed = [e async for _, batch in other.follow(STREAM, "k1", -1, TERMINAL)
                   for e in batch]
        await other.aclose()
        assert resumed == list(slog.entries)
    finally:
        await shared.aclose()
        server.stop()


async def test_events_delivered_while_redis_is_paused_are_written_once_it_resumes(
        redis_server) -> None:
    shared = _shared(redis_server.url, event_flush_ms=0, event_batch_ms=0,
                     connect_timeout_s=0.2, socket_timeout_s=0.2)
    await shared.start()
    try:
        slog = _log(shared, "p1")
        slog.run = "run-p1"  # the stream's copy into its run rides on the same writes
        slog.append("route", b'{"seq":0}')
        await _until(lambda: shared.flushes >= 1)
        redis_server.pause()  # writes time out here
        for i in range(10):
            slog.append("text", b'{"delta":"%d"}' % i)
        await _until(lambda: shared.failures >= 1)
        for i in range(10, 20):  # delivered here, kept for later
            slog.append("text", b'{"delta":"%d"}' % i)
        slog.append("done", b"{}")
        slog.close(0.0)
        await _drain(slog)
        redis_server.resume()
        await _until(lambda: not shared.writer.backlog)
        # A write that timed out but ran anyway (a slow Redis) is sent again whole: the
        # scripts skip what is there, in the stream and in its run.
        shared.writer.backlog.keep(slog, STREAM, 1)
        await shared.writer.flush({slog: STREAM})
        assert not shared.writer.backlog
        assert _stored(redis_server.url, shared, STREAM, "p1") == list(slog.entries)
        assert _stored(redis_server.url, shared, RUN, "run-p1") == list(slog.entries)
        counter = redis.Redis.from_url(redis_server.url).get(shared.key(RUN, "run-p1") + ":n")
        assert int(counter) == len(slog.entries)
    finally:
        await shared.aclose()


async def test_past_the_backlog_bound_the_oldest_stream_is_given_up_and_says_so(
        redis_server) -> None:
    shared = _shared(redis_server.url, event_flush_ms=0, event_batch_ms=0,
                     connect_timeout_s=0.2, socket_timeout_s=0.2, event_backlog_max=15)
    await shared.start()
    try:
        old, young = _log(shared, "old"), _log(shared, "young")
        old.run = "run-old"
        for slog in (old, young):
            slog.append("route", b"{}")
        await _until(lambda: shared.flushes >= 1)
        redis_server.pause()
        for i in range(10):
            old.append("text", b'{"delta":"%d"}' % i)
        await _until(lambda: shared.failures >= 1)
        for i in range(10):  # 20 pending > 15: `old`, pending the longest, is given up
            young.append("text", b'{"delta":"%d"}' % i)
        young.append("done", b"{}")
        young.close(0.0)
        await _drain(young)
        old.append("done", b"{}")  # nothing more of `old` is shared: no hole looks whole
        old.close(0.0)
        await _drain(old)
        assert shared.writer.backlog.is_lost(STREAM, "old")
        redis_server.resume()
        await _until(lambda: not shared.writer.backlog)
        assert _stored(redis_server.url, shared, STREAM, "young") == list(young.entries)
        snap = await shared.snapshot(STREAM, "old")
        refused = lost_problem(snap)
        assert refused is not None and refused.status_code == 410
        assert orjson.loads(bytes(refused.body))["error"]["code"] == "events_lost"
        assert snap is not None and snap.meta["lost"] == "1"
        run_meta = await shared.meta(RUN, "run-old")
        assert run_meta is not None and run_meta["lost"] == "stream old"
    finally:
        await shared.aclose()


async def test_a_lost_stream_resumed_on_another_instance_is_a_410_over_sse_and_websocket(
        redis_url: str) -> None:
    cfg = copy.deepcopy(CONFIG)
    cfg["state"] = {"backend": "redis", "url": redis_url, "prefix": f"l{uuid.uuid4().hex[:6]}:"}
    router = Router(parse_config(cfg))
    # What an instance that gave the stream up leaves in Redis: its first events, then the
    # `lost` mark written when Redis came back.
    client = redis.Redis.from_url(redis_url)
    key = f"{cfg['state']['prefix']}log:s:gone1"
    client.xadd(key, {"f": 0, "d": pack([("route", b"{}"), ("start", b"{}")])}, id="0-2")
    client.hset(key + ":meta", mapping={"owner": owner_hash("tester"), "state": "lost",
                                        "lost": "2", "inst": "elsewhere", "req": "{}"})
    try:
        async with uvicorn_on_loopback(create_app(router)) as (_, url):
            async with httpx.AsyncClient(base_url=url, headers={
                    "authorization": f"Bearer {KEY}"}) as http:
                res = await http.get("/v1/streams/gone1/events",
                                     headers={"last-event-id": "0"})
            assert res.status_code == 410
            assert res.json()["error"]["code"] == "events_lost"
            async with websockets.connect(url.replace("http", "ws") + "/v1/ws") as ws:
                await ws.send(orjson.dumps({"type": "auth", "key": KEY}).decode())
                assert orjson.loads(await ws.recv())["type"] == "ready"
                await ws.send(orjson.dumps({"type": "resume", "request_id": "gone1",
                                            "after": -1}).decode())
                rejected = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (rejected["type"], rejected["status"], rejected["code"]) == (
                "rejected", 410, "events_lost")
    finally:
        await router.aclose()


async def test_a_heartbeat_expired_by_a_redis_pause_is_not_a_death(redis_url: str) -> None:
    """A paused Redis expires every instance's heartbeat at once: a reader that looks
    right after it resumes must not take over streams whose instance is alive and about
    to write them. Dead means missing for a whole lease from the first sighting."""
    cfg = StateConfig(backend="redis", url=redis_url, prefix=f"d{uuid.uuid4().hex[:6]}:",
                      stream_lease_s=0.3)
    alive, reader = (SharedLogs(cfg, max_events=100, retention_s=60, stream_ttl_s=60)
                     for _ in range(2))
    client = redis.Redis.from_url(redis_url)
    running_on = {"state": "running", "inst": alive.instance}
    try:
        await alive._beat_once()
        assert not await reader.orphaned(running_on)
        client.delete(f"{cfg.prefix}inst:{alive.instance}")  # what the pause did
        assert not await reader.orphaned(running_on)
        await alive._beat_once()  # Redis answers again: the instance beats, the doubt clears
        client.delete(f"{cfg.prefix}inst:{alive.instance}")
        assert not await reader.orphaned(running_on)
        # An instance that never beats again is dead once a lease has passed.
        gone = {"state": "running", "inst": "ghost"}
        assert not await reader.orphaned(gone)
        verdicts: list[bool] = []

        async def look() -> None:
            while not verdicts or not verdicts[-1]:
                verdicts.append(await reader.orphaned(gone))
                await asyncio.sleep(0.01)  # polling Redis's verdict, not timing it

        await asyncio.wait_for(look(), 10)
        assert verdicts[-1] and not verdicts[0]
    finally:
        client.close()
        for shared in (alive, reader):
            await shared.aclose()
