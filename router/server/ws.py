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

A socket that sends anything before authenticating, or nothing within `AUTH_TIMEOUT_S`, is
closed with code 1008. Closing the socket cancels its streams, except those started with
`"detach": true`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from router.server.auth import Principal
from router.server.eventlog import LogGap, StreamLog
from router.server.eventlog_redis import RUN, STREAM
from router.server.hub import StreamHub
from router.server.params import BodyProblem, check_stream_body, early_status, stream_kwargs
from router.server.remote import Batches, find, run_batches, stream_batches
from router.server.runs import RunError

AUTH_TIMEOUT_S = 10.0
POLICY_VIOLATION = 1008


class Session:
    """One socket: its principal, its streams' forwarders, one lock for writes."""

    def __init__(self, ws: WebSocket, hub: StreamHub, principal: Principal) -> None:
        self.ws = ws
        self.hub = hub
        self.principal = principal
        self.lock = asyncio.Lock()
        self.forwarders: dict[str, asyncio.Task[None]] = {}
        self.logs: dict[str, StreamLog] = {}

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
            await self.reject(None, 410, "events_dropped", str(gap), "after",
                              request_id=key)

    def watch(self, slog: StreamLog, after: int, batches: Batches | None = None) -> None:
        old = self.forwarders.pop(slog.key, None)
        if old is not None:
            old.cancel()
        self.logs[slog.key] = slog
        self.forwarders[slog.key] = asyncio.create_task(
            self.forward(slog.key, batches or slog.follow_batches(after)))

    async def on_stream(self, msg: dict[str, Any]) -> None:
        ref = msg.pop("ref", None)
        msg.pop("type", None)
        body = check_stream_body(msg)
        if isinstance(body, BodyProblem):
            await self.reject(ref, body.status, body.code, body.message, body.param)
            return
        wait = self.ws.app.state.limiter.allow(self.principal)
        if wait is not None:
            await self.reject(ref, 429, "rate_limited", f"rate limit of key "
                              f"{self.principal.name!r} exceeded", None,
                              retry_after_s=max(1, round(wait)))
            return
        input_, kwargs = stream_kwargs(body, self.principal)
        try:
            started = await self.hub.start(input_, kwargs, owner=self.principal.name,
                                           detach=body.detach)
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

    async def on_cancel(self, msg: dict[str, Any]) -> None:
        slog = self._owned(msg.get("request_id"))
        if slog is None:
            await self.reject(msg.get("ref"), 404, "not_found", "no such stream",
                              "request_id")
            return
        self.hub.cancel(slog)

    async def on_resume(self, msg: dict[str, Any]) -> None:
        rid = msg.get("request_id")
        slog, snap = self._owned(rid), None
        if slog is None and isinstance(rid, str) and self.hub.shared is not None:
            snap = await find(self.hub, STREAM, rid)  # produced by another instance
            slog = snap.log if snap is not None and snap.log.owned_by(
                self.principal.name) else None
        after = msg.get("after", -1)
        if slog is None or not isinstance(after, int):
            await self.reject(msg.get("ref"), 404 if slog is None else 422,
                              "not_found" if slog is None else "invalid_request",
                              "no such stream" if slog is None else "after: expected an "
                              "integer", "request_id" if slog is None else "after")
            return
        self.watch(slog, after, None if snap is None else stream_batches(self.hub, snap, after))

    async def on_subscribe(self, msg: dict[str, Any]) -> None:
        """Follow a run channel (from the shared log when there is one)."""
        run_id, after = msg.get("run_id"), msg.get("after", -1)
        slog: StreamLog | None = None
        if isinstance(run_id, str):
            if self.hub.shared is not None:
                snap = await find(self.hub, RUN, run_id)
                slog = snap.log if snap is not None else None
            else:
                slog = self.hub.runs.log.get(run_id)
        if slog is None or not slog.owned_by(self.principal.name) or not isinstance(
                after, int):
            await self.reject(msg.get("ref"), 404, "not_found", "no such run", "run_id")
            return
        remote = None if self.hub.shared is None else run_batches(self.hub, slog.key, after)
        old = self.forwarders.pop("run:" + slog.key, None)
        if old is not None:
            old.cancel()
        self.forwarders["run:" + slog.key] = asyncio.create_task(
            self.forward(slog.key, remote or slog.follow_batches(after)))

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


async def _authenticate(ws: WebSocket) -> Principal | None:
    principal = ws.scope.get("state", {}).get("principal")
    if isinstance(principal, Principal):
        return principal
    keys = ws.app.state.keys
    if keys.open:
        return keys.verify(None)  # type: ignore[no-any-return]
    try:
        raw = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT_S)
        msg = orjson.loads(raw)
    except (TimeoutError, orjson.JSONDecodeError, KeyError, WebSocketDisconnect):
        return None
    if not isinstance(msg, dict) or msg.get("type") != "auth":
        return None
    key = msg.get("key")
    found = keys.verify(key if isinstance(key, str) else None)
    return found if isinstance(found, Principal) else None


async def websocket_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    principal = await _authenticate(ws)
    if principal is None:
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await ws.close(POLICY_VIOLATION, "unauthorized")
        return
    session = Session(ws, ws.app.state.hub, principal)
    handlers = {"stream": session.on_stream, "cancel": session.on_cancel,
                "resume": session.on_resume, "subscribe": session.on_subscribe}
    try:
        await session.send_json({"type": "ready", "key": principal.name})
        while True:
            try:
                msg = orjson.loads(await ws.receive_text())
            except orjson.JSONDecodeError:
                await session.reject(None, 422, "invalid_json", "message: not valid JSON")
                continue
            if not isinstance(msg, dict):
                await session.reject(None, 422, "invalid_message", "message: expected an "
                                     "object with a `type`", "type")
                continue
            kind = msg.get("type")
            if kind == "ping":
                await session.send_json({**msg, "type": "pong"})
            elif kind in handlers:
                await handlers[kind](msg)
            else:
                await session.reject(msg.get("ref"), 422, "invalid_message",
                                     f"type: unknown message type {kind!r}", "type")
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away
    finally:
        await session.close()
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await ws.close()
