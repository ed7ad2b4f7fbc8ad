"""Anthropic-compatible endpoint: `POST /v1/messages` (streaming and not).

Shapes follow the Messages API reference (docs.claude.com/en/api/messages and
".../messages-streaming") and anthropic-python's types, so the official SDK works unchanged
but for `base_url`. The request (system, content blocks, tool_use / tool_result blocks,
tools with `input_schema`, tool_choice) is translated into the OpenAI chat shape that
`Router.stream` takes; routing options (`max_ttft_ms`, `max_latency_ms`, `max_cost_usd`,
`prefer`, `task`) ride as extra body fields and `model` is a task, a deployment or `auto`.

A stream's HTTP status is decided at its first content event: an error before any token is
an HTTP error; after that, an `event: error`. Not supported: documents, server tools,
thinking signatures (thinking blocks are streamed with an empty signature).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
from router.request import RequestError, StreamParams, prepare
from router.server.anthropic_request import MessagesBody, stream_kwargs, to_openai_messages
from router.server.compat import (
    EventBody,
    ObservedStream,
    Render,
    RequestProblem,
    drain,
    parse_body,
    read_json,
    routed_response,
    router_of,
    scope_key_of,
    sse_frames,
)

if TYPE_CHECKING:
    from router.core import Router

# Router error code -> (HTTP status, Anthropic error type).
_ERRORS: dict[str, tuple[int, str]] = {
    "no_route": (400, "invalid_request_error"),
    "bad_request": (400, "invalid_request_error"),
    "context_length": (400, "invalid_request_error"),
    "content_filter": (400, "invalid_request_error"),
    "auth": (500, "api_error"),
    "rate_limited": (429, "rate_limit_error"),
    "budget_exceeded": (429, "rate_limit_error"),
    "overloaded": (529, "overloaded_error"),
    "circuit_open": (529, "overloaded_error"),
    "timeout": (504, "timeout_error"),
}
_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "content_filter": "refusal", "budget": "max_tokens", "cancelled": "end_turn"}


def _error_body(type_: str, message: str, request_id: str | None) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message},
                         "request_id": request_id})


def _error_response(status: int, type_: str, message: str, request_id: str | None,
                    retryable: bool = False) -> Response:
    # `x-should-retry` steers the SDK's retry loop: only transient failures are retried
    # (an exhausted budget is a 429 the SDK must not hammer).
    headers = {"x-should-retry": "true" if retryable else "false"}
    if request_id:
        headers["request-id"] = request_id
    return Response(_error_body(type_, message, request_id), status, headers=headers,
                    media_type="application/json")


def _problem_response(p: RequestProblem) -> Response:
    type_ = _PROBLEM_TYPES.get(p.status, "invalid_request_error")
    return _error_response(p.status, type_, p.message, None)


_PROBLEM_TYPES = {403: "permission_error", 404: "not_found_error"}


def _event_error(ev: ErrorEvent) -> tuple[int, str, str]:
    status, type_ = _ERRORS.get(ev.code, (500, "api_error"))
    if ev.code == "no_route" and ev.retryable:
        status, type_ = 529, "overloaded_error"
    message = f"{ev.code}: {ev.message}"
    if ev.suggestion:
        message += f" ({ev.suggestion})"
    return status, type_, message


def usage(ev: DoneEvent) -> dict[str, Any]:
    # Anthropic's `input_tokens` excludes cache reads; ours includes them.
    u = ev.usage
    return {"input_tokens": u.input_tokens - u.cached_input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": u.cached_input_tokens,
            "output_tokens": u.output_tokens}


def x_router(ev: DoneEvent) -> dict[str, Any]:
    return {"request_id": ev.request_id, "deployment": ev.deployment, "provider": ev.provider,
            "model": ev.model, "cost_usd": ev.cost_usd, "attempts": ev.attempts,
            "usage_estimated": ev.usage.estimated, "latency": ev.latency.model_dump()}


_DELTA_TYPES = {"text": b"text_delta", "thinking": b"thinking_delta"}


def _frame(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


# --- streaming ----------------------------------------------------------------------------


class BlockWriter:
    """Renders events as Messages API stream events. Text and thinking blocks close when
    another block starts; tool_use blocks stay open to the end, so argument fragments of
    parallel calls may interleave."""

    __slots__ = ("_next", "_open", "_tools", "input_tokens", "message_id", "model",
                 "sent_content")

    def __init__(self, message_id: str, model: str, input_tokens: int = 0) -> None:
        self.message_id = message_id
        self.model = model
        self.input_tokens = input_tokens  # the router's estimate, until usage arrives
        self._next = 0
        # The open text/thinking block: kind, index, and its delta frame's leading bytes.
        self._open: tuple[str, int, bytes] | None = None
        self._tools: dict[int, int] = {}  # our tool index -> block index
        self.sent_content = False

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id, "type": "message", "role": "assistant", "content": [],
            "model": self.model, "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return (_frame(b"message_start", orjson.dumps({"type": "message_start",
                                                        "message": message}))
                + _frame(b"ping", b'{"type":"ping"}'))

    def _block(self, kind: str, block: bytes) -> tuple[bytes, int]:
        """Close the open text/thinking block if it is not `kind`; open one of `kind`."""
        out = b""
        if self._open is not None:
            if self._open[0] == kind:
                return out, self._open[1]
            out = self._stop(self._open[1])
            self._open = None
        index = self._next
        self._next += 1
        if kind in _DELTA_TYPES:
            # Per token only the JSON-escaped piece is spliced into these bytes.
            prefix = (b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                      b'"index":' + str(index).encode() + b',"delta":{"type":"'
                      + _DELTA_TYPES[kind] + b'","' + kind.encode() + b'":')
            self._open = (kind, index, prefix)
        return out + _frame(b"content_block_start", b'{"type":"content_block_start","index":'
                            + str(index).encode() + b',"content_block":' + block + b"}"), index

    @staticmethod
    def _stop(index: int) -> bytes:
        return _frame(b"content_block_stop",
                      b'{"type":"content_block_stop","index":' + str(index).encode() + b"}")

    @staticmethod
    def _delta(index: int, delta: bytes) -> bytes:
        return _frame(b"content_block_delta", b'{"type":"content_block_delta","index":'
                      + str(index).encode() + b',"delta":' + delta + b"}")

    def text(self, delta: str) -> bytes:
        self.sent_content = True
        o = self._open
        if o is not None and o[0] == "text":
            return o[2] + orjson.dumps(delta) + b"}}\n\n"
        out, _ = self._block("text", b'{"type":"text","text":""}')
        return out + self._open[2] + orjson.dumps(delta) + b"}}\n\n"  # type: ignore[index]

    def thinking(self, delta: str) -> bytes:
        o = self._open
        if o is not None and o[0] == "thinking":
            return o[2] + orjson.dumps(delta) + b"}}\n\n"
        out, _ = self._block("thinking", b'{"type":"thinking","thinking":"","signature":""}')
        return out + self._open[2] + orjson.dumps(delta) + b"}}\n\n"  # type: ignore[index]

    def tool_call(self, ev: ToolCallEvent) -> bytes:
        self.sent_content = True
        out = b""
        index = self._tools.get(ev.index)
        if index is None:
            block = {"type": "tool_use", "id": ev.id or f"toolu_{ev.index}",
                     "name": ev.name or "", "input": {}}
            out, index = self._block("tool_use", orjson.dumps(block))
            self._tools[ev.index] = index
        if not ev.arguments_delta:
            return out
        return out + self._delta(index, b'{"type":"input_json_delta","partial_json":'
                                 + orjson.dumps(ev.arguments_delta) + b"}")

    def done(self, ev: DoneEvent) -> bytes:
        out = b""
        indexes = set(self._tools.values())
        if self._open is not None:
            indexes.add(self._open[1])
            self._open = None
        for index in sorted(indexes):
            out += self._stop(index)
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": _STOP_REASON[ev.finish_reason], "stop_sequence": None},
                 "usage": usage(ev), "x_router": x_router(ev)}
        return (out + _frame(b"message_delta", orjson.dumps(delta))
                + _frame(b"message_stop", b'{"type":"message_stop"}'))


def _in_stream_error(ev: ErrorEvent) -> bytes:
    # After HTTP 200 the API reports failures as `event: error`; the SDK raises on it.
    _, type_, message = _event_error(ev)
    return _frame(b"error", orjson.dumps({"type": "error", "error": {"type": type_,
                                                                      "message": message}}))


def _render(ev: Event, w: BlockWriter) -> tuple[bytes | None, bool]:
    """One event as SSE bytes, and whether the response ends with it."""
    if isinstance(ev, TextEvent):
        return w.text(ev.delta), False
    if isinstance(ev, ReasoningEvent):
        return w.thinking(ev.delta), False
    if isinstance(ev, ToolCallEvent):
        return w.tool_call(ev), False
    if isinstance(ev, DoneEvent):
        return w.done(ev), True
    if isinstance(ev, ErrorEvent):
        return _in_stream_error(ev), True
    if isinstance(ev, FallbackEvent) and ev.mode == "restart" and w.sent_content:
        message = (f"{ev.from_deployment} failed after {ev.after_tokens} tokens and the answer "
                   f"was restarted on {ev.to_deployment}; streamed text cannot be retracted")
        return _frame(b"error", orjson.dumps({"type": "error", "error": {
            "type": "api_error", "message": message}})), True
    return None, False


# --- non-streaming ------------------------------------------------------------------------


def _message(events: list[Event], done: DoneEvent) -> dict[str, Any]:
    text: list[str] = []
    thinking: list[str] = []
    for ev in events:
        if isinstance(ev, TextEvent):
            text.append(ev.delta)
        elif isinstance(ev, ReasoningEvent):
            thinking.append(ev.delta)
        elif isinstance(ev, FallbackEvent) and ev.mode == "restart":
            text.clear()  # the restarted answer replaces the partial one
            thinking.clear()
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": "".join(thinking), "signature": ""})
    if text:
        content.append({"type": "text", "text": "".join(text)})
    for call in done.tool_calls:
        args = call.arguments
        if isinstance(args, str):  # arguments the model left unparseable stay as text
            args = {"_raw": args}
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
    return {"id": f"msg_{done.request_id}", "type": "message", "role": "assistant",
            "model": done.deployment, "content": content,
            "stop_reason": _STOP_REASON[done.finish_reason], "stop_sequence": None,
            "usage": usage(done), "x_router": x_router(done)}


# --- endpoint -----------------------------------------------------------------------------


async def messages(request: Request) -> Response:
    router = router_of(request)
    try:
        body = parse_body(MessagesBody, await read_json(request))
        input_ = to_openai_messages(body.messages)
        kwargs = stream_kwargs(body, router, scope_key_of(request))
        try:
            input_tokens = _input_estimate(input_, kwargs, router)
        except RequestError:
            input_tokens = 0  # the stream itself refuses the request, in its own words
        return routed_response(request, input_, kwargs, _renderer(body, input_tokens))
    except RequestProblem as p:
        return _problem_response(p)


def _input_estimate(input_: Any, kwargs: Mapping[str, Any], router: Router) -> int:
    """The router's input-token estimate (the one routing prices); raises `RequestError`
    for a request the core would refuse."""
    fields = {k: v for k, v in kwargs.items() if k in _COUNTED}
    return prepare(StreamParams(input=input_, **fields), router.loaded).constraints.input_tokens


def _renderer(body: MessagesBody, input_tokens: int = 0) -> Render:
    async def render(head: list[Event], rest: ObservedStream) -> Response | EventBody:
        last = head[-1] if head else None
        request_id = rest.request_id
        if isinstance(last, ErrorEvent):
            return _error_response(*_event_error(last), request_id, last.retryable)
        headers = {"request-id": request_id}
        if not body.stream:
            events = await drain(head, rest)
            end = events[-1] if events else None
            if isinstance(end, ErrorEvent):
                return _error_response(*_event_error(end), request_id, end.retryable)
            if not isinstance(end, DoneEvent):
                return _error_response(500, "api_error", "The stream ended without a result.",
                                       request_id)
            return Response(orjson.dumps(_message(events, end)), headers=headers,
                            media_type="application/json")
        model = next((ev.deployment for ev in reversed(head) if isinstance(ev, StartEvent)),
                     body.model)
        w = BlockWriter(f"msg_{request_id}", model, input_tokens)
        return EventBody(sse_frames(w.start(), head, rest, _render, w), headers)

    return render


async def count_tokens(request: Request) -> Response:
    """`POST /v1/messages/count_tokens`: the router's own input estimate (the one routing
    prices), not a provider tokenizer's count."""
    router = router_of(request)
    try:
        body = parse_body(MessagesBody, await read_json(request))
        input_ = to_openai_messages(body.messages)
        input_tokens = _input_estimate(input_, stream_kwargs(body, router, None), router)
    except RequestProblem as p:
        return _problem_response(p)
    except RequestError as e:
        return _error_response(400, "invalid_request_error", e.message, None)
    return Response(orjson.dumps({"input_tokens": input_tokens}),
                    media_type="application/json")


_COUNTED = frozenset({"task", "model", "system", "tools", "tool_choice"})


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
