"""WebSocket `/v1/ws` with a real `websockets` client: authentication first, several streams
multiplexed on one socket, cancel, resume, ping/pong, cleanup when the socket closes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.server.conftest import SLOW, eventually

KEY = "sk-ws-test-0123456789"


async def send(ws: ClientConnection, **msg: Any) -> None:
    await ws.send(orjson.dumps(msg).decode())


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[no-any-return]


async def authed(srv) -> ClientConnection:
    ws = await connect(srv.ws_url)
    await send(ws, type="auth", key=KEY)
    assert await recv(ws) == {"type": "ready", "key": "alice"}
    return ws


async def collect_until_terminal(ws: ClientConnection, rids: set[str]
                                 ) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in rids}
    open_ = set(rids)
    while open_:
        msg = await recv(ws)
        out[msg["request_id"]].append(msg)
        if msg["type"] in ("done", "error"):
            open_.discard(msg["request_id"])
    return out


async def test_two_streams_on_one_socket_and_cancel_one(serve, fleet) -> None:
    srv = await serve(keys={"alice": KEY},
                      options={"mid": {"ttft_ms": 1, "tokens_per_s": 30}, "fast": SLOW})
    sim = fleet.sim(srv.router)
    async with await authed(srv) as ws:
        await send(ws, type="stream", ref="slow", input="one", model="mid")
        await send(ws, type="stream", ref="quick", input="two", model="fast")
        acks = {}
        events: dict[str, list[dict[str, Any]]] = {}
        while len(acks) < 2 or not events.get(acks["slow"]):
            msg = await recv(ws)
            if msg["type"] == "accepted":
                acks[msg["ref"]] = msg["request_id"]
            else:
                events.setdefault(msg["request_id"], []).append(msg)
        assert sim.open_streams >= 1
        await send(ws, type="cancel", request_id=acks["slow"])
        rest = await collect_until_terminal(ws, {acks["slow"], acks["quick"]} - {
            r for r, evs in events.items() if evs[-1]["type"] in ("done", "error")})
        for rid, evs in rest.items():
            events.setdefault(rid, []).extend(evs)
        await eventually(lambda: sim.open_streams == 0)
    slow, quick = events[acks["slow"]], events[acks["quick"]]
    assert slow[-1]["type"] == "error" and slow[-1]["code"] == "cancelled"
    assert quick[-1]["type"] == "done" and quick[-1]["usage"]["output_tokens"] == 60
    for evs in (slow, quick):
        assert [e["seq"] for e in evs] == list(range(len(evs)))


async def test_ping_pong(serve) -> None:
    srv = await serve(keys={"alice": KEY})
    async with await authed(srv) as ws:
        await send(ws, type="ping", id=42)
        assert await recv(ws) == {"type": "pong", "id": 42}
        pong = await ws.ping()  # the protocol-level keep-alive, answered by the server
        await asyncio.wait_for(pong, 5)


async def test_unauthenticated_socket_is_closed(serve, fleet) -> None:
    srv = await serve(keys={"alice": KEY})
    async with connect(srv.ws_url) as ws:
        await send(ws, type="stream", input="hi")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with connect(srv.ws_url) as ws:
        await send(ws, type="auth", key="sk-wrong")
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
    assert fleet.sim(srv.router).calls == 0


async def test_header_key_authenticates_and_bad_header_is_refused(serve) -> None:
    srv = await serve(keys={"alice": KEY})
    async with connect(srv.ws_url, additional_headers={"authorization": f"Bearer {KEY}"}) as ws:
        assert await recv(ws) == {"type": "ready", "key": "alice"}
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(srv.ws_url, additional_headers={"authorization": "Bearer nope"})
    assert refused.value.response.status_code == 403


async def test_closing_the_socket_cancels_its_streams_unless_detached(serve, fleet) -> None:
    srv = await serve(keys={"alice": KEY}, options={"mid": {"ttft_ms": 1, "tokens_per_s": 30}})
    sim = fleet.sim(srv.router)
    async with await authed(srv) as ws:
        await send(ws, type="stream", ref="a", input="one", model="mid")
        await send(ws, type="stream", ref="b", input="two", model="mid", detach=True)
        rids = {}
        while len(rids) < 2:
            msg = await recv(ws)
            if msg["type"] == "accepted":
                rids[msg["ref"]] = msg["request_id"]
        await eventually(lambda: sim.open_streams == 2)
    await eventually(lambda: sim.open_streams == 1)
    streams = srv.app.state.streams
    await eventually(lambda: streams.get(rids["a"]).closed)
    assert not streams.get(rids["b"]).closed
    srv.app.state.hub.cancel(streams.get(rids["b"]))


async def test_resume_on_a_new_socket(serve) -> None:
    srv = await serve(keys={"alice": KEY}, options={"mid": SLOW})
    async with await authed(srv) as ws:
        await send(ws, type="stream", ref="a", input="hi", model="mid", detach=True)
        rid = (await recv(ws))["request_id"]
        first = [await recv(ws) for _ in range(4)]
    async with await authed(srv) as ws:
        await send(ws, type="resume", request_id=rid, after=first[-1]["seq"])
        rest = (await collect_until_terminal(ws, {rid}))[rid]
    seqs = [e["seq"] for e in first + rest]
    assert seqs == list(range(len(seqs))) and rest[-1]["type"] == "done"


async def test_bad_messages_are_rejected_with_the_field(serve) -> None:
    srv = await serve(keys={"alice": KEY})
    async with await authed(srv) as ws:
        await send(ws, type="stream", ref="x", input="hi", max_tokens=0)
        msg = await recv(ws)
        assert msg["type"] == "rejected" and msg["ref"] == "x"
        assert msg["status"] == 422 and msg["param"] == "max_tokens"
        await send(ws, type="launch")
        assert (await recv(ws))["param"] == "type"
        await send(ws, type="cancel", request_id="nope")
        assert (await recv(ws))["status"] == 404
        await ws.send("not json")
        assert (await recv(ws))["code"] == "invalid_json"


async def test_stream_messages_count_against_the_key_rate(serve) -> None:
    srv = await serve(keys={"alice": KEY}, key_options={"alice": {"rate_per_min": 2}})
    async with await authed(srv) as ws:
        for ref in ("a", "b"):
            await send(ws, type="stream", ref=ref, input="one")
            while (msg := await recv(ws))["type"] != "accepted":
                pass
        await send(ws, type="stream", ref="c", input="three")
        while (msg := await recv(ws))["type"] not in ("rejected", "accepted"):
            pass
    assert msg["type"] == "rejected" and msg["status"] == 429 and msg["ref"] == "c"


async def test_browser_style_query_key_authenticates(serve) -> None:
    srv = await serve(keys={"alice": KEY})
    async with connect(f"{srv.ws_url}?api_key={KEY}") as ws:
        assert await recv(ws) == {"type": "ready", "key": "alice"}
