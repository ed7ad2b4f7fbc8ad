"""No key reaches the log of a real `llm-router serve` process, whatever a hostile client
sends: keys in the query under encoded or differently-cased names (once logged in clear:
`?api%5Fkey=`, `?API_KEY=`), wrong keys, keys in headers, WebSocket auth, malformed bodies,
bodies cut mid-way and headers never finished."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from websockets.asyncio.client import connect

from tests.server.process import served_process

ALICE = "sk-alice-logscan-0123456789abcdef"
BOB = "sk-bob-logscan-fedcba9876543210"
WRONG = "sk-wrong-logscan-5555555555555555"


async def _hostile_mix(base_url: str, port: int, ws_url: str) -> list[int]:
    statuses = []
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        for query in (f"api_key={ALICE}", f"api%5Fkey={ALICE}", f"API_KEY={BOB}",
                      f"Api%5fKey={BOB}&after=--5", f"after=1&api_key={WRONG}",
                      f"api_key={quote(ALICE + '&x')}"):
            r = await c.get(f"/v1/deployments?{query}")
            statuses.append(r.status_code)
            r = await c.get(f"/v1/streams/nope/events?{query}")
            statuses.append(r.status_code)
        for headers in ({"authorization": f"Bearer {ALICE}"}, {"x-api-key": BOB},
                        {"authorization": f"Bearer {WRONG}"}):
            for body in (b"{not json", b'{"input": 5}', b'{"input": "hi", "max_cost_usd": 1e308}'):
                r = await c.post("/v1/stream", content=body, headers=headers)
                statuses.append(r.status_code)
            r = await c.post("/v1/chat/completions", headers=headers,
                             json={"model": "auto", "messages": [], "stop": 5})
            statuses.append(r.status_code)
    async with connect(f"{ws_url}?api_key={ALICE}") as ws:
        await ws.send(orjson.dumps({"type": "auth", "key": ALICE}).decode())
        await ws.recv()
    async with connect(ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "key": WRONG}).decode())
        await asyncio.wait_for(ws.wait_closed(), 10)
    # A body cut mid-way, and headers never finished.
    for raw in (b"POST /v1/stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + ALICE.encode()
                + b"\r\ncontent-length: 500\r\n\r\n{\"input\": ",
                b"GET /v1/deployments?api_key=" + BOB.encode() + b" HTTP/1.1\r\nhost: x\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        if raw.startswith(b"POST"):
            writer.close()  # the client leaves mid-body
        else:
            await asyncio.wait_for(reader.read(), 20)  # the server's 408, then its close
            writer.close()
    return statuses


async def test_no_key_reaches_the_log(tmp_path: Path, fleet: Any) -> None:
    async with served_process(tmp_path, fleet.config(), keys={"alice": ALICE, "bob": BOB},
                              server={"limits": {"header_timeout_s": 1},
                                      "access_log": True}) as srv:
        statuses = await _hostile_mix(srv.base_url, srv.port, srv.ws_url)
        await srv.terminate()
        log = srv.log()
    assert 200 in statuses and 401 in statuses and 400 in statuses and 422 in statuses
    assert "[redacted]" in log and "GET /v1/deployments" in log  # the access log was on
    for key in (ALICE, BOB, WRONG):
        for form in (key, quote(key), key[-16:]):
            assert form not in log, f"{form} in the log"
    assert "Traceback" not in log


async def test_a_log_reader_that_falls_behind_does_not_stall_the_server(
        tmp_path: Path, fleet: Any) -> None:
    # The server's output is a pipe nobody reads until the end (a stalled log shipper):
    # ~400 KB of log lines (one per stream, with its prompt) against a 64 KB pipe. Writing
    # them on the event loop froze every request at its next log line.
    prompt = "p" * 4000
    async with served_process(tmp_path, fleet.config(), server={"log_prompts": True},
                              unread_pipe=True) as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as c:
            async def one(i: int) -> int:
                r = await c.post("/v1/stream", json={"input": f"{i} {prompt}", "model": "fast"})
                return r.status_code

            statuses = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(100))), 60)
            assert statuses == [200] * 100
            assert (await c.get("/healthz")).status_code == 200
        assert srv.proc.stdout is not None
        output, code = await asyncio.wait_for(
            asyncio.gather(srv.proc.stdout.read(), srv.terminate()), 30)
    assert code in (0, -15)  # uvicorn re-raises the signal it handled
    # Once read, the log holds every stream's line: the backlog was kept, not lost.
    assert output.count(b"stream ") >= 100, output[-2000:]
    assert b"Traceback" not in output
