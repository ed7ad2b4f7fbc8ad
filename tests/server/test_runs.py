"""Run channels: a request's events and an agent's own events, interleaved in one run that
a UI follows (replay + live, same resume rules as a stream)."""

from __future__ import annotations

import asyncio

import pytest

from router.server.eventlog import EventLog
from router.server.runs import RUN_END, RunError, RunRegistry
from tests.server.conftest import SLOW, eventually, frames

KEY = "sk-runs-0123456789"


async def _follow_run(c, run_id: str, headers=None) -> list:
    got = []
    async with c.stream("GET", f"/v1/runs/{run_id}/events", headers=headers or {}) as resp:
        assert resp.status_code == 200
        async for f in frames(resp):
            if f.comment is None:
                got.append(f)
                if f.event == RUN_END:
                    break
    return got


async def test_a_run_shows_agent_steps_and_request_events_in_order(serve) -> None:
    srv = await serve(keys={"a": KEY})
    async with srv.client(KEY) as c:
        r = await c.post("/v1/runs/run-1/events", json={"type": "step_started", "step": 1})
        assert r.status_code == 201 and r.json()["ids"] == [0]
        follower = asyncio.create_task(_follow_run(c, "run-1"))
        r = await c.post("/v1/stream", json={"input": "plan", "metadata": {"run_id": "run-1"}})
        assert r.status_code == 200
        r = await c.post("/v1/runs/run-1/events", json=[
            {"type": "tool_start", "tool": "search"}, {"type": "tool_end", "tool": "search"},
            {"type": RUN_END}])
        assert r.status_code == 201
        got = await asyncio.wait_for(follower, 5)
    types = [f.event for f in got]
    assert types[0] == "step_started" and types[1] == "route"
    assert types[-4:] == ["done", "tool_start", "tool_end", RUN_END]
    assert [f.id for f in got] == list(range(len(got)))
    assert got[0].data["run_id"] == "run-1" and "ts" in got[0].data
    routed = [f for f in got if "request_id" in f.data]
    assert len({f.data["request_id"] for f in routed}) == 1
    assert [f.data["seq"] for f in routed] == list(range(len(routed)))


async def test_two_requests_in_one_run_and_resume_by_last_event_id(serve) -> None:
    srv = await serve(options={"mid": SLOW})
    async with srv.client() as c:
        for prompt in ("first", "second"):
            await c.post("/v1/stream", json={"input": prompt, "model": "mid",
                                             "metadata": {"run_id": "r2"}})
        await c.post("/v1/runs/r2/events", json={"type": RUN_END})
        whole = await _follow_run(c, "r2")
        tail = await _follow_run(c, "r2", headers={"last-event-id": str(whole[9].id)})
    assert [f.event for f in whole].count("done") == 2
    assert [f.id for f in tail] == [f.id for f in whole[10:]]


async def test_live_run_follower_sees_a_detached_stream_as_it_happens(serve) -> None:
    srv = await serve(options={"mid": SLOW})
    async with srv.client() as c:
        follower = asyncio.create_task(_follow_run(c, "live"))
        await c.post("/v1/runs/live/events", json={"type": "step_started"})
        async with c.stream("POST", "/v1/stream", json={
                "input": "x", "model": "mid", "detach": True,
                "metadata": {"run_id": "live"}}):
            pass
        run = srv.app.state.runs.log.get("live")
        await eventually(lambda: any(t == "done" for t, _ in run.entries))
        srv.app.state.runs.publish("live", {"type": RUN_END})
        got = await asyncio.wait_for(follower, 5)
    assert [f.event for f in got][-2:] == ["done", RUN_END]


async def test_publish_validation() -> None:
    runs = RunRegistry(EventLog(max_events=100, retention_s=60, expire_idle=True))
    assert runs.publish("r", {"type": "progress", "pct": 10}, owner="a") == 0
    for bad in ({"pct": 1}, {"type": ""}, {"type": "done"}, {"type": "has space"}):
        with pytest.raises(RunError) as err:
            runs.publish("r", bad, owner="a")
        assert err.value.status == 422 and err.value.param == "type"
    # Another key's `r` is its own run: it can neither write nor read a's.
    assert runs.publish("r", {"type": "progress"}, owner="b") == 0
    assert runs.get("r", "a") is not runs.get("r", "b")
    assert len(runs.get("r", "a").entries) == 1
    runs.publish("r", {"type": RUN_END}, owner="a")
    with pytest.raises(RunError) as err:
        runs.publish("r", {"type": "progress"}, owner="a")
    assert err.value.status == 409


async def test_http_publish_errors(serve) -> None:
    srv = await serve()
    async with srv.client() as c:
        r = await c.post("/v1/runs/r/events", json={"type": "text", "delta": "forged"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "type"
        r = await c.post("/v1/runs/r/events", content=b"nope")
        assert r.status_code == 422
        assert (await c.get("/v1/runs/unknown/events")).status_code == 404


def test_idle_runs_expire() -> None:
    now = [0.0]
    runs = RunRegistry(EventLog(16, 60, expire_idle=True, clock=lambda: now[0]))
    runs.publish("r", {"type": "progress"})
    now[0] = 59.0
    runs.publish("r", {"type": "progress"})
    now[0] = 100.0
    assert runs.log.sweep() == 0  # touched at 59
    now[0] = 120.0
    assert runs.log.sweep() == 1 and runs.log.get("r") is None


async def test_agent_code_publishes_into_a_run_through_router_publish(serve) -> None:
    # The agent runs in the server's process and holds the same Router: its own events
    # reach the run channel a UI follows, interleaved with the request's events.
    srv = await serve()
    async with srv.client() as c:
        follower = asyncio.create_task(_follow_run(c, "agent-run"))
        assert srv.router.publish("agent-run", {"type": "step_started", "step": "plan"}) == 1
        await c.post("/v1/stream", json={"input": "plan", "metadata": {"run_id": "agent-run"}})
        srv.router.publish("agent-run", {"type": "tool_end", "tool": "search", "ok": True})
        srv.router.publish("agent-run", {"type": RUN_END})
        got = await asyncio.wait_for(follower, 5)
    types = [f.event for f in got]
    assert types[0] == "step_started" and types[1] == "route"
    assert types[-3:] == ["done", "tool_end", RUN_END]
    assert got[-2].data == {"type": "tool_end", "tool": "search", "ok": True,
                            "run_id": "agent-run", "ts": got[-2].data["ts"]}


async def test_router_publish_without_a_server_reaches_no_channel(fleet) -> None:
    async with fleet.router() as r:
        assert r.publish("nobody", {"type": "step_started"}) == 0
