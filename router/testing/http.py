"""The HTTP/1.1 layer of the loopback provider server (`router.testing`).

Hand-written on asyncio streams because faults such as "reset before the headers" or "close
mid-body" need control of the socket: request parsing (Content-Length or chunked bodies,
keep-alive), chunked responses, and a reader pump that notices a client hang-up while the
server sleeps or stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 413: "Payload Too Large",
            429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout", 529: "Overloaded"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


class Conn:
    """One accepted socket: a reader pump (so a client hang-up is noticed while the server
    sleeps or stalls) and a byte buffer the HTTP parser consumes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.closed = asyncio.Event()
        self._data = asyncio.Event()

    async def pump(self) -> None:
        try:
            while chunk := await self.reader.read(65536):
                self.buf += chunk
                self._data.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self._data.set()

    async def _more(self) -> bool:
        if self.closed.is_set():
            return False
        self._data.clear()
        await self._data.wait()
        return True

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        while (i := self.buf.find(sep)) < 0:
            if len(self.buf) > limit or not await self._more():
                return None
        data = bytes(self.buf[:i])
        del self.buf[:i + len(sep)]
        return data

    async def read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self._more():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def pause(self, seconds: float) -> bool:
        """Sleep, waking early if the client hangs up. True while the client is there."""
        if seconds > 0 and not self.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), seconds)
        return not self.closed.is_set()

    async def send(self, data: bytes) -> bool:
        if self.closed.is_set() or self.writer.is_closing():
            return False
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST.
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n".encode()


def header_block(headers: Mapping[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1") + b"\r\n"


def parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def read_request(conn: Conn) -> HttpRequest | None:
    """The next request on `conn`; None when the client closed or sent garbage."""
    head = await conn.read_until(b"\r\n\r\n", MAX_HEAD)
    if head is None:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) != 3:
        await send_plain(conn, 400, {}, b'{"error":"bad request line"}')
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    body = await _read_body(conn, headers)
    if body is None:
        return None
    return HttpRequest(parts[0], parts[1], headers, body)


async def _read_body(conn: Conn, headers: Mapping[str, str]) -> bytes | None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        pieces: list[bytes] = []
        while True:
            size_line = await conn.read_until(b"\r\n", 1024)
            if size_line is None:
                return None
            try:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                return None
            data = await conn.read_exact(size + 2)
            if data is None:
                return None
            if size == 0:
                return b"".join(pieces)
            pieces.append(data[:-2])
    try:
        length = int(headers.get("content-length", "0") or 0)
    except ValueError:
        return None
    if length > MAX_BODY:
        return None
    return await conn.read_exact(length) if length else b""


async def send_plain(conn: Conn, status: int, headers: Mapping[str, str], body: bytes,
                     content_type: str = "application/json") -> bool:
    """A complete response with a Content-Length body (errors, 404s)."""
    head = status_line(status) + header_block(
        {"content-type": content_type, "content-length": str(len(body)), **headers})
    return await conn.send(head + body)
