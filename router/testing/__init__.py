"""A loopback provider server for testing agents and routers over real sockets.

`LoopbackProvider` is a real HTTP/1.1 server on 127.0.0.1 that speaks the streaming wire
protocols of OpenAI Chat Completions (`…/chat/completions`) and Responses (`…/responses`),
Anthropic Messages
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
`LoopbackThread` runs the same server in a background thread for synchronous clients.
The HTTP layer is hand-written on asyncio streams because faults such as "reset before
the headers" need control of the socket. This module is not imported by `import router`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from router.testing.http import (
    Conn,
    chunk,
    header_block,
    parse_json,
    read_request,
    send_plain,
    status_line,
)
from router.testing.script import Fault, Finish, Reply, ToolCall, default_error_kind
from router.testing.wire import WIRES, Rendered, Wire
from router.testing.wire_responses import ResponsesWire

__all__ = ["Fault", "Finish", "LoopbackProvider", "LoopbackThread", "RecordedRequest", "Reply",
           "ToolCall"]

Protocol = Literal["openai", "openai_responses", "anthropic", "ollama", "gemini"]
_WIRES: dict[str, Wire] = {**WIRES, ResponsesWire.name: ResponsesWire()}
_T = TypeVar("_T")


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
    if path.endswith("/responses"):
        return "openai_responses"
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith("/api/chat"):
        return "ollama"
    if path.endswith(":streamGenerateContent"):
        return "gemini"
    return None


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
        self._conns: set[Conn] = set()
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
        conn = Conn(reader, writer)
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

    async def _serve_one(self, conn: Conn) -> bool:
        """Read one request and answer it. False when the connection must close."""
        request = await read_request(conn)
        if request is None:
            return False
        path, _, query = request.target.partition("?")
        protocol = _protocol_of(path)
        parsed = parse_json(request.body)
        model = _model_of(protocol, path, parsed)
        self.requests.append(RecordedRequest(request.method, path, query, request.headers,
                                             request.body, parsed, protocol, model))
        self._seen.set()
        keep_alive = request.headers.get("connection", "").lower() != "close"
        if protocol is None or request.method != "POST":
            await send_plain(conn, 404, {}, orjson.dumps(
                {"error": {"message": f"no route for {request.method} {path}"}}))
            return keep_alive
        reply = self._next_reply(protocol, model)
        return await self._respond(conn, _WIRES[protocol], reply, model or "loopback",
                                   parsed if isinstance(parsed, dict) else {}) and keep_alive

    async def _respond(self, conn: Conn, wire: Wire, reply: Reply, model: str,
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
            return await send_plain(conn, reply.status, {**extra, **reply.headers},
                                          payload)
        self.active_streams += 1
        self._no_streams.clear()
        try:
            return await self._stream(conn, wire, reply, model, body)
        finally:
            self.active_streams -= 1
            if self.active_streams == 0:
                self._no_streams.set()

    async def _stream(self, conn: Conn, wire: Wire, reply: Reply, model: str,
                      body: Mapping[str, Any]) -> bool:
        rendered = wire.render(reply, model, body)
        head = status_line(200) + header_block({
            "content-type": wire.content_type, "transfer-encoding": "chunked",
            "cache-control": "no-cache", "x-request-id": "req_loopback", **reply.headers})
        if not await conn.send(head + b"".join(chunk(b) for b in rendered.head if b)):
            return False
        fault, after = reply.fault, reply.fault_after
        for i, step in enumerate(rendered.steps):
            if i == after and fault in ("cut", "stall", "stream_error", "malformed"):
                ended = await self._fault_mid_stream(conn, wire, reply)
                if ended is not None:
                    return ended
            delay = reply.first_token_delay_s if i == 0 else reply.token_delay_s
            if not await conn.pause(delay) or not await conn.send(chunk(step)):
                return False
        if len(rendered.steps) <= after and fault in ("cut", "stall", "stream_error",
                                                      "malformed"):
            ended = await self._fault_mid_stream(conn, wire, reply)
            if ended is not None:
                return ended
        end = _ending(rendered, fault)
        return await conn.send(b"".join(chunk(b) for b in end) + b"0\r\n\r\n")

    async def _fault_mid_stream(self, conn: Conn, wire: Wire, reply: Reply) -> bool | None:
        """Apply a mid-stream fault. Returns the connection's fate, or None to carry on."""
        if reply.fault == "cut":
            conn.writer.transport.close()  # FIN mid-body: no chunk terminator, no marker
            return False
        if reply.fault == "stall":
            interval = reply.keepalive_s
            if interval is None or wire.keepalive is None:
                await conn.closed.wait()
                return False
            while await conn.pause(interval) and await conn.send(chunk(wire.keepalive)):
                pass
            return False
        if reply.fault == "stream_error":
            return await conn.send(chunk(wire.in_stream_error) + b"0\r\n\r\n")
        await conn.send(chunk(wire.malformed))
        return None


def _model_of(protocol: str | None, path: str, body: Any) -> str | None:
    if protocol == "gemini":
        # …/models/{model}:streamGenerateContent
        return path.rsplit("/", 1)[-1].split(":", 1)[0]
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    return None


class LoopbackThread:
    """The same server on its own event loop in a background thread, for synchronous
    code (e.g. an agent built on a blocking SDK):

        with LoopbackThread() as srv:
            srv.server.enqueue(Reply.rate_limited())
            ...  # blocking client at srv.base_url
            srv.wait_idle()

    Scripting from this thread is safe while no request is in flight; read results after.
    """

    def __init__(self, default: Reply | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="loopback-provider")
        self.server = LoopbackProvider(default)

    def _call(self, coro: Coroutine[Any, Any, _T], within_s: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(within_s)

    def __enter__(self) -> LoopbackThread:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        await self.server.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self.server.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            self._loop.close()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def wait_idle(self, within_s: float = 5.0) -> None:
        """Block until every connection is closed; raises TimeoutError otherwise."""
        self._call(self.server.wait_idle(within_s), within_s + 1.0)


def _ending(rendered: Rendered, fault: str | None) -> list[bytes]:
    """What follows the content: tail and marker, less what the fault drops."""
    if fault == "no_finish":
        return []
    if fault == "no_terminal":
        return rendered.tail
    if fault == "unterminated" and rendered.marker:
        return [*rendered.tail, *rendered.marker[:-1], rendered.marker[-1].rstrip(b"\n")]
    return rendered.tail + rendered.marker
