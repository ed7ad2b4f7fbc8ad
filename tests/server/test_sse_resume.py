"""Resume: the event log (replay then live, bounds, retention) and SSE framing, then a real
client that drops mid-stream and reconnects with `Last-Event-ID` / `?after=`."""

from __future__ import annotations

import asyncio

import pytest

from router.server.eventlog import EventLog, LogGap
from router.server.sse import BadCursor, frame, last_event_id
from tests.server.conftest import SLOW, eventually, frames, read_until_terminal

KEY = "sk-resume-0123456789"


def test_frame_is_whatwg_sse() -> None:
    assert frame(7, ("text", b'{"delta":"a\\nb"}')) == (
        b'id: 7\nevent: text\ndata: {"delta":"a\\nb"}\n\n')


def test_last_event_id_prefers_the_header_then_after() -> None:
    assert last_event_id({"last-event-id": "12"}, {"after": "3"}) == 12
    assert last_event_id({}, {"after": "3"}) == 3
    assert last_event_id({}, {}) is None
    for bad in ("x", "--5", "²", "9" * 5000, "1.5"):
        with pytest.raises(BadCursor):
            last_event_id({"last-event-id": bad}, {})


async def test_follow_replays_then_goes_live_exactly_once() -> None:
    log = EventLog(max_events=100, retention_s=10).open("r", None)
    for i in range(3):
        log.append("text", b"%d" % i)
    got: list[int] = []

    async def reader() -> None:
        async for seq, (_, data) in log.follow(0):
            assert int(data) == seq
            got.append(seq)

    task = asyncio.create_task(reader())
    await eventually(lambda: got == [1, 2])
    for i in range(3, 6):
        log.append("text", b"%d" % i)
    log.close(0.0)
    await asyncio.wait_for(task, 2)
    assert got == [1, 2, 3, 4, 5]


async def test_follow_batches_catch_a_slow_reader_up_in_one_go() -> None:
    log = EventLog(max_events=100, retention_s=10).open("r", None)
    for i in range(5):
        log.append("text", b"%d" % i)
    batches = log.follow_batches(1)
    first, batch = await anext(batches)
    assert first == 2 and [d for _, d in batch] == [b"2", b"3", b"4"]
    log.append("done", b"5")
    log.close(0.0)
    assert await anext(batches) == (5, [("done", b"5")])
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_bounded_log_reports_a_gap_instead_of_a_hole() -> None:
    log = EventLog(max_events=16, retention_s=10).open("r", None)
    for i in range(20):
        log.append("text", b"%d" % i)
    assert log.dropped == 4 and log.next_seq == 20
    assert [s for s, _ in log.replay(10)] == list(range(11, 20))
    with pytest.raises(LogGap):
        list(log.replay(1))
    with pytest.raises(LogGap):
        async for _ in log.follow(0):
            pass


def test_sweep_keeps_closed_logs_for_retention() -> None:
    now = [0.0]
    logs = EventLog(max_events=16, retention_s=30, clock=lambda: now[0])
    done, running = logs.open("done", None), logs.open("running", None)
    logs.close(done)
    now[0] = 29.0
    assert logs.sweep() == 0
    now[0] = 31.0
    assert logs.sweep() == 1
    assert logs.get("done") is None and logs.get("running") is running


def test_finished_logs_kept_are_bounded_in_bytes_oldest_first() -> None:
    # Finished streams were kept for `retention_s` however many there were: memory grew
    # with throughput x retention (500 streams a second of 40 events, kept 300 s: ~1 GB).
    # Past `max_retained_bytes` the longest-finished are dropped first; running ones stay.
    now = [0.0]
    logs = EventLog(max_events=1000, retention_s=300, clock=lambda: now[0],
                    max_retained_bytes=10_000)
    running = logs.open("running", None)
    for _ in range(50):
        running.append("text", b"x" * 200)
    for i in range(20):  # each ~1,000 bytes of events once finished
        log = logs.open(f"done{i}", None)
        for _ in range(5):
            log.append("text", b"y" * 100)
        now[0] += 1.0
        logs.close(log)
    kept = [i for i in range(20) if logs.get(f"done{i}") is not None]
    assert kept == list(range(20 - len(kept), 20))  # the newest, in one run
    assert 5 <= len(kept) < 20
    assert logs.retained_bytes <= 10_000
    assert logs.get("running") is running and not running.closed
    assert len(logs.active()) == 1


def test_sweep_of_finished_logs_reads_only_the_expired() -> None:
    now = [0.0]
    logs = EventLog(max_events=16, retention_s=30, clock=lambda: now[0])
    for i in range(3):
        log = logs.open(f"d{i}", None)
        log.append("done", b"{}")
        logs.close(log)
        now[0] += 10.0
    now[0] = 45.0  # d0 closed at 0 and d1 at 10 are past 30 s; d2 at 20 is not
    assert logs.sweep() == 2
    assert [k for k in ("d0", "d1", "d2") if logs.get(k)] == ["d2"]
    assert logs.retained_bytes > 0
    now[0] = 51.0
    assert logs.sweep() == 1 and logs.retained_bytes == 0


async def _drop_after(c, body, n_text: int):
    """Start a stream, read up to its `n_text`-th text event, drop the connection."""
    seen = []
    async with c.stream("POST", "/v1/stream", json=body) as resp:
        async for f in frames(resp):
            if f.comment is None:
                seen.append(f)
            if sum(1 for s in seen if s.event == "text") == n_text:
                break
    return resp.headers["x-request-id"], seen


@pytest.mark.parametrize("how", ["last-event-id", "after"])
async def test_reconnect_gets_every_remaining_event_exactly_once(serve, fleet, how) -> None:
    srv = await serve(keys={"a": KEY}, options={"mid": SLOW})
    body = {"input": "Tell me about breakers", "model": "mid", "detach": True}
    async with srv.client(KEY) as c:
        rid, before = await _drop_after(c, body, 5)
        last = before[-1].id
        if how == "last-event-id":
            req = c.stream("GET", f"/v1/streams/{rid}/events",
                           headers={"last-event-id": str(last)})
        else:
            req = c.stream("GET", f"/v1/streams/{rid}/events", params={"after": last})
        async with req as resp:
            assert resp.status_code == 200
            after = await read_until_terminal(resp)
    ids = [f.id for f in before + after]
    assert ids == list(range(len(ids)))  # nothing lost, nothing twice
    assert after[-1].event == "done"
    direct = await fleet.collect(fleet.router(options={"mid": SLOW}), body["input"],
                                 model="mid")
    assert [f.event for f in before + after] == [e.type for e in direct]
    text = "".join(f.data["delta"] for f in before + after if f.event == "text")
    assert text == "".join(e.delta for e in direct if e.type == "text")


async def test_reconnect_twice_and_after_the_end(serve) -> None:
    srv = await serve(options={"mid": SLOW})
    async with srv.client() as c:
        rid, first = await _drop_after(c, {"input": "x", "model": "mid", "detach": True}, 2)
        async with c.stream("GET", f"/v1/streams/{rid}/events",
                            headers={"last-event-id": str(first[-1].id)}) as resp:
            second = []
            async for f in frames(resp):
                if f.comment is None:
                    second.append(f)
                if len(second) == 3:
                    break
        await eventually(lambda: srv.app.state.streams.get(rid).closed)
        async with c.stream("GET", f"/v1/streams/{rid}/events",
                            headers={"last-event-id": str(second[-1].id)}) as resp:
            third = await read_until_terminal(resp)
        # A fresh reader (no id) replays the whole stream.
        async with c.stream("GET", f"/v1/streams/{rid}/events") as resp:
            whole = await read_until_terminal(resp)
    ids = [f.id for f in first + second + third]
    assert ids == list(range(len(ids)))
    assert [f.id for f in whole] == ids
    assert [f.data for f in whole] == [f.data for f in first + second + third]


async def test_resume_past_the_bound_is_410(serve) -> None:
    srv = await serve(server={"max_log_events": 16}, options={"mid": {"output_tokens": 40}})
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "x", "model": "mid"})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        gone = await c.get(f"/v1/streams/{rid}/events", headers={"last-event-id": "2"})
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "events_dropped"
        async with c.stream("GET", f"/v1/streams/{rid}/events",
                            headers={"last-event-id": "40"}) as resp:
            tail = await read_until_terminal(resp)
    assert tail[0].id == 41 and tail[-1].event == "done"


async def test_stream_expires_after_retention(serve) -> None:
    srv = await serve(server={"retention_s": 0})
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "x"})
        rid = r.headers["x-request-id"]
        srv.app.state.streams.sweep()
        assert (await c.get(f"/v1/streams/{rid}")).status_code == 404


async def test_finished_streams_beyond_the_memory_bound_are_gone_newest_kept(serve) -> None:
    probe = await serve()
    async with probe.client() as c:
        await c.post("/v1/stream", json={"input": "x"})
    one_stream = probe.app.state.streams.retained_bytes
    assert one_stream > 0
    srv = await serve(server={"max_retained_bytes": 5 * one_stream})
    async with srv.client() as c:
        rids = []
        for _ in range(12):
            r = await c.post("/v1/stream", json={"input": "x"})
            rids.append(r.headers["x-request-id"])
        found = [(await c.get(f"/v1/streams/{rid}")).status_code for rid in rids]
    # The newest kept (five streams' worth: four or five, as their sizes differ by a few
    # digits), the oldest went first.
    assert 4 <= found.count(200) <= 5
    assert found == [404] * found.count(404) + [200] * found.count(200)
    assert srv.app.state.streams.retained_bytes <= 5 * one_stream


async def test_resumed_reader_gets_heartbeats_while_the_provider_thinks(serve) -> None:
    srv = await serve(server={"heartbeat_s": 0.02}, options={"mid": {"ttft_ms": 300}})
    async with srv.client() as c:
        async with c.stream("POST", "/v1/stream",
                            json={"input": "x", "model": "mid", "detach": True}) as resp:
            rid = resp.headers["x-request-id"]
        async with c.stream("GET", f"/v1/streams/{rid}/events",
                            headers={"last-event-id": "1"}) as resp:
            beats = 0
            async for f in frames(resp):
                if f.comment is not None:
                    beats += 1
                elif f.event == "text":
                    assert f.id == 2
                    break
    assert beats >= 3


async def test_resuming_after_the_terminal_event_is_204(serve) -> None:
    srv = await serve()
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "x"})
        rid, last = r.headers["x-request-id"], r.text.count("\nevent: ") - 1
        end = await c.get(f"/v1/streams/{rid}/events", headers={"last-event-id": str(last)})
        assert end.status_code == 204  # an EventSource stops reconnecting
        tail = await c.get(f"/v1/streams/{rid}/events", params={"after": last - 1})
        assert tail.status_code == 200 and tail.text.count("event: ") == 1
