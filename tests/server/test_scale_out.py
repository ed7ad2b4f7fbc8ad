"""Scale-out on one Redis: real `llm-router serve` processes on loopback ports sharing a real
redis-server. A stream started on A resumes on B; a run published on A is followed live on
B (SSE and WebSocket); a breaker opened by A's traffic routes B's requests away; and when
the instance serving a stream is killed (-9), another continues it for the client that
reconnects with `Last-Event-ID`: the joined text is the uninterrupted answer, no `seq`
twice, one terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
import yaml

from tests.server.conftest import Frame, frames, key_entry, read_until_terminal

KEYS = {"alice": "sk-alice-1", "bob": "sk-bob-1"}
PROMPT = "Explain how the router survives an instance failure"


def _dep(dep_id: str, **options: Any) -> dict[str, Any]:
    return {"id": dep_id, "provider": "sim", "model": f"sim-{dep_id}",
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
            "context_window": 32768, "latency_prior": {"ttft_ms": 100, "tokens_per_s": 100},
            "quality": 0.7, "capabilities": ["prefill"],
            "options": {"ttft_ms": 0, "tokens_per_s": 60, "output_tokens": 90, **options}}


def _config(tmp: Path, redis_url: str, **state: Any) -> Path:
    cfg = {
        "version": 1,
        "providers": {"sim": {"kind": "simulated", "options": {"seed": 11}}},
        "deployments": [_dep("main"), _dep("spare"),
                        _dep("flaky", error_rate=1.0, error_code="overloaded")],
        "tasks": {"general": {"candidates": ["main", "spare"], "prefer": "quality"},
                  "risky": {"candidates": ["flaky", "spare"], "prefer": "quality"}},
        "defaults": {"task": "general", "max_tokens": 400},
        "resilience": {"retry": {"attempts": 1, "initial_backoff_ms": 0, "max_backoff_ms": 0},
                       "breaker": {"fail_max": 2, "reset_timeout_s": 600}},
        "server": {"api_keys": [key_entry(n, k) for n, k in KEYS.items()],
                   "heartbeat_s": 1, "retention_s": 120},
        "state": {"backend": "redis", "url": redis_url, "prefix": f"t{uuid.uuid4().hex[:8]}:",
                  "stream_lease_s": 0.6, "event_flush_ms": 5, "stats_sync_s": 0.2, **state},
    }
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Instance:
    """One `llm-router serve` process on a loopback port."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(config),
             "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:  # uvicorn says when it accepts connections
            if b"Application startup complete" in raw:
                return
        raise AssertionError(f"server exited with {self.proc.wait()}")

    def client(self, key: str = KEYS["alice"]) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(15.0),
                                 headers={"authorization": f"Bearer {key}"})

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def pair(tmp_path: Path, redis_url: str) -> Iterator[tuple[Instance, Instance]]:
    config = _config(tmp_path, redis_url)
    started: list[Instance] = []
    try:
        started.append(Instance(config))
        started.append(Instance(config))
        yield started[0], started[1]
    finally:
        for inst in started:
            inst.stop()


async def _next_event(it: AsyncIterator[Frame]) -> Frame:
    async for f in it:
        if f.comment is None:
            return f
    raise AssertionError("the stream ended")


def _text(events: list[Frame]) -> str:
    return "".join(f.data["delta"] for f in events if f.event == "text")


async def _answer(inst: Instance, prompt: str = PROMPT) -> list[Frame]:
    async with inst.client() as c, c.stream("POST", "/v1/stream", json={"input": prompt}) as r:
        assert r.status_code == 200
        return await read_until_terminal(r)


async def test_a_stream_started_on_a_resumes_and_shows_its_status_on_b(pair) -> None:
    a, b = pair
    on_a = await _answer(a)
    rid = on_a[0].data["request_id"]
    async with b.client() as c:
        async with c.stream("GET", f"/v1/streams/{rid}/events",
                            headers={"last-event-id": "3"}) as r:
            assert r.status_code == 200
            rest = await read_until_terminal(r)
        status = (await c.get(f"/v1/streams/{rid}")).json()
    assert [(f.id, f.data) for f in rest] == [(f.id, f.data) for f in on_a[4:]]
    assert status["state"] == "done" and status["text"] == _text(on_a)
    assert status["last_event_id"] == on_a[-1].id
    async with b.client(KEYS["bob"]) as c:  # ownership holds across instances
        assert (await c.get(f"/v1/streams/{rid}")).status_code == 403
        assert (await c.get(f"/v1/streams/{rid}/events")).status_code == 403
        assert (await c.get("/v1/streams/nope")).status_code == 404


async def test_a_cancel_sent_to_b_stops_a_stream_running_on_a(pair) -> None:
    a, b = pair
    async with a.client() as ca, b.client() as cb:
        async with ca.stream("POST", "/v1/stream", json={"input": PROMPT}) as events:
            rid = events.headers["x-request-id"]
            assert (await _next_event(frames(events))).event == "route"
            cancel = await cb.post(f"/v1/streams/{rid}/cancel")
            assert cancel.status_code == 202 and cancel.json()["cancelled"] is True
            rest = await read_until_terminal(events)
        assert rest[-1].event == "error" and rest[-1].data["code"] == "cancelled"
        async with b.client(KEYS["bob"]) as other:
            assert (await other.post(f"/v1/streams/{rid}/cancel")).status_code == 403


async def test_a_websocket_on_b_resumes_a_stream_started_on_a(pair) -> None:
    a, b = pair
    on_a = await _answer(a)
    rid = on_a[0].data["request_id"]
    async with websockets.connect(b.url.replace("http", "ws")
                                  + f"/v1/ws?api_key={KEYS['alice']}") as ws:
        assert orjson.loads(await ws.recv())["type"] == "ready"
        await ws.send(orjson.dumps({"type": "resume", "request_id": rid, "after": 5}).decode())
        rest = [orjson.loads(await ws.recv()) for _ in range(len(on_a) - 6)]
    assert rest == [f.data for f in on_a[6:]]


async def test_a_run_published_on_a_is_followed_live_on_b_over_sse_and_websocket(pair) -> None:
    a, b = pair
    run = f"run-{uuid.uuid4().hex[:6]}"
    async with a.client() as ca, b.client() as cb:
        r = await ca.post(f"/v1/runs/{run}/events", json={"type": "step", "n": 0})
        assert r.status_code == 201 and r.json()["ids"] == [0]
        async with contextlib.AsyncExitStack() as stack:
            sse = await stack.enter_async_context(cb.stream("GET", f"/v1/runs/{run}/events"))
            assert sse.status_code == 200
            ws = await stack.enter_async_context(websockets.connect(
                b.url.replace("http", "ws") + f"/v1/ws?api_key={KEYS['alice']}"))
            assert orjson.loads(await ws.recv())["type"] == "ready"
            await ws.send(orjson.dumps({"type": "subscribe", "run_id": run,
                                        "after": -1}).decode())
            sse_frames = frames(sse)
            first = await _next_event(sse_frames)
            assert first.data["n"] == 0 and orjson.loads(await ws.recv())["n"] == 0
            # Live: published on A after B's readers were waiting.
            r = await ca.post(f"/v1/runs/{run}/events",
                              json=[{"type": "step", "n": 1}, {"type": "run_end"}])
            assert r.json()["ids"] == [1, 2]
            live = [f async for f in sse_frames if f.comment is None]
            ws_live = [orjson.loads(await ws.recv()) for _ in range(2)]
    assert [(f.id, f.event) for f in live] == [(1, "step"), (2, "run_end")]
    assert [m["type"] for m in ws_live] == ["step", "run_end"]
    async with b.client(KEYS["bob"]) as c:  # run ids are per key: bob has no such run
        assert (await c.get(f"/v1/runs/{run}/events")).status_code == 404


async def test_a_streams_events_reach_its_run_followed_on_another_instance(pair) -> None:
    a, b = pair
    run = f"run-{uuid.uuid4().hex[:6]}"
    async with a.client() as ca, ca.stream("POST", "/v1/stream", json={
            "input": PROMPT, "metadata": {"run_id": run}}) as r:
        on_a = await read_until_terminal(r)
    async with b.client() as cb, cb.stream("GET", f"/v1/runs/{run}/events") as r:
        assert r.status_code == 200
        on_b = await read_until_terminal(r)
    assert [f.data for f in on_b] == [f.data for f in on_a]
    assert [f.id for f in on_b] == list(range(len(on_a)))


async def test_a_breaker_opened_by_a_routes_b_requests_away(pair) -> None:
    a, b = pair
    for _ in range(2):  # fail_max: each fails over from `flaky` to `spare`
        async with a.client() as c, c.stream("POST", "/v1/stream",
                                             json={"input": "hi", "task": "risky"}) as r:
            events = await read_until_terminal(r)
        assert events[-1].event == "done" and events[-1].data["deployment"] == "spare"
    async with b.client() as c, c.stream("POST", "/v1/stream",
                                         json={"input": "hi", "task": "risky"}) as r:
        events = await read_until_terminal(r)
    route = events[0].data
    assert route["deployment"] == "spare", (route["reason"], route["candidates"])
    assert {x["deployment"]: x["reason"] for x in route["candidates"]}["flaky"] == "circuit_open"


async def test_latencies_observed_on_a_reach_b_estimates(pair) -> None:
    a, b = pair

    async def samples_on_b() -> int:
        async with b.client() as c:
            rows = (await c.get("/v1/deployments")).json()["deployments"]
        return int(next(r for r in rows if r["id"] == "spare")["estimate"]["samples"])

    assert await samples_on_b() == 0
    async with a.client() as c, c.stream("POST", "/v1/stream",
                                         json={"input": "hi", "model": "spare"}) as r:
        assert (await read_until_terminal(r))[-1].event == "done"
    for _ in range(200):  # B learns it at its next sync (stats_sync_s: 0.2)
        if await samples_on_b() > 0:
            break
        await asyncio.sleep(0.05)
    assert await samples_on_b() == 1


async def test_killing_the_instance_serving_a_stream_lets_another_finish_it(pair) -> None:
    a, b = pair
    uninterrupted = await _answer(b)
    seen: list[Frame] = []
    async with a.client() as c, c.stream("POST", "/v1/stream", json={"input": PROMPT}) as r:
        async for f in frames(r):
            if f.comment is None:
                seen.append(f)
            if sum(x.event == "text" for x in seen) >= 12:
                break
        a.kill()  # mid-answer, with this client still connected
    async with b.client() as c, c.stream(
            "GET", f"/v1/streams/{seen[0].data['request_id']}/events",
            headers={"last-event-id": str(seen[-1].id)}) as r:
        assert r.status_code == 200
        rest = await read_until_terminal(r)
    joined = seen + rest
    assert [f.id for f in joined] == list(range(len(joined)))  # no seq twice, none lost
    assert [f.data["seq"] for f in joined] == [f.id for f in joined]
    assert [f.event for f in joined].count("done") == 1 and joined[-1].event == "done"
    assert not any(f.event == "error" for f in joined)
    assert _text(joined) == _text(uninterrupted)
    fallback = next(f.data for f in rest if f.event == "fallback")
    assert fallback["mode"] == "continue" and fallback["after_tokens"] > 0
    done = joined[-1].data
    assert done["attempts"] == 2
    # Both parts are billed once each: the whole answer's output plus a second prompt.
    assert done["usage"]["output_tokens"] >= uninterrupted[-1].data["usage"]["output_tokens"]
    assert done["cost_usd"] > uninterrupted[-1].data["cost_usd"]


async def _run_frames(inst: Instance, run: str) -> list[Frame]:
    async with inst.client() as c, c.stream("GET", f"/v1/runs/{run}/events") as r:
        assert r.status_code == 200
        return await read_until_terminal(r)


async def test_a_taken_over_streams_continuation_reaches_its_run_on_every_instance(
        pair, tmp_path: Path) -> None:
    a, b = pair
    run = f"run-{uuid.uuid4().hex[:6]}"
    seen: list[Frame] = []
    async with a.client() as c, c.stream("POST", "/v1/stream", json={
            "input": PROMPT, "metadata": {"run_id": run}}) as r:
        it = frames(r)
        seen.append(await _next_event(it))
        # Following the run on B live, from before A dies to the continuation's end.
        live_on_b = asyncio.create_task(_run_frames(b, run))
        while sum(x.event == "text" for x in seen) < 12:
            seen.append(await _next_event(it))
        a.kill()
    async with b.client() as c, c.stream(
            "GET", f"/v1/streams/{seen[0].data['request_id']}/events",
            headers={"last-event-id": str(seen[-1].id)}) as r:
        rest = await read_until_terminal(r)
    joined = seen + rest
    assert any(f.event == "fallback" and f.data["mode"] == "continue" for f in rest)
    later = Instance(_config_path(tmp_path))  # one that never saw the stream
    try:
        replayed = await _run_frames(later, run)
    finally:
        later.stop()
    for run_frames in (await asyncio.wait_for(live_on_b, 30), replayed):
        # Exactly the stream: its events in seq order, none twice, one terminal event.
        assert [f.data for f in run_frames] == [f.data for f in joined]
        assert [f.id for f in run_frames] == list(range(len(joined)))
        assert [f.event for f in run_frames].count("done") == 1
        assert run_frames[-1].event == "done"


async def test_a_run_follower_alone_gets_an_orphaned_stream_taken_over(pair) -> None:
    a, b = pair
    run = f"run-{uuid.uuid4().hex[:6]}"
    seen: list[Frame] = []
    async with a.client() as c, c.stream("POST", "/v1/stream", json={
            "input": PROMPT, "detach": True, "metadata": {"run_id": run}}) as r:
        it = frames(r)
        seen.append(await _next_event(it))
        live_on_b = asyncio.create_task(_run_frames(b, run))
        while sum(x.event == "text" for x in seen) < 12:
            seen.append(await _next_event(it))
        a.kill()  # nobody resumes the stream: only the run is followed
    on_b = await asyncio.wait_for(live_on_b, 30)
    assert [f.data for f in on_b[:len(seen)]] == [f.data for f in seen]
    assert [f.id for f in on_b] == list(range(len(on_b)))
    assert [f.event for f in on_b].count("done") == 1 and on_b[-1].event == "done"
    fallback = next(f.data for f in on_b if f.event == "fallback")
    assert fallback["mode"] == "continue"
    uninterrupted = await _answer(b)
    assert _text(on_b) == _text(uninterrupted)


async def test_polling_the_status_of_an_orphaned_stream_gets_it_taken_over(pair) -> None:
    """A client that only polls `GET /v1/streams/{id}` (no resume) after the instance
    serving its detached stream died still sees the stream finish, not `running` forever."""
    a, b = pair
    seen: list[Frame] = []
    async with a.client() as c, c.stream("POST", "/v1/stream", json={
            "input": PROMPT, "detach": True}) as r:
        it = frames(r)
        while sum(x.event == "text" for x in seen) < 12:
            seen.append(await _next_event(it))
        a.kill()
    rid = seen[0].data["request_id"]
    async with b.client() as c:
        for _ in range(600):  # the lease (0.6 s) expires, then the continuation runs
            status = (await c.get(f"/v1/streams/{rid}")).json()
            if status["state"] != "running":
                break
            await asyncio.sleep(0.05)
    assert status["state"] == "done"
    assert status["text"] == _text(await _answer(b))


def _config_path(tmp: Path) -> Path:
    return tmp / "router.yaml"  # written by the `pair` fixture


async def test_a_stream_served_while_redis_is_paused_resumes_whole_on_another_instance(
        tmp_path: Path, redis_server: Any) -> None:
    config = _config(tmp_path, redis_server.url)
    a, b = Instance(config), Instance(config)
    try:
        seen: list[Frame] = []
        async with a.client() as c, c.stream("POST", "/v1/stream", json={"input": PROMPT}) as r:
            it = frames(r)
            while sum(x.event == "text" for x in seen) < 5:
                seen.append(await _next_event(it))
            redis_server.pause()  # A goes on serving its client from memory
            seen += [f async for f in it if f.comment is None]
        assert seen[-1].event == "done"
        redis_server.resume()
        rid = seen[0].data["request_id"]
        async with b.client() as cb:
            for _ in range(400):  # A writes its backlog within a retry period
                status = await cb.get(f"/v1/streams/{rid}")
                if status.status_code == 200 and status.json()["state"] == "done":
                    break
                await asyncio.sleep(0.05)
            async with cb.stream("GET", f"/v1/streams/{rid}/events",
                                 headers={"last-event-id": "-1"}) as r:
                assert r.status_code == 200
                resumed = await read_until_terminal(r)
        assert [(f.id, f.event, f.data) for f in resumed] == [
            (f.id, f.event, f.data) for f in seen]
    finally:
        a.stop()
        b.stop()


def test_serve_refuses_workers_without_shared_state(tmp_path: Path) -> None:
    path = tmp_path / "mem.yaml"
    cfg = yaml.safe_load(_config(tmp_path, "redis://127.0.0.1:1/0").read_text())
    cfg["state"] = {"backend": "memory"}
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "router.cli", "serve", "--config", str(path),
                          "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "shared state backend" in out.stderr


async def test_two_workers_on_one_port_share_streams(tmp_path: Path, redis_url: str) -> None:
    inst = Instance(_config(tmp_path, redis_url), "--workers", "2")
    try:
        rids = []
        for _ in range(6):  # new connections: the kernel spreads them over both workers
            rids.append((await _answer(inst))[0].data["request_id"])
        for rid in rids:
            async with inst.client() as c:
                status = (await c.get(f"/v1/streams/{rid}")).json()
            assert status["state"] == "done"
    finally:
        inst.stop()
