"""SIGTERM on a real `llm-router serve` process: it stops accepting, lets streams finish
for `server.shutdown_grace_s`, then ends each open SSE and WebSocket stream with exactly one
terminal event — a retryable `cancelled` with the resume hint — before closing. Once, the
streams were cut with no terminal event (an incomplete chunked read; WebSockets failed with
1012 at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.server.conftest import Frame, frames
from tests.server.process import served_process

KEY = "sk-shutdown-test-0123456789"
LONG = {"ttft_ms": 1, "tokens_per_s": 10, "output_tokens": 400}  # ~40 s
SHORT = {"ttft_ms": 1, "tokens_per_s": 200, "output_tokens": 40}  # ~0.2 s


def _config(fleet: Any) -> dict[str, Any]:
    return fleet.config(options={"mid": LONG, "fast": SHORT})


async def _sse_until_first_text(c: httpx.AsyncClient, body: dict[str, Any],
                                stack: list[Any]) -> httpx.Response:
    cm = c.stream("POST", "/v1/stream", json=body)
    r = await cm.__aenter__()
    stack.append(cm)
    assert r.status_code == 200
    async for f in frames(r):
        if f.event == "text":
            return r
    raise AssertionError("stream ended before its first token")


async def _rest(r: httpx.Response) -> list[Frame]:
    """The events of the rest of an SSE response, to its end (EOF)."""
    return [f async for f in frames(r) if f.comment is None and f.event is not None]


async def test_sigterm_ends_every_open_stream_with_one_terminal_event(tmp_path: Path,
                                                                     fleet: Any) -> None:
    async with served_process(tmp_path, _config(fleet), keys={"alice": KEY},
                              server={"shutdown_grace_s": 1.5, "heartbeat_s": 0.5}) as srv:
        stack: list[Any] = []
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30,
                                     headers={"authorization": f"Bearer {KEY}"}) as c:
            long_sse = [await _sse_until_first_text(c, {"input": f"long {i}", "model": "mid"},
                                                    stack) for i in range(3)]
            async with c.stream("POST", "/v1/stream", json={
                    "input": "gone", "model": "mid", "detach": True}) as detached:
                detached_id = detached.headers["x-request-id"]  # and its client leaves
            ws = await connect(srv.ws_url, additional_headers={"authorization": f"Bearer {KEY}"})
            assert orjson.loads(await ws.recv())["type"] == "ready"
            for i in range(2):
                await ws.send(orjson.dumps({"type": "stream", "ref": i, "input": f"ws {i}",
                                            "model": "mid"}).decode())
            ws_events: dict[str, list[dict[str, Any]]] = {}
            while len([r for r, evs in ws_events.items() if any(
                    e["type"] == "text" for e in evs)]) < 2:
                msg = orjson.loads(await ws.recv())
                if "request_id" in msg and msg["type"] != "accepted":
                    ws_events.setdefault(msg["request_id"], []).append(msg)

            srv.proc.send_signal(15)
            sse_rests = await asyncio.gather(*[_rest(r) for r in long_sse])
            try:
                while True:
                    msg = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                    ws_events.setdefault(msg["request_id"], []).append(msg)
            except ConnectionClosed:
                pass
            for cm in stack:
                await cm.__aexit__(None, None, None)
        assert await srv.wait() in (0, -15)  # uvicorn re-raises the signal it handled
        log = srv.log()

    for rest in sse_rests:
        types = [f.event for f in rest]
        assert types.count("error") == 1 and types[-1] == "error" and "done" not in types
        err = rest[-1].data
        assert err["code"] == "cancelled" and err["retryable"] is True
        assert "retry the request" in err["suggestion"]
    for evs in ws_events.values():
        ends = [e for e in evs if e["type"] in ("done", "error")]
        assert len(ends) == 1 and evs[-1] is ends[0]
        err = ends[0]
        assert err["code"] == "cancelled" and err["retryable"] is True
        assert "retry the request" in err["suggestion"]
    assert f"stream {detached_id} (detached) lost at shutdown" in log
    assert "Traceback" not in log


async def test_sigterm_lets_short_streams_finish_with_done(tmp_path: Path, fleet: Any) -> None:
    async with served_process(tmp_path, _config(fleet), keys={"alice": KEY},
                              server={"shutdown_grace_s": 10}) as srv:
        stack: list[Any] = []
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30,
                                     headers={"authorization": f"Bearer {KEY}"}) as c:
            short = await _sse_until_first_text(c, {"input": "quick", "model": "fast"}, stack)
            srv.proc.send_signal(15)
            rest = await _rest(short)
            for cm in stack:
                await cm.__aexit__(None, None, None)
        assert await srv.wait() in (0, -15)  # uvicorn re-raises the signal it handled
    types = [f.event for f in rest]
    assert types[-1] == "done" and types.count("done") == 1 and "error" not in types


async def _compat_until_first_token(c: httpx.AsyncClient, path: str, body: dict[str, Any],
                                    stack: list[Any]) -> tuple[httpx.Response, Any]:
    cm = c.stream("POST", path, json=body)
    r = await cm.__aenter__()
    stack.append(cm)
    assert r.status_code == 200
    lines = r.aiter_lines()
    async for line in lines:
        if ('"content"' in line and '""' not in line) or "text_delta" in line:
            return r, lines
    raise AssertionError("stream ended before its first token")


async def test_sigterm_ends_compatible_streams_with_their_error_chunk(tmp_path: Path,
                                                                     fleet: Any) -> None:
    async with served_process(tmp_path, _config(fleet), keys={"alice": KEY},
                              server={"shutdown_grace_s": 0.5}) as srv:
        stack: list[Any] = []
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30,
                                     headers={"authorization": f"Bearer {KEY}"}) as c:
            messages = [{"role": "user", "content": "hi"}]
            openai = await _compat_until_first_token(c, "/v1/chat/completions", {
                "model": "mid", "messages": messages, "stream": True}, stack)
            anthropic = await _compat_until_first_token(c, "/v1/messages", {
                "model": "mid", "max_tokens": 400, "messages": messages, "stream": True},
                stack)
            srv.proc.send_signal(15)
            # Read to the end: no incomplete chunked read.
            rests = [[line async for line in lines if line] for _, lines in (openai, anthropic)]
            for cm in stack:
                await cm.__aexit__(None, None, None)
        assert await srv.wait() in (0, -15)
    openai_rest, anthropic_rest = rests
    assert "shutting down" in openai_rest[-1] and '"error"' in openai_rest[-1]
    assert anthropic_rest[-2] == "event: error" and "shutting down" in anthropic_rest[-1]
