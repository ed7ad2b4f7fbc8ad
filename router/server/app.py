"""The ASGI app: `create_app(router, settings)`.

Routes of this module: `GET /healthz`, `POST /v1/stream`, `GET /v1/streams/{id}` (status),
`GET /v1/streams/{id}/events` (resume), `POST /v1/streams/{id}/cancel`,
`GET|POST /v1/runs/{run_id}/events`, `GET /v1/deployments`, `GET /metrics`, and the
WebSocket `/v1/ws`. The OpenAI- and Anthropic-compatible endpoints and the playground plug
in from their modules' `routes` lists (see `_extension_routes`).

What routes may rely on (`request.app.state`): `router`, `settings` (`ServerConfig`),
`hub` (`StreamHub`), `streams` / `runs` (event logs), `metrics`; and on
`request.state.principal` / `request.state.key_scope` set by the auth layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from router.config.schema import ServerConfig
from router.server.auth import (
    ANONYMOUS_PRINCIPAL,
    AuthMiddleware,
    BodyLimitMiddleware,
    KeyRing,
    Principal,
    RateLimiter,
    install_log_redaction,
    problem,
)
from router.server.eventlog import EventLog, LogGap, StreamLog
from router.server.eventlog_redis import RUN, STREAM
from router.server.hub import Started, StreamHub, stream_status
from router.server.limits import ClientGone
from router.server.metrics import CONTENT_TYPE, ServerMetrics, deployment_rows, live_snapshot
from router.server.params import early_error_response, parse_stream_body, stream_kwargs
from router.server.remote import (
    Batches,
    located,
    lost_problem,
    publish_shared,
    run_batches,
    shared_logs,
    status_log,
    stream_batches,
)
from router.server.response_items import item_store
from router.server.runs import RunError, RunQuota, RunRegistry
from router.server.sse import BadCursor, EventStreamResponse, frame, last_event_id
from router.server.url_errors import exception_handlers
from router.server.ws import websocket_endpoint

EXTENSIONS = ("openai_compat", "anthropic_compat", "responses_api", "playground")
_JSON = "application/json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON)


def principal_of(request: Request) -> Principal:
    p = getattr(request.state, "principal", None)
    return p if isinstance(p, Principal) else ANONYMOUS_PRINCIPAL


def _owned(request: Request, slog: StreamLog | None, what: str) -> Response | None:
    """404 when the log does not exist, 403 when another key owns it."""
    if slog is None:
        return problem(404, "not_found", f"no such {what} (unknown, or expired after "
                       "server.retention_s)")
    if not slog.owned_by(principal_of(request).name):
        return problem(403, "forbidden", f"this {what} belongs to another API key")
    return None


async def follow_frames(slog: StreamLog, after: int,
                        batches: Batches | None = None) -> AsyncIterator[bytes]:
    try:
        async for first, batch in batches or slog.follow_batches(after):
            if len(batch) == 1:
                yield frame(first, batch[0])
            else:  # a reader that fell behind catches up in one write
                yield b"".join([frame(first + i, e) for i, e in enumerate(batch)])
    except LogGap:
        return  # a reader too slow for the log's bound; it resumes from a newer id


async def pumped_frames(hub: StreamHub, started: Started) -> AsyncIterator[bytes]:
    async for seq, entry in hub.pump(started):
        yield frame(seq, entry)


async def healthz(request: Request) -> Response:
    hub: StreamHub = request.app.state.hub
    return _json({"status": "ok", "active_streams": hub.streams.running()})


async def post_stream(request: Request) -> Response | EventStreamResponse:
    state = request.app.state
    principal = principal_of(request)
    parsed = parse_stream_body(await request.body())
    if isinstance(parsed, Response):
        return parsed
    input_, kwargs = stream_kwargs(parsed, principal)
    hub: StreamHub = state.hub
    try:
        started = await hub.start(input_, kwargs, owner=principal.name,
                                  detach=parsed.detach, spawn=False)
    except RunError as exc:
        return problem(exc.status, exc.code, exc.message, exc.param)
    early = started.early_error
    if early is not None:
        refused = early_error_response(early)
        if refused is not None:
            return refused
    slog = started.log

    def on_disconnect() -> None:
        if not slog.detach:
            hub.cancel(slog, explicit=False)

    # This request's task produces the stream (no hand-over per event); a detached stream
    # goes on producing into the log after its client left. (With the shared log the
    # stream has its own task; the response shows what is written.)
    frames = pumped_frames(hub, started) if started.gen is not None or hub.shared is None \
        else follow_frames(slog, -1)
    return EventStreamResponse(frames, on_disconnect,
                               [(b"x-request-id", slog.key.encode())],
                               heartbeat_s=state.settings.heartbeat_s,
                               cancel_on_disconnect=not slog.detach)


async def get_stream(request: Request) -> Response:
    hub = request.app.state.hub
    slog, snap = await located(hub, STREAM, request.path_params["request_id"])
    refused = _owned(request, slog, "stream")
    if refused is not None or slog is None:
        return refused or Response(status_code=404)
    if snap is None:
        return _json(stream_status(slog))
    status = stream_status(await status_log(hub, snap))
    status["truncated"] = status["truncated"] or "lost" in snap.meta
    return _json(status)


async def stream_events(request: Request) -> Response | EventStreamResponse:
    slog, snap = await located(request.app.state.hub, STREAM, request.path_params["request_id"])
    refused = _owned(request, slog, "stream") or lost_problem(snap)
    if refused is not None or slog is None:
        return refused or Response(status_code=404)
    hub = request.app.state.hub
    return _resume(request, slog, None if snap is None else (
        lambda after: stream_batches(hub, snap, after)))


def _resume(request: Request, slog: StreamLog,
            remote: Callable[[int], Batches] | None = None) -> Response | EventStreamResponse:
    try:
        after = last_event_id(request.headers, request.query_params)
    except BadCursor as exc:
        return problem(400, "invalid_request", str(exc), exc.param)
    after = -1 if after is None else max(after, -1)
    if slog.closed and after >= slog.next_seq - 1:
        # Nothing left, ever: 204 tells an EventSource to stop reconnecting (WHATWG HTML).
        return Response(status_code=204, headers={"x-request-id": slog.key})
    if after + 1 < slog.dropped:
        return problem(410, "events_dropped", f"events before id {slog.dropped} are no longer "
                       "kept (server.max_log_events)", "Last-Event-ID")
    frames = follow_frames(slog, after, None if remote is None else remote(after))
    return EventStreamResponse(frames, headers=[(b"x-request-id", slog.key.encode())],
                               heartbeat_s=request.app.state.settings.heartbeat_s)


async def cancel_stream(request: Request) -> Response:
    hub: StreamHub = request.app.state.hub
    slog, snap = await located(hub, STREAM, request.path_params["request_id"])
    refused = _owned(request, slog, "stream")
    if refused is not None or slog is None:
        return refused or Response(status_code=404)
    if snap is not None and hub.shared is not None:  # running on another instance
        cancelled = await hub.shared.request_cancel(slog.key, snap.meta)
    else:
        cancelled = hub.cancel(slog)
    return _json({"request_id": slog.key, "cancelled": cancelled}, 202)


async def run_events(request: Request) -> Response | EventStreamResponse:
    runs: RunRegistry = request.app.state.runs
    run_id = runs.qualified(request.path_params["run_id"], principal_of(request).name)
    hub: StreamHub = request.app.state.hub
    if hub.shared is None:
        slog = runs.log.get(run_id)
    else:  # every instance reads runs from the shared log
        slog, snap = await located(request.app.state.hub, RUN, run_id)
    refused = _owned(request, slog, "run") or (lost_problem(snap) if hub.shared else None)
    if refused is not None or slog is None:
        return refused or Response(status_code=404)
    return _resume(request, slog, None if hub.shared is None else (
        lambda after: run_batches(hub, run_id, after)))


async def publish_run_event(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return problem(422, "invalid_json", f"body: not JSON ({exc})", "body")
    events = body if isinstance(body, list) else [body]
    runs: RunRegistry = request.app.state.runs
    if request.app.state.hub.shared is not None:
        return await publish_shared(request.app.state.hub, request.path_params["run_id"],
                                    principal_of(request).name, events)
    numbers = []
    try:
        for ev in events:
            if not isinstance(ev, dict):
                return problem(422, "invalid_event", "body: expected a JSON object (or a "
                               "list of objects) with a `type`", "body")
            numbers.append(runs.publish(request.path_params["run_id"], ev,
                                        principal_of(request).name))
    except RunError as exc:
        return problem(exc.status, exc.code, exc.message, exc.param)
    return _json({"run_id": request.path_params["run_id"], "ids": numbers}, 201)


async def deployments(request: Request) -> Response:
    return _json({"deployments": deployment_rows(request.app.state.router)})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


def _extension_routes() -> tuple[list[BaseRoute], list[str]]:
    """Routes (and public paths, e.g. the playground's static page) of the compatible
    endpoints and the playground, from the modules of those that exist."""
    routes: list[BaseRoute] = []
    public: list[str] = []
    for name in EXTENSIONS:
        module_name = f"router.server.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        routes.extend(getattr(module, "routes", []))
        public.extend(getattr(module, "PUBLIC_PATHS", ()))
    return routes, public


def create_app(router: Any, settings: ServerConfig | None = None, *,
               close_router: bool = False) -> Starlette:
    """The server for `router`. `settings` defaults to the router config's `server:`
    section; `close_router` closes the router when the app shuts down."""
    if settings is None:
        settings = router.loaded.config.server
    streams = EventLog(settings.max_log_events, settings.retention_s,
                       max_retained_bytes=settings.max_retained_bytes)
    limits = settings.limits
    runs = RunRegistry(EventLog(settings.max_log_events, settings.retention_s,
                                expire_idle=True),
                       RunQuota(limits.run_max_bytes_per_key, limits.run_max_events_per_key,
                                limits.run_max_runs_per_key))
    shared = shared_logs(router, settings)
    response_items = item_store(router, settings)
    if shared is not None:
        streams.sink, runs.log.sink = shared.streams_sink, shared.runs_sink
    server_metrics = ServerMetrics(lambda: live_snapshot(router))
    hub = StreamHub(router, streams, runs, server_metrics, log_prompts=settings.log_prompts,
                    shared=shared)
    if shared is not None:
        shared.on_cancel = hub.cancel_by_id
    extra_routes, public = _extension_routes()
    install_log_redaction()
    keys, limiter = KeyRing(settings.api_keys), RateLimiter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stats_sync = None
        resilience = getattr(router, "resilience", None)
        if resilience is not None:
            resilience.start()  # shared breakers sync from startup, not the first request
        if shared is not None:
            await shared.start()
            from router.state.stats_sync import StatsSync

            stats_sync = StatsSync(
                router.stats, router.loaded.config.state, instance=shared.instance,
                breakers=resilience.breakers if resilience is not None else None)
            stats_sync.start()
        sweeper = asyncio.create_task(_sweep(streams, runs, settings.retention_s))
        lag_watch = asyncio.create_task(server_metrics.watch_loop())
        # `router.publish(run_id, event)` from agent code in this process reaches the runs.
        remove_sink = router.add_run_sink(runs.publish)
        try:
            yield
        finally:
            remove_sink()
            sweeper.cancel()
            lag_watch.cancel()
            await hub.shutdown(settings.shutdown_grace_s)
            if stats_sync is not None:
                await stats_sync.aclose()
            if shared is not None:
                await shared.aclose()
            await response_items.aclose()
            if close_router:
                await router.aclose()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/stream", post_stream, methods=["POST"]),
        Route("/v1/streams/{request_id}", get_stream, methods=["GET"]),
        Route("/v1/streams/{request_id}/events", stream_events, methods=["GET"]),
        Route("/v1/streams/{request_id}/cancel", cancel_stream, methods=["POST"]),
        Route("/v1/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/v1/runs/{run_id}/events", publish_run_event, methods=["POST"]),
        Route("/v1/deployments", deployments, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
        *extra_routes,
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"], expose_headers=["x-request-id"],
            allow_headers=["authorization", "x-api-key", "content-type", "last-event-id"]))
    middleware += [
        Middleware(ClientGone),
        Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes),
        Middleware(AuthMiddleware, keys=keys, limiter=limiter, public_paths=public),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers=exception_handlers)
    app.state.router = router
    app.state.settings = settings
    app.state.hub = hub
    app.state.streams = streams
    app.state.runs = runs
    app.state.response_items = response_items
    app.state.metrics = server_metrics
    app.state.keys = keys
    app.state.limiter = limiter
    return app


async def _sweep(streams: EventLog, runs: RunRegistry, retention_s: float) -> None:
    while True:
        await asyncio.sleep(min(max(retention_s, 1.0), 30.0))
        streams.sweep()
        runs.sweep()


__all__ = ["create_app", "principal_of"]
