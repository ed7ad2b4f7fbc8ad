"""A hostile WebSocket client: one bad message (a binary frame, invalid JSON, a message its
schema refuses, one that raises inside the server) is answered for itself and never cuts
the other streams on the socket; an unauthenticated socket may only send a small frame.
Each of these once closed the socket with 1000 and cancelled every stream on it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.server.conftest import SLOW
from tests.server.test_ws import KEY, authed, recv, send


async def test_bad_messages_are_answered_alone_and_the_streams_go_on(serve) -> None:
    srv = await serve(keys={"alice": KEY}, options={"fast": SLOW})
    hub = srv.app.state.hub
    start = hub.start

    async def start_or_raise(input_: Any, kwargs: Any, **kw: Any) -> Any:
        if input_ == "boom":
            raise RuntimeError("a bug in the server")
        return await start(input_, kwargs, **kw)

    hub.start = start_or_raise
    async with await authed(srv) as ws:
        await send(ws, type="stream", ref="a", input="one", model="fast")
        await send(ws, type="stream", ref="b", input="two", model="fast")
        await ws.send(b"\x00\x01binary")
        await ws.send("{not json")
        await send(ws, type="resume", ref="r", request_id="x", after="x")
        await send(ws, type="stream", ref="cap", input="hi", max_cost_usd=1e308)
        await send(ws, type="stream", ref="part", input=[
            {"role": "user", "content": [{"type": "text", "text": 5}]}])
        await send(ws, type="stream", ref="boom", input="boom")
        await send(ws, type="launch", ref="l")
        rejected: dict[str, dict[str, Any]] = {}
        anonymous: list[str] = []
        accepted: dict[str, str] = {}
        ends: dict[str, dict[str, Any]] = {}
        while len(rejected) + len(anonymous) < 7 or len(ends) < 2:
            msg = await recv(ws)
            if msg["type"] == "rejected" and msg["ref"] is None:
                anonymous.append(msg["code"])
            elif msg["type"] == "rejected":
                rejected[msg["ref"]] = msg
            elif msg["type"] == "accepted":
                accepted[msg["request_id"]] = msg["ref"]
            elif msg["type"] in ("done", "error"):
                ends[accepted[msg["request_id"]]] = msg
    assert {ref: e["type"] for ref, e in ends.items()} == {"a": "done", "b": "done"}
    assert {k: (v["status"], v["code"], v["param"]) for k, v in rejected.items()} == {
        "r": (422, "invalid_message", "after"),
        "cap": (422, "invalid_message", "max_cost_usd"),
        "part": (422, "invalid_message", "input[0].content[0].text"),
        "boom": (500, "internal_error", None),
        "l": (422, "invalid_message", "type"),
    }
    assert sorted(anonymous) == ["invalid_json", "invalid_message"]  # the two bad frames


@pytest.mark.parametrize("first", ["x" * 10_000, b"\x00" * 100])
async def test_an_unauthenticated_socket_may_only_send_a_small_text_frame(serve,
                                                                          first: Any) -> None:
    srv = await serve(keys={"alice": KEY})
    async with connect(srv.ws_url, max_size=None) as ws:
        await ws.send(first)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_small_auth_frame_is_still_accepted(serve) -> None:
    srv = await serve(keys={"alice": KEY})
    async with connect(srv.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "key": KEY}).decode())
        assert await recv(ws) == {"type": "ready", "key": "alice"}
