"""Slow and abusive clients against a real `llm-router serve` process: connections that never
finish their headers or their body are answered 408 and closed after the deadline, one
address cannot hold more than its share of connections, and a legitimate client is served
while the slow ones are held. Once, such connections were never timed out (1,500 still open
after 45 s) and at the descriptor limit everyone was refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.server.process import served_process

KEY = "sk-slowloris-test-0123456789"
LIMITS = {"header_timeout_s": 2, "body_timeout_s": 2, "max_connections": 500,
          "max_connections_per_client": 20}
PARTIAL_HEADERS = b"POST /v1/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
PARTIAL_BODY = (b"POST /v1/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: 100\r\n\r\n"
                b'{"input": ')


async def _open(port: int, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first:
        writer.write(first)
        await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (bounded, so a hang fails the test)."""
    return await asyncio.wait_for(reader.read(), 30)


async def test_slow_clients_are_closed_and_a_legitimate_client_is_served(tmp_path: Path,
                                                                        fleet: Any) -> None:
    async with served_process(tmp_path, fleet.config(), keys={"alice": KEY},
                              server={"limits": LIMITS}) as srv:
        # 20 slow connections from 127.0.0.1: 10 that never finish their headers, 8 that
        # never finish their body, 2 that send nothing at all. Then 5 more from the same
        # address, over its cap.
        firsts = [PARTIAL_HEADERS] * 10 + [PARTIAL_BODY] * 8 + [b""] * 2
        slow = [await _open(srv.port, first) for first in firsts]
        extra = [await _open(srv.port, b"") for _ in range(5)]
        refused = await asyncio.gather(*[_answer(r) for r, _ in extra])

        # Meanwhile a client from another address is served as usual.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=srv.base_url, transport=transport, timeout=10,
                                     headers={"authorization": f"Bearer {KEY}"}) as c:
            ok = await c.post("/v1/stream", json={"input": "hi"})
            held = [w.is_closing() for _, w in slow]

        answers = await asyncio.gather(*[_answer(r) for r, _ in slow])
        for _, w in slow + extra:
            w.close()
        after = await httpx.AsyncClient(base_url=srv.base_url).get("/healthz")
        await srv.terminate()
        log = srv.log()  # after the exit: the log is written by a thread, flushed at exit

    assert ok.status_code == 200 and "event: done" in ok.text
    assert not any(held)  # the slow ones were still open while the legitimate client ran
    for answer in refused:
        assert answer.startswith(b"HTTP/1.1 429 ") and b'"too_many_connections"' in answer
    for answer in answers:  # every slow connection: a 408, then closed by the server
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"request_timeout"' in answer and answer.count(b"HTTP/1.1") == 1
    assert after.status_code == 200  # and the address is welcome again
    # The slow bodies reached the app, which sees a client gone: one INFO line, no traceback.
    assert log.count("left during its request body") == 8
    assert "Traceback" not in log and "ERROR" not in log
