"""The OpenAI Responses API's output side: router events rendered as a `Response` object
and as its stream of `response.*` events.

Wire shapes follow the API reference (https://platform.openai.com/docs/api-reference/
responses-streaming) and openai-python's `types/responses`: every event carries `type` and
a `sequence_number` (0, 1, 2, … per response); a stream opens with `response.created` and
`response.in_progress` and ends with exactly one of `response.completed`,
`response.incomplete` (length / content filter) or `error` + `response.failed`. Output
items: `message` (one `output_text` part), `reasoning` (one `reasoning_text` part) and
`function_call`. A message or reasoning item closes when another item starts; function
calls stay open to the end, so argument fragments of parallel calls may interleave.

One `ResponseWriter` serves both: the streaming endpoint sends what it returns, the
non-streaming one feeds it every event and answers `writer.response(...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

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
from router.server.openai_compat import x_router
from router.server.openai_errors import event_error

# Our finish reason -> (response status, incomplete_details.reason).
_STATUS: dict[str, tuple[str, str | None]] = {
    "stop": ("completed", None), "tool_calls": ("completed", None),
    "cancelled": ("completed", None), "length": ("incomplete", "max_output_tokens"),
    "budget": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}
_PART = {"message": "output_text", "reasoning": "reasoning_text"}
_DELTA_EVENT = {"message": "response.output_text.delta",
                "reasoning": "response.reasoning_text.delta"}


def usage(ev: DoneEvent) -> dict[str, Any]:
    u = ev.usage
    return {"input_tokens": u.input_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.input_tokens + u.output_tokens}


class _Item:
    """One output item as it grows."""

    __slots__ = ("call_id", "id", "kind", "name", "output_index", "pieces", "prefix")

    def __init__(self, kind: str, item_id: str, output_index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.output_index = output_index
        self.pieces: list[str] = []
        self.call_id = ""
        self.name = ""
        self.prefix = b""  # the delta frame's bytes before its sequence number

    def body(self, status: str) -> dict[str, Any]:
        text = "".join(self.pieces)
        if self.kind == "function_call":
            return {"type": "function_call", "id": self.id, "call_id": self.call_id,
                    "name": self.name, "arguments": text, "status": status}
        if self.kind == "reasoning":
            return {"type": "reasoning", "id": self.id, "summary": [],
                    "content": [{"type": "reasoning_text", "text": text}], "status": status}
        return {"type": "message", "id": self.id, "status": status, "role": "assistant",
                "content": [_part("message", text)]}


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "message":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "reasoning_text", "text": text}


class ResponseWriter:
    """Renders one routed request's events as Responses API stream events.

    `echo` holds the request fields a `Response` object repeats (`instructions`, `tools`,
    `tool_choice`, `max_output_tokens`, `temperature`, `metadata`, `previous_response_id`,
    and `store`: whether the answer is remembered). Per token it only splices
    the sequence number and the JSON-escaped delta between precomputed bytes."""

    def __init__(self, request_id: str, created_at: int, model: str,
                 echo: Mapping[str, Any]) -> None:
        self.request_id = request_id
        self.id = f"resp_{request_id}"
        self.created_at = created_at
        self.model = model
        self._echo = echo
        self._seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None  # the open message or reasoning item
        self._calls: dict[int, _Item] = {}  # our tool index -> its function_call item
        self.sent_content = False
        self.finished: dict[str, Any] | None = None  # the final Response, once streamed

    # --- the Response object --------------------------------------------------------------

    def response(self, status: str, *, done: DoneEvent | None = None,
                 error: dict[str, Any] | None = None,
                 incomplete: str | None = None) -> dict[str, Any]:
        item_status = "completed" if status == "completed" else "incomplete"
        e = self._echo
        out: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": e.get("instructions"),
            "max_output_tokens": e.get("max_output_tokens"), "model": self.model,
            "output": [i.body(item_status) for i in self._items] if status != "in_progress"
            else [],
            "parallel_tool_calls": True,
            "previous_response_id": e.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "store": bool(e.get("store")),
            "temperature": e.get("temperature"), "text": {"format": {"type": "text"}},
            "tool_choice": e.get("tool_choice") or "auto", "tools": e.get("tools") or [],
            "top_p": None, "truncation": "disabled",
            "usage": usage(done) if done is not None else None, "user": None,
            "metadata": e.get("metadata") or {},
        }
        if done is not None:
            out["x_router"] = x_router(done)
        return out

    def final(self, done: DoneEvent) -> dict[str, Any]:
        """The finished `Response` (the non-streaming answer)."""
        status, reason = _STATUS[done.finish_reason]
        return self.response(status, done=done, incomplete=reason)

    # --- events ---------------------------------------------------------------------------

    def _event(self, name: str, payload: Mapping[str, Any]) -> bytes:
        seq = self._seq
        self._seq += 1
        return (b"event: " + name.encode() + b"\ndata: "
                + orjson.dumps({"type": name, "sequence_number": seq, **payload}) + b"\n\n")

    def opening(self) -> bytes:
        snapshot = self.response("in_progress")
        return (self._event("response.created", {"response": snapshot})
                + self._event("response.in_progress", {"response": snapshot}))

    def _add(self, kind: str, prefix: str, call_id: str = "",
             name: str = "") -> tuple[bytes, _Item]:
        item = _Item(kind, f"{prefix}_{self.request_id}_{len(self._items)}", len(self._items))
        item.call_id, item.name = call_id, name  # a call is announced with its name
        self._items.append(item)
        added = self._event("response.output_item.added", {
            "output_index": item.output_index, "item": item.body("in_progress")})
        return added, item

    def _close(self, item: _Item, status: str) -> bytes:
        where = {"item_id": item.id, "output_index": item.output_index}
        text = "".join(item.pieces)
        if item.kind == "function_call":
            out = self._event("response.function_call_arguments.done",
                              {**where, "arguments": text})
        else:
            done_name = "response.output_text.done" if item.kind == "message" \
                else "response.reasoning_text.done"
            extra: dict[str, Any] = {"logprobs": []} if item.kind == "message" else {}
            out = (self._event(done_name, {**where, "content_index": 0, "text": text, **extra})
                   + self._event("response.content_part.done", {
                       **where, "content_index": 0, "part": _part(item.kind, text)}))
        return out + self._event("response.output_item.done", {
            "output_index": item.output_index, "item": item.body(status)})

    def _content(self, kind: str, delta: str) -> bytes:
        out = b""
        item = self._open
        if item is None or item.kind != kind:
            if item is not None:
                out = self._close(item, "completed")
            added, item = self._add(kind, "msg" if kind == "message" else "rs")
            out += added + self._event("response.content_part.added", {
                "item_id": item.id, "output_index": item.output_index, "content_index": 0,
                "part": _part(kind, "")})
            logprobs = b'"logprobs":[],' if kind == "message" else b""
            item.prefix = (b"event: " + _DELTA_EVENT[kind].encode() + b'\ndata: {"type":"'
                           + _DELTA_EVENT[kind].encode() + b'","item_id":"' + item.id.encode()
                           + b'","output_index":' + str(item.output_index).encode()
                           + b',"content_index":0,' + logprobs + b'"sequence_number":')
            self._open = item
        item.pieces.append(delta)
        seq = self._seq
        self._seq += 1
        return (out + item.prefix + str(seq).encode() + b',"delta":' + orjson.dumps(delta)
                + b"}\n\n")

    def text(self, delta: str) -> bytes:
        self.sent_content = True
        return self._content("message", delta)

    def reasoning(self, delta: str) -> bytes:
        return self._content("reasoning", delta)

    def tool_call(self, ev: ToolCallEvent) -> bytes:
        self.sent_content = True
        out = b""
        item = self._calls.get(ev.index)
        if item is None:
            if self._open is not None:
                out = self._close(self._open, "completed")
                self._open = None
            added, item = self._add("function_call", "fc",
                                    ev.id or f"call_{self.request_id}_{ev.index}",
                                    ev.name or "")
            out += added
            self._calls[ev.index] = item
        if not ev.arguments_delta:
            return out
        item.pieces.append(ev.arguments_delta)
        return out + self._event("response.function_call_arguments.delta", {
            "item_id": item.id, "output_index": item.output_index,
            "delta": ev.arguments_delta})

    def done(self, ev: DoneEvent) -> bytes:
        status = _STATUS[ev.finish_reason][0]
        item_status = "completed" if status == "completed" else "incomplete"
        out = b""
        for item in self._open_items():
            out += self._close(item, item_status)
        self._open = None
        self._calls = {}
        name = "response.completed" if status == "completed" else "response.incomplete"
        self.finished = self.final(ev)
        return out + self._event(name, {"response": self.finished})

    def _open_items(self) -> list[_Item]:
        items = list(self._calls.values())
        if self._open is not None:
            items.append(self._open)
        return sorted(items, key=lambda i: i.output_index)

    def failed(self, message: str, code: str | None, type_: str,
               param: str | None = None) -> bytes:
        """`error` (in both the documented flat shape and the nested one OpenAI sends, which
        the openai SDK raises on), then `response.failed`."""
        error = {"type": type_, "code": code, "message": message, "param": param}
        out = self._event("error", {"code": code, "message": message, "param": param,
                                    "error": error})
        return out + self._event("response.failed", {"response": self.response(
            "failed", error={"code": code or "server_error", "message": message})})

    def restart(self) -> None:
        """A failover restarted the answer: what was collected is discarded (non-streaming)."""
        self._items.clear()
        self._open = None
        self._calls = {}


def render(ev: Event, w: ResponseWriter) -> tuple[bytes | None, bool]:
    """One event as SSE bytes, and whether the response ends with it."""
    if isinstance(ev, TextEvent):
        return w.text(ev.delta), False
    if isinstance(ev, ReasoningEvent):
        return w.reasoning(ev.delta), False
    if isinstance(ev, ToolCallEvent):
        return w.tool_call(ev), False
    if isinstance(ev, DoneEvent):
        return w.done(ev), True
    if isinstance(ev, ErrorEvent):
        _, body = event_error(ev)
        e = body["error"]
        return w.failed(e["message"], e["code"], e["type"], e["param"]), True
    if isinstance(ev, StartEvent):
        w.model = ev.deployment
    elif isinstance(ev, FallbackEvent):
        if ev.mode == "restart" and w.sent_content:
            message = (f"{ev.from_deployment} failed after {ev.after_tokens} tokens and the "
                       f"router restarted the answer on {ev.to_deployment}; streamed text "
                       "cannot be retracted. Retry the request, or configure "
                       "resilience.resume: continue.")
            return w.failed(message, ev.error, "server_error"), True
        w.model = ev.to_deployment
    return None, False


def collect(events: list[Event], w: ResponseWriter) -> DoneEvent | ErrorEvent | None:
    """Feed a whole stream to `w` (the non-streaming answer); its end event."""
    for ev in events:
        if isinstance(ev, FallbackEvent) and ev.mode == "restart":
            w.restart()
            w.model = ev.to_deployment
            continue
        if isinstance(ev, DoneEvent | ErrorEvent):
            return ev
        render(ev, w)
    return None
