"""OpenAI-compatible endpoints: `POST /v1/chat/completions` (streaming and not) and
`GET /v1/models`.

Shapes follow the OpenAI API reference and openai-python's types (`ChatCompletion`,
`ChatCompletionChunk`, `Model`, the `{"error": {...}}` body), so the official SDK works
unchanged but for `base_url`. `model` is a task name, a deployment id or `auto`; routing
options (`max_ttft_ms`, `max_latency_ms`, `max_cost_usd`, `prefer`, `task`) ride as extra
body fields. The response's `model` is the deployment that served, and an extra `x_router`
object (request id, deployment, cost, latency) rides on the final chunk / the completion.

A stream's HTTP status is decided at its first content event: an error before any token is
an HTTP error with OpenAI's status and body; after that it is an in-stream error object.
`response_format` (json_object, json_schema) and the sampling parameters (seed, top_p,
penalties, user, parallel_tool_calls) are passed on; a request routes only to deployments
that honour them (none: a 400 naming what is missing).
Not supported: `n` > 1, logprobs (a 400), audio, the Responses API.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, with_config
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from providers.base import SAMPLING_PARAMS
from router.events import (
    DoneEvent,
    ErrorEvent,
    Event,
    FallbackEvent,
    ReasoningEvent,
    StartEvent,
    TextEvent,
    ToolCallEvent,
)
from router.request import ContentPart, Stop, Temperature, TokenCount, ToolChoice, ToolSpec
from router.server import models_api
from router.server.compat import (
    EventBody,
    ObservedStream,
    Render,
    RequestProblem,
    RoutingExtras,
    drain,
    parse_body,
    read_json,
    resolve_model,
    routed_response,
    router_of,
    routing_options,
    scope_key_of,
    sse_frames,
)
from router.server.openai_errors import (
    error_body,
    error_of,
    error_response,
    event_error,
    problem_response,
)

if TYPE_CHECKING:
    from router.core import Router

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
           "content_filter": "content_filter", "budget": "length", "cancelled": "stop"}
_CHUNK_TAIL = b',"logprobs":null,"finish_reason":'


# --- request ------------------------------------------------------------------------------


@with_config(ConfigDict(extra="allow"))
class OpenAIMessage(TypedDict):
    """A chat message; `developer` is the newer name of the system role."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: NotRequired[str | list[ContentPart] | None]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatCompletionBody(RoutingExtras):
    """The fields of a chat completions body this endpoint reads (one line each)."""

    messages: Annotated[list[OpenAIMessage], Field(min_length=1)]
    n: Literal[1] | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    stop: Stop | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None  # its shape: router.request_params
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # The sampling parameters (`SAMPLING_PARAMS`) stay extras, checked by the core once.
    model_config = ConfigDict(extra="allow", frozen=True)


def _messages(body: ChatCompletionBody) -> list[dict[str, Any]]:
    return [{**m, "role": "system"} if m["role"] == "developer" else dict(m)
            for m in body.messages]


def _stream_kwargs(body: ChatCompletionBody, router: Router,
                   scope_key: str | None) -> dict[str, Any]:
    """`Router.stream` keyword arguments from a chat completions body."""
    kwargs = routing_options(body)
    kwargs.update(resolve_model(body.model, router, explicit_task=body.task))
    max_tokens = body.max_completion_tokens or body.max_tokens
    for name, value in (("max_tokens", max_tokens), ("temperature", body.temperature),
                        ("stop", body.stop), ("tools", body.tools or None),
                        ("tool_choice", body.tool_choice),
                        ("response_format", body.response_format)):
        if value is not None:
            kwargs[name] = value
    _output_options(body, kwargs)
    if scope_key is not None:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "key": scope_key}
    return kwargs


def _output_options(body: ChatCompletionBody, kwargs: dict[str, Any]) -> None:
    """The sampling parameters, passed on (routing sends them only to deployments that
    honour them; the core validates them). Logprobs cannot be returned."""
    if body.logprobs or body.top_logprobs:
        raise RequestProblem("logprobs are not supported by this router.", "logprobs",
                             "unsupported_parameter")
    extra = body.model_extra or {}
    params = {name: extra[name] for name in SAMPLING_PARAMS if extra.get(name) is not None}
    if params:
        kwargs["params"] = params


# --- streaming ----------------------------------------------------------------------------


class ChunkWriter:
    """Renders events as `chat.completion.chunk` SSE frames.

    Per token it only splices the JSON-escaped delta between precomputed bytes."""

    __slots__ = (
        "_created",
        "_head",
        "_id",
        "_usage_null",
        "include_usage",
        "model",
        "sent_content",
    )

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._id = completion_id
        self._created = created
        self.include_usage = include_usage
        # OpenAI sends `"usage": null` on every chunk once include_usage is asked for.
        self._usage_null = b',"usage":null' if include_usage else b""
        self.sent_content = False
        self.model = ""
        self._head = b""
        self.set_model(model)

    def set_model(self, model: str) -> None:
        if model == self.model:
            return
        self.model = model
        self._head = (
            b'data: {"id":' + orjson.dumps(self._id)
            + b',"object":"chat.completion.chunk","created":' + str(self._created).encode()
            + b',"model":' + orjson.dumps(model) + self._usage_null
            + b',"choices":[{"index":0,"delta":'
        )

    def chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return self._head + delta + _CHUNK_TAIL + finish + b"}]}\n\n"

    def tool_call(self, ev: ToolCallEvent) -> bytes:
        call: dict[str, Any] = {"index": ev.index}
        fn: dict[str, Any] = {"arguments": ev.arguments_delta}
        if ev.id is not None:
            call["id"] = ev.id
            call["type"] = "function"
        if ev.name is not None:
            fn["name"] = ev.name
        call["function"] = fn
        return self.chunk(b'{"tool_calls":[' + orjson.dumps(call) + b"]}")

    def done(self, ev: DoneEvent) -> bytes:
        finish = orjson.dumps(_FINISH[ev.finish_reason])
        out = (self._head + b"{}" + _CHUNK_TAIL + finish + b"}],\"x_router\":"
               + orjson.dumps(x_router(ev)) + b"}\n\n")
        if self.include_usage:
            out += b"data: " + orjson.dumps({
                "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self.model, "choices": [], "usage": usage(ev),
            }) + b"\n\n"
        return out + b"data: [DONE]\n\n"


def usage(ev: DoneEvent) -> dict[str, Any]:
    u = ev.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def x_router(ev: DoneEvent) -> dict[str, Any]:
    """The router's own account of the request, as a vendor extra (like Groq's `x_groq`)."""
    return {"request_id": ev.request_id, "deployment": ev.deployment, "provider": ev.provider,
            "model": ev.model, "cost_usd": ev.cost_usd, "attempts": ev.attempts,
            "usage_estimated": ev.usage.estimated, "latency": ev.latency.model_dump()}


def _in_stream_error(ev: ErrorEvent) -> bytes:
    # The SDK raises `APIError` on a data chunk whose JSON has a top-level `error`.
    return b"data: " + orjson.dumps(event_error(ev)[1]) + b"\n\n"


def _restart_error(ev: FallbackEvent) -> bytes:
    body = error_body(
        f"{ev.from_deployment} failed after {ev.after_tokens} tokens and the router restarted "
        f"the answer on {ev.to_deployment}; streamed text cannot be retracted. Retry the "
        "request, or configure resilience.resume: continue.", "server_error", None, ev.error)
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _render(ev: Event, w: ChunkWriter) -> tuple[bytes | None, bool]:
    """One event as SSE bytes, and whether the response ends with it."""
    if isinstance(ev, TextEvent):
        w.sent_content = True
        return w.chunk(b'{"content":' + orjson.dumps(ev.delta) + b"}"), False
    if isinstance(ev, ReasoningEvent):
        # DeepSeek's field name, which most OpenAI-compatible clients read.
        return w.chunk(b'{"reasoning_content":' + orjson.dumps(ev.delta) + b"}"), False
    if isinstance(ev, ToolCallEvent):
        w.sent_content = True
        return w.tool_call(ev), False
    if isinstance(ev, StartEvent):
        w.set_model(ev.deployment)
    elif isinstance(ev, FallbackEvent):
        if ev.mode == "restart" and w.sent_content:
            return _restart_error(ev), True
        w.set_model(ev.to_deployment)
    elif isinstance(ev, DoneEvent):
        return w.done(ev), True
    elif isinstance(ev, ErrorEvent):
        return _in_stream_error(ev), True
    return None, False


# --- non-streaming ------------------------------------------------------------------------


def _completion(events: list[Event], done: DoneEvent, created: int) -> dict[str, Any]:
    text: list[str] = []
    reasoning: list[str] = []
    for ev in events:
        if isinstance(ev, TextEvent):
            text.append(ev.delta)
        elif isinstance(ev, ReasoningEvent):
            reasoning.append(ev.delta)
        elif isinstance(ev, FallbackEvent) and ev.mode == "restart":
            text.clear()  # the restarted answer replaces the partial one
            reasoning.clear()
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None,
                               "refusal": None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if done.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {
                "name": c.name,
                "arguments": c.arguments if isinstance(c.arguments, str)
                else orjson.dumps(c.arguments).decode()}}
            for c in done.tool_calls
        ]
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": f"chatcmpl-{done.request_id}", "object": "chat.completion", "created": created,
        "model": done.deployment,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _FINISH[done.finish_reason]}],
        "usage": usage(done), "x_router": x_router(done),
    }


# --- endpoints ----------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    router = router_of(request)
    try:
        body = parse_body(ChatCompletionBody, await read_json(request))
        kwargs = _stream_kwargs(body, router, scope_key_of(request))
        return routed_response(request, _messages(body), kwargs, _renderer(body))
    except RequestProblem as p:
        return problem_response(p)


def _renderer(body: ChatCompletionBody) -> Render:
    created = int(time.time())

    async def render(head: list[Event], rest: ObservedStream) -> Response | EventBody:
        last = head[-1] if head else None
        if isinstance(last, ErrorEvent):
            return error_of(last)
        headers = {"x-request-id": rest.request_id}
        if not body.stream:
            events = await drain(head, rest)
            end = events[-1] if events else None
            if isinstance(end, ErrorEvent):
                return error_of(end)
            if not isinstance(end, DoneEvent):
                return error_response(500, "The stream ended without a result.",
                                      "server_error")
            return Response(orjson.dumps(_completion(events, end, created)),
                            headers=headers, media_type="application/json")
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        model = next((ev.deployment for ev in reversed(head) if isinstance(ev, StartEvent)),
                     body.model)
        writer = ChunkWriter(f"chatcmpl-{rest.request_id}", created, model, include_usage)
        return EventBody(sse_frames(writer.chunk(b'{"role":"assistant","content":""}'), head, rest,
                                    _render, writer), headers)

    return render


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    *models_api.routes,
]
