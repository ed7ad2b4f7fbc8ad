"""What the OpenAI- and Anthropic-compatible endpoints share: reading the body, mapping
`model` (task, deployment or `auto`) and the routing extras onto `Router.stream`, and
running the stream in one task and reading it far enough to know whether it failed before its
first token (an HTTP error then) or streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from router.events import Event
from router.request import CostCap, Metadata, Milliseconds, first_problem
from router.server.runs import RunError

if TYPE_CHECKING:
    from router.core import EventStream, Router

AUTO_MODEL = "auto"
# Events that decide a stream's HTTP status: the first content, or the end.
_DECISIVE = frozenset({"text", "reasoning", "tool_call", "done", "error"})
_Writer = TypeVar("_Writer")


class RequestProblem(Exception):
    """A request the endpoint refuses before routing; each dialect renders it its way."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    id: str
    kind: str  # "auto", "task" or "deployment"
    owned_by: str
    description: str | None


def router_of(request: Request) -> Router:
    """The app's `Router` (set by the app factory)."""
    router: Router = request.app.state.router
    return router


def scope_key_of(request: Request) -> str | None:
    """The budget scope of the authenticated API key, if the auth layer set one."""
    scope = getattr(request.state, "key_scope", None)
    return scope if isinstance(scope, str) else None


async def read_json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise RequestProblem(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestProblem("The request body must be a JSON object.", None, "invalid_json")
    return body


class RoutingExtras(BaseModel):
    """The router's own request fields, carried as extra body fields of both compatible
    APIs. Each endpoint's body model adds its API's fields: a new field is one line there.
    Fields the model does not name are ignored, as the vendors' APIs do."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Annotated[str, Field(min_length=1)]
    stream: StrictBool = False
    max_ttft_ms: Milliseconds | None = None
    max_latency_ms: Milliseconds | None = None
    max_cost_usd: CostCap | None = None
    prefer: Literal["cost", "latency", "quality", "balanced"] | None = None
    task: str | None = None
    metadata: Metadata | None = None


_Body = TypeVar("_Body", bound=BaseModel)


def parse_body(model: type[_Body], data: Mapping[str, Any]) -> _Body:
    """`data` validated by the endpoint's one schema, or a RequestProblem naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, msg = first_problem(exc)
        code = "missing_required_parameter" if any(
            e["type"] == "missing" for e in exc.errors()) else "invalid_value"
        raise RequestProblem(f"Invalid '{param}': {msg}.", param, code) from None


def routing_options(body: RoutingExtras) -> dict[str, Any]:
    """`Router.stream` keyword arguments of the routing extras that were given."""
    return {name: value for name in ("max_ttft_ms", "max_latency_ms", "max_cost_usd",
                                     "prefer", "task", "metadata")
            if (value := getattr(body, name)) is not None}


def resolve_model(model: Any, router: Router, explicit_task: str | None = None) -> dict[str, Any]:
    """`model` is a task name, a deployment id or `auto` (the default task, or the
    `task` extra field when given)."""
    if not isinstance(model, str) or not model:
        raise RequestProblem("you must provide a model parameter", "model",
                             "missing_required_parameter")
    loaded = router.loaded
    if model == AUTO_MODEL:
        return {"task": explicit_task} if explicit_task else {}
    if model in loaded.config.tasks:
        return {"task": model}
    if model in loaded.deployments:
        return {"model": model}
    raise RequestProblem(
        f"The model `{model}` does not exist or you do not have access to it. Use a task "
        f"({', '.join(loaded.config.tasks) or 'none'}), a deployment id, or `auto`.",
        "model", "model_not_found", status=404)


def catalog(router: Router) -> list[CatalogEntry]:
    """What `model` may name: `auto`, the tasks, then the deployments."""
    loaded = router.loaded
    default = loaded.config.defaults.task
    out = [CatalogEntry(AUTO_MODEL, "auto", "llm-stream-router",
                        f"route by the default task ({default})" if default else "route freely")]
    for name, task in loaded.config.tasks.items():
        out.append(CatalogEntry(name, "task", "llm-stream-router", task.description))
    for dep_id, dep in loaded.deployments.items():
        out.append(CatalogEntry(dep_id, "deployment", dep.provider, dep.model))
    return out


class ObservedStream:
    """`router.stream`'s events as the server accounts them (`StreamHub.instrument`: the
    metrics, and the run channel of `metadata.run_id`), like those of `/v1/stream`; its
    `request_id` is known before the first event."""

    __slots__ = ("_events", "request_id")

    def __init__(self, events: EventStream, hub: Any, run_id: str | None,
                 owner: str | None) -> None:
        self.request_id = events.request_id
        self._events: AsyncIterator[Event] = (
            hub.instrument(events, run_id=run_id, owner=owner) if hub is not None else events)

    def __aiter__(self) -> AsyncIterator[Event]:
        # The wrapped stream's own iterator (the router's pipeline generator): `async for`
        # then reads it with no frame of ours in between (every event of every answer).
        return aiter(self._events)

    def __anext__(self) -> Awaitable[Event]:
        return self._events.__anext__()

    async def aclose(self) -> None:
        """Close the stream (and its upstream connection); safe to call twice."""
        await self._events.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class SSEFrames:
    """A streaming response's body, written by `RoutedResponse`: `opening`, then each event
    as `render` writes it (the head already read, then the rest), up to the event that ends
    the response."""

    opening: bytes
    head: list[Event]
    rest: ObservedStream
    render: Callable[[Event, Any], tuple[bytes | None, bool]]
    writer: Any

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The same body as bytes, for a wrapper that acts between frames."""
        render, writer = self.render, self.writer
        yield self.opening
        for ev in self.head:
            out, last = render(ev, writer)
            if out:
                yield out
            if last:
                return
        async for ev in self.rest:
            out, last = render(ev, writer)
            if out:
                yield out
            if last:
                return


@dataclass(frozen=True, slots=True)
class EventBody:
    """A streamed answer: its SSE frames (or bytes from a wrapper of them), and the headers
    to send before them."""

    chunks: SSEFrames | AsyncIterator[bytes]
    headers: Mapping[str, str]


# Turns the head of a stream (up to its first content event or its end) and the rest of it
# into a plain response (an error, a non-streamed answer) or an `EventBody`.
Render = Callable[[list[Event], "ObservedStream"], Awaitable["Response | EventBody"]]


class RoutedResponse(Response):
    """Runs one routed request inside the request's own task and answers it.

    One task reads the whole stream: the core binds its time-to-first-token and idle
    deadlines to the task that iterates it, so reading the head in the handler and the rest
    in a body task would cancel the wrong task on a timeout. Meanwhile a watcher cancels
    this task when the client disconnects (also while the first token is still awaited),
    which closes the upstream connection at once."""

    def __init__(self, events: ObservedStream, render: Render) -> None:
        super().__init__()
        self._events = events
        self._render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone: list[bool] = []
        watcher = asyncio.create_task(_watch_disconnect(receive, task, gone))
        try:
            head: list[Event] = []
            async for ev in self._events:
                head.append(ev)
                if ev.type in _DECISIVE:
                    break
            result = await self._render(head, self._events)
            if isinstance(result, Response):
                await result(scope, receive, send)
                return
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                       for k, v in result.headers.items()]
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*headers, *_SSE_HEADERS]})
            if isinstance(result.chunks, SSEFrames):
                await _write_frames(result.chunks, send)
            else:
                async for chunk in result.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Our own cancel on disconnect ends the request quietly; any other propagates.
            if not gone or task.uncancel() > 0:
                raise
        finally:
            watcher.cancel()
            await self._events.aclose()


async def _write_frames(frames: SSEFrames, send: Send) -> None:
    """One `send` per event written, with no generator in between (every event of every
    answer passes here); the opening goes with the head's events, and the last event with
    the end of the body: each `send` is a socket write."""
    render, writer = frames.render, frames.writer
    first = [frames.opening]
    for ev in frames.head:
        out, last = render(ev, writer)
        if out:
            first.append(out)
        if last:
            await send({"type": "http.response.body", "body": b"".join(first),
                        "more_body": False})
            return
    await send({"type": "http.response.body", "body": b"".join(first), "more_body": True})
    async for ev in frames.rest:
        out, last = render(ev, writer)
        if last:
            await send({"type": "http.response.body", "body": out or b"", "more_body": False})
            return
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], gone: list[bool]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.append(True)
    task.cancel()


def routed_response(request: Request, input_: Any, kwargs: Mapping[str, Any],
                    render: Render) -> RoutedResponse:
    """The response that runs `router.stream(input_, **kwargs)` and answers through
    `render`. Raises `RequestProblem` when the run channel refuses the request."""
    hub = getattr(request.app.state, "hub", None)
    run_id, owner = _run_channel(request, kwargs, hub)
    events = ObservedStream(router_of(request).stream(input_, **kwargs), hub, run_id, owner)
    return RoutedResponse(events, render)


def _run_channel(request: Request, kwargs: Mapping[str, Any],
                 hub: Any) -> tuple[str | None, str | None]:
    """`metadata.run_id` and the key that would own it, checked now so a refusal is an
    HTTP error rather than a broken stream."""
    principal = getattr(request.state, "principal", None)
    owner = getattr(principal, "name", None)
    metadata = kwargs.get("metadata")
    run_id = metadata.get("run_id") if isinstance(metadata, Mapping) else None
    if run_id is None or hub is None:
        return None, owner
    try:
        hub.runs.channel(str(run_id), owner)
    except RunError as exc:
        raise RequestProblem(exc.message, "metadata.run_id", exc.code, exc.status) from None
    return str(run_id), owner


async def drain(head: list[Event], rest: ObservedStream) -> list[Event]:
    """Every event of a routed stream: the head already read, then the rest to the end
    (for the non-streaming responses)."""
    events = list(head)
    if events and events[-1].type not in ("done", "error"):
        async for ev in rest:
            events.append(ev)
    return events


def sse_frames(opening: bytes, head: list[Event], rest: ObservedStream,
               render: Callable[[Event, _Writer], tuple[bytes | None, bool]],
               writer: _Writer) -> SSEFrames:
    """A streaming response's body: `opening`, then each event as `render` writes it (the
    head already read, then the rest), up to the event that ends the response."""
    return SSEFrames(opening, head, rest, render, writer)
