"""WebSocket `/v1/ws`: several streams multiplexed on one socket, as JSON text messages.

Client -> server:
    {"type": "auth", "key": "..."}                 first, unless the handshake carried a key
    {"type": "stream", "ref": "a", ...}            the `POST /v1/stream` body; `ref` is yours
    {"type": "cancel", "request_id": "..."}
    {"type": "resume", "request_id": "...", "after": 41}
    {"type": "subscribe", "run_id": "...", "after": -1}   a run channel's events, live
    {"type": "ping", ...}                          answered by {"type": "pong", ...same id}
Server -> client:
    {"type": "ready", "key": "<key name>"}         authenticated
    {"type": "accepted", "ref": "a", "request_id": "..."}, then the stream's events as they
    are (each carries `request_id` and `seq`) up to its `done` / `error`
    {"type": "rejected", "ref": "a", "status": 422, "code": ..., "message": ..., "param": ...}

Each message is validated by the schema of its `type`; one that is refused or fails is
answered with a `rejected` for it alone (its `ref` echoed when it had one), and the socket
and its other streams go on; binary frames are refused the same way. A socket that sends
anything before authenticating (or a first frame over `server.limits.ws_auth_max_bytes`),
or nothing within `AUTH_TIMEOUT_S`, is closed with code 1008. Closing the socket cancels
its streams, except those started with `"detach": true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from router.request import first_problem
from router.server.auth import Principal
from router.server.eventlog import LogGap, LogLost, StreamLog
from router.server.eventlog_redis import RUN, STREAM
from router.server.hub import StreamHub
from router.server.params import BodyProblem, StreamBody, early_status, stream_kwargs
from router.server.remote import Batches, find, run_batches, stream_batches
from router.server.runs import RunError

log = logging.getLogger("router.server")
Ref = str | int | None  # the client's name for a message, echoed in `accepted`/`rejected`
# The last event a reader has: it gets the ones after it (-1: from the start).
Cursor = Annotated[int, Field(ge=-1, le=2**62, strict=True)]

AUTH_TIMEOUT_S = 10.0
POLICY_VIOLATION = 1008


class StreamMessage(StreamBody):
    type: Literal["stream"]
    ref: Ref = None


class CancelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["cancel"]
    request_id: str
    ref: Ref = None


class ResumeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["resume"]
    request_id: str
    after: Cursor = -1
    ref: Ref = None


class SubscribeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["subscribe"]
    run_id: str
    after: Cursor = -1
    ref: Ref = None


class PingMessage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # echoed back as it came
    type: Literal["ping"]


ClientMessage = StreamMessage | CancelMessage | ResumeMessage | SubscribeMessage | PingMessage
_MESSAGES: dict[str, type[ClientMessage]] = {
    "stream": StreamMessage, "cancel": CancelMessage, "resume": ResumeMessage,
    "subscribe": SubscribeMessage, "ping": PingMessage}


@dataclass(frozen=True, slots=True)
class Refused:
    """A message its schema refuses: the problem, and the client's `ref` when it had one."""

    problem: BodyProblem
    ref: Ref = None


def parse_message(raw: str) -> ClientMessage | Refused:
    """One client message, validated by the schema of its `type`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Refused(BodyProblem(422, "invalid_json", "message: not valid JSON", "message"))
    kind = data.get("type") if isinstance(data, dict) else None
    model = _MESSAGES.get(kind) if isinstance(kind, str) else None
    ref = data.get("ref") if isinstance(data, dict) else None
    ref = ref if isinstance(ref, str | int) and not isinstance(ref, bool) else None
    if model is None:
        return Refused(BodyProblem(422, "invalid_message", f"type: expected one of "
                                   f"{', '.join(_MESSAGES)}, got {kind!r:.40}", "type"), ref)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, msg = first_problem(exc)
        return Refused(BodyProblem(422, "invalid_message", f"{param}: {msg}", param), ref)


class Session:
    """One socket: its principal, its streams' forwarders, one lock for writes."""

    def __init__(self, ws: WebSocket, hub: StreamHub, principal: Principal) -> None:
        self.ws = ws
        self.hub = hub
        self.principal = principal
        self.lock = asyncio.Lock()
        self.forwarders: dict[str, asyncio.Task[None]] = {}
        self.logs: dict[str, StreamLog] = {}

    @property
    def connected(self) -> bool:
        return (self.ws.application_state == WebSocketState.CONNECTED
                and self.ws.client_state == WebSocketState.CONNECTED)

    async def send(self, payload: bytes) -> None:
        async with self.lock:
            await self.ws.send_text(payload.decode())

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self.send(orjson.dumps(obj))

    async def reject(self, ref: Any, status: int, code: str, message: str,
                     param: str | None = None, **extra: Any) -> None:
        await self.send_json({"type": "rejected", "ref": ref, "status": status, "code": code,
                              "message": message, "param": param, **extra})

    async def forward(self, key: str, batches: Batches) -> None:
        try:
            async for _, batch in batches:
                for _, data in batch:
                    await self.send(data)
        except LogGap as gap:
            await self.reject(None, 410, "events_lost" if isinstance(gap, LogLost)
                              else "events_dropped", str(gap), "after", request_id=key)

    def _follow(self, name: str, key: str, batches: Batches) -> None:
        old = self.forwarders.pop(name, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self.forward(key, batches))
        self.forwarders[name] = task
        self.hub.readers.add(task)  # waited for at shutdown: it delivers the last events
        task.add_done_callback(self.hub.readers.discard)

    def watch(self, slog: StreamLog, after: int, batches: Batches | None = None) -> None:
        self.logs[slog.key] = slog
        self._follow(slog.key, slog.key, batches or slog.follow_batches(after))

    async def on_stream(self, msg: StreamMessage) -> None:
        ref = msg.ref
        wait = self.ws.app.state.limiter.allow(self.principal)
        if wait is not None:
            await self.reject(ref, 429, "rate_limited", f"rate limit of key "
                              f"{self.principal.name!r} exceeded", None,
                              retry_after_s=max(1, round(wait)))
            return
        input_, kwargs = stream_kwargs(msg, self.principal)
        try:
            started = await self.hub.start(input_, kwargs, owner=self.principal.name,
                                           detach=msg.detach)
        except RunError as exc:
            await self.reject(ref, exc.status, exc.code, exc.message, exc.param)
            return
        early = started.early_error
        status = early_status(early) if early is not None else None
        if early is not None and status is not None:
            await self.reject(ref, status, early.code, early.message, None,
                              request_id=early.request_id)
            return
        await self.send_json({"type": "accepted", "ref": ref, "request_id": started.log.key})
        self.watch(started.log, -1)

    async def on_cancel(self, msg: CancelMessage) -> None:
        slog = self._owned(msg.request_id)
        if slog is None:
            await self.reject(msg.ref, 404, "not_found", "no such stream", "request_id")
            return
        self.hub.cancel(slog)

    async def on_resume(self, msg: ResumeMessage) -> None:
        slog, snap = self._owned(msg.request_id), None
        if slog is None and self.hub.shared is not None:
            snap = await find(self.hub, STREAM, msg.request_id)  # from another instance
            slog = snap.log if snap is not None and snap.log.owned_by(
                self.principal.name) else None
        if slog is None:
            await self.reject(msg.ref, 404, "not_found", "no such stream", "request_id")
            return
        self.watch(slog, msg.after, None if snap is None else stream_batches(
            self.hub, snap, msg.after))

    async def on_subscribe(self, msg: SubscribeMessage) -> None:
        """Follow a run channel (from the shared log when there is one)."""
        key = self.hub.runs.qualified(msg.run_id, self.principal.name)
        slog: StreamLog | None
        if self.hub.shared is not None:
            snap = await find(self.hub, RUN, key)
            slog = snap.log if snap is not None else None
        else:
            slog = self.hub.runs.log.get(key)
        if slog is None or not slog.owned_by(self.principal.name):
            await self.reject(msg.ref, 404, "not_found", "no such run", "run_id")
            return
        remote = None if self.hub.shared is None else run_batches(self.hub, slog.key,
                                                                 msg.after)
        self._follow("run:" + slog.key, slog.key, remote or slog.follow_batches(msg.after))

    async def on_ping(self, msg: PingMessage) -> None:
        await self.send_json({**msg.model_dump(), "type": "pong"})

    async def handle(self, raw: str) -> None:
        """One message. Whatever it does wrong is answered for it alone: the socket and
        its other streams go on."""
        msg = parse_message(raw)
        if isinstance(msg, Refused):
            p = msg.problem
            await self.reject(msg.ref, p.status, p.code, p.message, p.param)
            return
        try:
            if isinstance(msg, StreamMessage):
                await self.on_stream(msg)
            elif isinstance(msg, CancelMessage):
                await self.on_cancel(msg)
            elif isinstance(msg, ResumeMessage):
                await self.on_resume(msg)
            elif isinstance(msg, SubscribeMessage):
                await self.on_subscribe(msg)
            else:
                await self.on_ping(msg)
        except WebSocketDisconnect:
            raise
        except Exception:
            if not self.connected:
                raise  # the socket itself is gone
            log.exception("websocket %s message failed", msg.type)
            await self.reject(getattr(msg, "ref", None), 500, "internal_error",
                              f"this {msg.type} message failed inside the server; the "
                              "socket and its other streams go on")

    def _owned(self, rid: Any) -> StreamLog | None:
        slog = self.hub.streams.get(rid) if isinstance(rid, str) else None
        if slog is None or not slog.owned_by(self.principal.name):
            return None  # another key's stream is as invisible as a missing one
        return slog

    async def close(self) -> None:
        for task in self.forwarders.values():
            task.cancel()
        for slog in self.logs.values():
            if not slog.detach:
                self.hub.cancel(slog)
        for task in self.forwarders.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _authenticate(ws: WebSocket, max_bytes: int) -> Principal | None:
    """The socket's principal: from the handshake, or from a first `auth` message of at
    most `max_bytes` (an unauthenticated client may not make the server hold more)."""
    principal = ws.scope.get("state", {}).get("principal")
    if isinstance(principal, Principal):
        return principal
    keys = ws.app.state.keys
    if keys.open:
        return keys.verify(None)  # type: ignore[no-any-return]
    try:
        message = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
    except TimeoutError:
        return None
    raw = message.get("text")
    if not isinstance(raw, str) or len(raw) > max_bytes:
        return None
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or msg.get("type") != "auth":
        return None
    key = msg.get("key")
    found = keys.verify(key if isinstance(key, str) else None)
    return found if isinstance(found, Principal) else None


async def websocket_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    limits = ws.app.state.settings.limits
    principal = await _authenticate(ws, limits.ws_auth_max_bytes)
    if principal is None:
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await ws.close(POLICY_VIOLATION, "unauthorized")
        return
    session = Session(ws, ws.app.state.hub, principal)
    try:
        await session.send_json({"type": "ready", "key": principal.name})
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                await session.reject(None, 422, "invalid_message", "message: binary frames "
                                     "are not accepted (send JSON text)", "message")
                continue
            await session.handle(raw)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away
    finally:
        await session.close()
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await ws.close()
