"""What a slow or abusive client may hold of the server, enforced where the server is built
(`server_options`, `DrainingServer`), from `server.limits`.

uvicorn bounds neither the time a client takes to send its request headers nor its body
(its keep-alive timeout only runs between requests), and it accepts connections until the
process runs out of descriptors, so a few thousand slowloris sockets lock everyone out.
`limited_protocol` is uvicorn's httptools protocol with:

- a header deadline: request line and headers whole within `header_timeout_s` of the
  connection (or of the previous response) — else `408` and the connection is closed;
- a body deadline: the whole body within `body_timeout_s` of its headers — else `408`
  (or, once a response started, the connection is closed; the app sees a disconnect);
- a cap on open connections (`max_connections`, else `503`) and on connections per client
  address (`max_connections_per_client`, else `429`), answered and closed at once.

WebSocket frames are bounded by `server.max_body_bytes` (uvicorn's `ws_max_size`) and, before
`auth`, by `ws_auth_max_bytes` (see `ws.py`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.config import ServerConfig
from router.config.schema import ServerLimitsConfig
from router.server.auth import redact

log = logging.getLogger("router.server")
_STATUS_LINES = {408: b"408 Request Timeout", 429: b"429 Too Many Requests",
                 503: b"503 Service Unavailable"}


def _raw_error(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response in the server's JSON shape, for the protocol layer
    (below the ASGI app) to write before it closes the connection."""
    body = orjson.dumps({"type": "error", "error": {"type": "api_error", "code": code,
                                                    "message": message, "param": None}})
    return (b"HTTP/1.1 " + _STATUS_LINES[status] + b"\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
            + body)


def limited_protocol(limits: ServerLimitsConfig) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the deadlines and connection caps of `limits`."""
    _DEADLINES = {"headers": (limits.header_timeout_s, "header_timeout_s"),
                  "body": (limits.body_timeout_s, "body_timeout_s")}

    # Open connections per client address, kept as they open and close: counting them by
    # scanning every connection at each arrival costs O(connections) per connection, which
    # a burst of thousands makes quadratic.
    per_host: dict[str, int] = {}

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _host: str | None = None  # counted in `per_host` while open

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if host is not None:
                self._host = host
                per_host[host] = per_host.get(host, 0) + 1
            refusal = self._refusal()
            if refusal is not None:
                transport.write(_raw_error(*refusal))
                transport.close()
                return
            self._arm("headers")

        def _refusal(self) -> tuple[int, str, str] | None:
            connections = self.server_state.connections
            if len(connections) > limits.max_connections:
                return 503, "too_many_connections", (
                    f"the server holds {limits.max_connections} connections "
                    "(server.limits.max_connections); retry shortly")
            host = self._host
            if host is None:
                return None
            if per_host[host] > limits.max_connections_per_client:
                return 429, "too_many_connections", (
                    f"this address holds {limits.max_connections_per_client} connections "
                    "(server.limits.max_connections_per_client)")
            return None

        def _arm(self, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(_DEADLINES[what][0], self._expired, what)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, what: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            log.info("closing a connection from %s: request %s not received within the "
                     "deadline", self.client[0] if self.client else "?", what)
            if cycle is None or not cycle.response_started:
                seconds, setting = _DEADLINES[what]
                self.transport.write(_raw_error(
                    408, "request_timeout", f"request {what} not received within "
                    f"{seconds:g} s (server.limits.{setting})"))
            # The app, if it runs, then reads a disconnect and its answer is dropped.
            self.transport.close()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm("body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm("headers")  # the next request's

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            host, self._host = self._host, None
            if host is not None:
                left = per_host[host] - 1
                if left:
                    per_host[host] = left
                else:
                    del per_host[host]
            super().connection_lost(exc)

    return LimitedHttpToolsProtocol


class ClientGone:
    """A client that leaves in the middle of its request body is one INFO line, not an
    ERROR with a traceback: there is nobody left to answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            if scope["type"] != "http":
                raise
            client = scope.get("client") or ("?",)
            log.info("client %s left during its request body: %s %s", client[0],
                     scope.get("method"), redact(scope.get("path", "")))


def server_options(settings: ServerConfig) -> dict[str, Any]:
    """The uvicorn settings that enforce `settings.limits` (and bound WebSocket frames)."""
    return {
        "http": limited_protocol(settings.limits),
        "ws_max_size": settings.max_body_bytes,
        "ws_ping_interval": max(settings.heartbeat_s, 1.0),
        # Streams are ended by `DrainingServer` first; what is left is closing sockets.
        "timeout_graceful_shutdown": 5,
    }


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but on SIGTERM it stops accepting and runs `drain` (let streams
    finish for the grace time, then end each with a terminal event) *before* uvicorn closes
    connections: uvicorn's own shutdown fails WebSockets at once (1012) and cuts the
    responses still running when its timeout ends, with no terminal event."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await self._drain()
        await super().shutdown(sockets)
