"""A loopback provider server for testing agents and routers over real sockets.

`LoopbackProvider` is a real HTTP/1.1 server on 127.0.0.1 that speaks the streaming wire
protocols of OpenAI Chat Completions (`…/chat/completions`), Anthropic Messages
(`…/messages`), Ollama (`…/api/chat`) and Gemini (`…:streamGenerateContent`), byte for byte
as the real providers send them, from scripted `Reply` objects — with fault injection:
HTTP errors with provider-shaped bodies, connection resets, silence, slow first tokens,
cut or stalled streams, malformed chunks, missing terminal markers and in-stream errors.

    async with LoopbackProvider() as srv:
        srv.enqueue(Reply.rate_limited(retry_after=0.1), Reply.from_text("Hi there."))
        ...  # point your client at srv.base_url (+ "/v1" for OpenAI-style clients)
        assert len(srv.requests) == 2
        await srv.wait_idle()  # every connection closed

Replies are queued per (protocol, model); when a queue is empty the default applies.
The HTTP layer is hand-written on asyncio streams because faults such as "reset before
the headers" need control of the socket. This module is not imported by `import router`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from router._loopback_wire import ERROR_KINDS, WIRES, Wire, default_error_kind

__all__ = ["Fault", "LoopbackProvider", "RecordedRequest", "Reply", "ToolCall"]

Protocol = Literal["openai", "anthropic", "ollama", "gemini"]
Fault = Literal["reset", "no_response", "cut", "stall", "malformed", "no_terminal",
                "stream_error"]
Finish = Literal["stop", "length", "tool_calls", "content_filter"]
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 413: "Payload Too Large",
            429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout", 529: "Overloaded"}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A scripted tool call; each protocol serializes `arguments` its own way."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted response. Content is sent as one chunk per piece of `reasoning`, then of
    `text`, then the tool calls (argument fragments count as chunks too).

    `output_tokens`/`reasoning_tokens` default to the number of pieces. `first_token_delay_s`
    delays the first content chunk (headers and preamble go out at once), `token_delay_s`
    paces the rest. Faults act after `fault_after` content chunks; build them with the
    constructors and methods below rather than by hand.
    """

    text: Sequence[str] = ("Hello", " from", " the", " loopback", " server", ".")
    reasoning: Sequence[str] = ()
    tool_calls: Sequence[ToolCall] = ()
    finish: Finish | None = None  # None: tool_calls when there are tool calls, else stop
    input_tokens: int = 12
    cached_input_tokens: int = 0
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    send_usage: bool = True
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    status: int = 200
    error_kind: str | None = None  # body shape for an HTTP error; default from `status`
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    fault: Fault | None = None
    fault_after: int = 0
    keepalive_s: float | None = None  # while stalled, send keep-alive comments/pings

    @property
    def total_reasoning_tokens(self) -> int:
        return len(self.reasoning) if self.reasoning_tokens is None else self.reasoning_tokens

    @property
    def total_output_tokens(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return len(self.text) + len(self.reasoning) + 5 * len(self.tool_calls)

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str, *, reasoning: str = "", token_delay_s: float = 0.0,
                  first_token_delay_s: float = 0.0) -> Reply:
        """Split `text` (and `reasoning`) into word tokens, each keeping its leading space."""
        return cls(text=_words(text), reasoning=_words(reasoning), token_delay_s=token_delay_s,
                   first_token_delay_s=first_token_delay_s)

    @classmethod
    def http_error(cls, status: int, kind: str | None = None, *,
                   retry_after: float | None = None,
                   headers: Mapping[str, str] | None = None) -> Reply:
        """An HTTP error with the protocol's error body. `kind` is one of rate_limited,
        server_error, unavailable, overloaded, auth, context_length, content_filter,
        bad_request, not_found (default: from the status)."""
        kind = kind or default_error_kind(status)
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; expected one of {sorted(ERROR_KINDS)}")
        return cls(status=status, error_kind=kind, retry_after=retry_after,
                   headers=dict(headers or {}))

    @classmethod
    def rate_limited(cls, retry_after: float | None = None) -> Reply:
        return cls.http_error(429, "rate_limited", retry_after=retry_after)

    @classmethod
    def server_error(cls) -> Reply:
        return cls.http_error(500, "server_error")

    @classmethod
    def unavailable(cls) -> Reply:
        return cls.http_error(503, "unavailable")

    @classmethod
    def overloaded(cls) -> Reply:
        return cls.http_error(529, "overloaded")

    @classmethod
    def unauthorized(cls) -> Reply:
        return cls.http_error(401, "auth")

    @classmethod
    def context_length(cls) -> Reply:
        return cls.http_error(400, "context_length")

    @classmethod
    def content_filter(cls) -> Reply:
        return cls.http_error(400, "content_filter")

    @classmethod
    def reset(cls) -> Reply:
        """Read the request, then reset the connection (RST) before any header."""
        return cls(fault="reset")

    @classmethod
    def no_response(cls) -> Reply:
        """Read the request and never answer (until the client hangs up)."""
        return cls(fault="no_response")

    # --- faults on a streamed reply --------------------------------------------------------

    def slow(self, first_token_delay_s: float) -> Reply:
        return replace(self, first_token_delay_s=first_token_delay_s)

    def cut(self, after: int) -> Reply:
        """Close the socket after `after` content chunks, mid-body, without a terminal marker."""
        return replace(self, fault="cut", fault_after=after)

    def stall(self, after: int, keepalive_s: float | None = None) -> Reply:
        """After `after` chunks keep the socket open and send nothing (or only keep-alives)."""
        return replace(self, fault="stall", fault_after=after, keepalive_s=keepalive_s)

    def malformed(self, after: int) -> Reply:
        """Send a chunk of invalid JSON after `after` chunks, then carry on."""
        return replace(self, fault="malformed", fault_after=after)

    def without_terminal(self) -> Reply:
        """End the body cleanly without the terminal marker (`[DONE]`, `message_stop`,
        Ollama's `done` line, Gemini's finishReason chunk)."""
        return replace(self, fault="no_terminal")

    def stream_error(self, after: int) -> Reply:
        """After `after` chunks send the protocol's in-stream error and end the body."""
        return replace(self, fault="stream_error", fault_after=after)


def _words(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return tuple(w for w in out if w)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the server saw. `headers` keys are lower-case; `json` is the parsed body
    (None when empty or not JSON)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    json: Any
    protocol: str | None
    model: str | None


def _protocol_of(path: str) -> Protocol | None:
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith("/api/chat"):
        return "ollama"
    if path.endswith(":streamGenerateContent"):
        return "gemini"
    return None


class _Conn:
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


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class LoopbackProvider:
    """A scriptable provider server on 127.0.0.1. Use as `async with LoopbackProvider() as srv`.

    `requests` lists every request seen; `open_connections` counts sockets currently open;
    `active_streams` counts responses still being written (stalled ones included).
    """

    def __init__(self, default: Reply | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._queues: dict[tuple[str | None, str | None], deque[Reply]] = {}
        self._defaults: dict[tuple[str | None, str | None], Reply] = {
            (None, None): default or Reply()}
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._seen = asyncio.Event()
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self.requests: list[RecordedRequest] = []
        self.open_connections = 0
        self.total_connections = 0
        self.active_streams = 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> LoopbackProvider:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.writer.transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LoopbackProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`: the base URL for Anthropic, Ollama and Gemini clients;
        OpenAI-style clients take `base_url + "/v1"`."""
        return f"http://{self._host}:{self._port}"

    # --- scripting -----------------------------------------------------------------------

    def enqueue(self, *replies: Reply, protocol: str | None = None,
                model: str | None = None) -> None:
        """Queue replies for the next requests matching `protocol` and/or `model`."""
        self._queues.setdefault((protocol, model), deque()).extend(replies)

    def set_default(self, reply: Reply, *, protocol: str | None = None,
                    model: str | None = None) -> None:
        """The reply used when no queued reply matches."""
        self._defaults[(protocol, model)] = reply

    def requests_for(self, protocol: str | None = None,
                     model: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests
                if (protocol is None or r.protocol == protocol)
                and (model is None or r.model == model)]

    def _next_reply(self, protocol: str | None, model: str | None) -> Reply:
        keys = ((protocol, model), (None, model), (protocol, None), (None, None))
        for key in keys:
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        for key in keys:
            if key in self._defaults:
                return self._defaults[key]
        raise AssertionError("unreachable: a global default always exists")

    async def wait_requests(self, n: int, within_s: float = 5.0) -> None:
        """Wait until the server has seen at least `n` requests in total."""
        async with asyncio.timeout(within_s):
            while len(self.requests) < n:
                self._seen.clear()
                await self._seen.wait()

    async def wait_streams_closed(self, within_s: float = 5.0) -> None:
        """Wait until no response is being streamed (a stalled one ends only when its
        client hangs up); raises TimeoutError after `within_s`."""
        await asyncio.wait_for(self._no_streams.wait(), within_s)

    async def wait_idle(self, within_s: float = 5.0) -> None:
        """Wait until every connection is closed; raises TimeoutError after `within_s`."""
        await asyncio.wait_for(self._idle.wait(), within_s)

    # --- HTTP ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        self.open_connections += 1
        self.total_connections += 1
        self._idle.clear()
        pump = asyncio.create_task(conn.pump())
        try:
            while await self._serve_one(conn):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            pump.cancel()
            writer.close()  # flushes what is buffered, then closes
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            self._conns.discard(conn)
            self.open_connections -= 1
            if self.open_connections == 0:
                self._idle.set()
            self._tasks.discard(task)

    async def _serve_one(self, conn: _Conn) -> bool:
        """Read one request and answer it. False when the connection must close."""
        head = await conn.read_until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return False
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            await self._send_plain(conn, 400, {}, b'{"error":"bad request line"}')
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        body = await self._read_body(conn, headers)
        if body is None:
            return False
        path, _, query = target.partition("?")
        protocol = _protocol_of(path)
        parsed = _parse_json(body)
        model = _model_of(protocol, path, parsed)
        self.requests.append(RecordedRequest(method, path, query, headers, body, parsed,
                                             protocol, model))
        self._seen.set()
        keep_alive = headers.get("connection", "").lower() != "close"
        if protocol is None or method != "POST":
            await self._send_plain(conn, 404, {}, orjson.dumps(
                {"error": {"message": f"no route for {method} {path}"}}))
            return keep_alive
        reply = self._next_reply(protocol, model)
        return await self._respond(conn, WIRES[protocol], reply, model or "loopback",
                                   parsed if isinstance(parsed, dict) else {}) and keep_alive

    async def _read_body(self, conn: _Conn, headers: Mapping[str, str]) -> bytes | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = await conn.read_until(b"\r\n", 1024)
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                data = await conn.read_exact(size + 2)
                if data is None:
                    return None
                if size == 0:
                    return b"".join(parts)
                parts.append(data[:-2])
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_BODY:
            return None
        return await conn.read_exact(length) if length else b""

    async def _send_plain(self, conn: _Conn, status: int, headers: Mapping[str, str],
                          body: bytes, content_type: str = "application/json") -> bool:
        head = _status_line(status) + _header_block(
            {"content-type": content_type, "content-length": str(len(body)), **headers})
        return await conn.send(head + body)

    async def _respond(self, conn: _Conn, wire: Wire, reply: Reply, model: str,
                       body: Mapping[str, Any]) -> bool:
        if reply.fault == "reset":
            conn.reset()
            return False
        if reply.fault == "no_response":
            await conn.closed.wait()
            return False
        if reply.status != 200:
            kind = reply.error_kind or default_error_kind(reply.status)
            extra, payload = wire.error(kind, reply.status, reply.retry_after)
            return await self._send_plain(conn, reply.status, {**extra, **reply.headers},
                                          payload)
        self.active_streams += 1
        self._no_streams.clear()
        try:
            return await self._stream(conn, wire, reply, model, body)
        finally:
            self.active_streams -= 1
            if self.active_streams == 0:
                self._no_streams.set()

    async def _stream(self, conn: _Conn, wire: Wire, reply: Reply, model: str,
                      body: Mapping[str, Any]) -> bool:
        rendered = wire.render(reply, model, body)
        head = _status_line(200) + _header_block({
            "content-type": wire.content_type, "transfer-encoding": "chunked",
            "cache-control": "no-cache", "x-request-id": "req_loopback", **reply.headers})
        if not await conn.send(head + b"".join(_chunk(b) for b in rendered.head if b)):
            return False
        fault, after = reply.fault, reply.fault_after
        for i, step in enumerate(rendered.steps):
            if i == after and fault in ("cut", "stall", "stream_error", "malformed"):
                ended = await self._fault_mid_stream(conn, wire, reply)
                if ended is not None:
                    return ended
            delay = reply.first_token_delay_s if i == 0 else reply.token_delay_s
            if not await conn.pause(delay) or not await conn.send(_chunk(step)):
                return False
        if len(rendered.steps) <= after and fault in ("cut", "stall", "stream_error",
                                                      "malformed"):
            ended = await self._fault_mid_stream(conn, wire, reply)
            if ended is not None:
                return ended
        end = rendered.tail if fault == "no_terminal" else rendered.tail + rendered.marker
        return await conn.send(b"".join(_chunk(b) for b in end) + b"0\r\n\r\n")

    async def _fault_mid_stream(self, conn: _Conn, wire: Wire, reply: Reply) -> bool | None:
        """Apply a mid-stream fault. Returns the connection's fate, or None to carry on."""
        if reply.fault == "cut":
            conn.writer.transport.close()  # FIN mid-body: no chunk terminator, no marker
            return False
        if reply.fault == "stall":
            interval = reply.keepalive_s
            if interval is None or wire.keepalive is None:
                await conn.closed.wait()
                return False
            while await conn.pause(interval) and await conn.send(_chunk(wire.keepalive)):
                pass
            return False
        if reply.fault == "stream_error":
            return await conn.send(_chunk(wire.in_stream_error) + b"0\r\n\r\n")
        await conn.send(_chunk(wire.malformed))
        return None


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n".encode()


def _header_block(headers: Mapping[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1") + b"\r\n"


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _model_of(protocol: str | None, path: str, body: Any) -> str | None:
    if protocol == "gemini":
        # …/models/{model}:streamGenerateContent
        return path.rsplit("/", 1)[-1].split(":", 1)[0]
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    return None
