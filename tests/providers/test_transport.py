"""The pooled client's direct path (`PooledClient.post_streaming`) over a real loopback
socket: it sends what httpx's own path sends, decodes a content-encoded body as httpx
does, and its headers read case-insensitively, as the adapters expect."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from providers.base import ProviderError
from providers.headers import parse_quota
from providers.http import body_chunks, open_stream
from providers.transport import DirectResponse, PooledClient

SSE = b'data: {"x": 1}\n\ndata: [DONE]\n\n'


@asynccontextmanager
async def _serve(respond: Callable[[bytes], bytes]) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A one-request-per-connection HTTP/1.1 server; yields (port, request heads seen)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        heads.append(head)
        writer.write(respond(head))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        server.close()
        await server.wait_closed()


def _response(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + extra
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)


def _client() -> PooledClient:
    return PooledClient(max_connections=4, timeout=httpx.Timeout(5.0),
                        headers={"X-Team": "agents"})


def _header_set(head: bytes) -> set[tuple[str, str]]:
    lines = head.decode().split("\r\n")[1:]
    return {(k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines if x)}


async def test_direct_path_sends_what_httpx_sends() -> None:
    async with _serve(lambda _: _response(SSE)) as (port, heads):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": "Bearer sk-test", "content-type": "application/json"}
        client = _client()
        try:
            async with client.stream("POST", url, content=b"{}", headers=headers) as resp:
                via_httpx = await resp.aread()
            direct = await client.post_streaming(url, b"{}", headers)
            try:
                via_pool = b"".join([c async for c in direct.chunks()])
            finally:
                await direct.aclose()
        finally:
            await client.aclose()
        assert via_pool == via_httpx == SSE
        assert heads[0].split(b"\r\n")[0] == heads[1].split(b"\r\n")[0]
        assert _header_set(heads[1]) == _header_set(heads[0])
        assert ("x-team", "agents") in _header_set(heads[1])  # the client's own headers too
        # Exactly the headers httpx itself builds for this request: none of aiohttp's own.
        built = client.build_request("POST", url, content=b"{}", headers=headers)
        assert _header_set(heads[1]) == {(k.lower(), v) for k, v in built.headers.items()}


async def test_a_gzip_encoded_body_is_decoded_on_the_direct_path() -> None:
    packed = gzip.compress(SSE)
    async with _serve(lambda _: _response(packed, b"content-encoding: gzip")) as (port, _):
        client = _client()
        try:
            response = await open_stream(client, f"http://127.0.0.1:{port}/v1", content=b"{}",
                                         headers={})
            assert isinstance(response, DirectResponse)
            try:
                body = b"".join([c async for c in body_chunks(response)])
            finally:
                await response.aclose()
        finally:
            await client.aclose()
        assert body == SSE


async def test_direct_headers_read_case_insensitively() -> None:
    quota = (b"X-RateLimit-Remaining-Requests: 7", b"X-RateLimit-Reset-Requests: 2s")
    async with _serve(lambda _: _response(SSE, *quota)) as (port, _):
        client = _client()
        try:
            response = await open_stream(client, f"http://127.0.0.1:{port}/v1", content=b"{}",
                                         headers={})
            await response.aclose()
        finally:
            await client.aclose()
        delta = parse_quota(response.headers)
        assert delta is not None
        assert (delta.remaining_requests, delta.reset_requests_s) == (7, 2.0)


@pytest.mark.parametrize("status", [429, 503])
async def test_a_refusal_on_the_direct_path_is_read_and_mapped(status: int) -> None:
    body = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'

    def refuse(_: bytes) -> bytes:
        return (b"HTTP/1.1 %d Nope\r\ncontent-type: application/json\r\nretry-after: 3\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, len(body)) + body)

    async with _serve(refuse) as (port, _):
        client = _client()
        try:
            with pytest.raises(ProviderError) as caught:
                await open_stream(client, f"http://127.0.0.1:{port}/v1", content=b"{}",
                                  headers={})
        finally:
            await client.aclose()
        err = caught.value
        assert (err.status, err.retry_after) == (status, 3.0)
        assert "slow down" in err.message
