"""The OpenAI Responses API wire encoder for the loopback provider server
(`POST …/responses`): named SSE events (`event: response.…`) each carrying `type` and
`sequence_number`, reasoning / message / function-call output items, `response.completed`
(or `response.incomplete`) with usage as the terminal event, no `[DONE]`. Errors use the
OpenAI error bodies of `router.testing.wire`; the in-stream failure is `error` then
`response.failed`, as OpenAI sends it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from router.testing.script import Reply
from router.testing.wire import OpenAIWire, Rendered, finish_of, split_args

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _Numbered:
    """Event bytes with contiguous sequence numbers, in the order they are built."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, payload: Mapping[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self.seq, **payload})
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class ResponsesWire(OpenAIWire):
    name = "openai_responses"
    in_stream_error = (
        b'event: error\ndata: {"type":"error","sequence_number":90,"error":{"type":'
        b'"server_error","code":"server_error","message":"The server had an error while '
        b'processing your request. Sorry about that!","param":null}}\n\n'
        b'event: response.failed\ndata: {"type":"response.failed","sequence_number":91,'
        b'"response":{"id":"resp_loopback","object":"response","status":"failed","error":'
        b'{"code":"server_error","message":"The server had an error while processing your '
        b'request. Sorry about that!"},"output":[],"usage":null}}\n\n')
    malformed = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                 b'"item_id":"msg_loopback","output_index":0,"content_index":0,"delta":"tru\n\n')

    def render(self, reply: Reply, model: str, body: Mapping[str, Any]) -> Rendered:
        ev = _Numbered()
        rid = f"resp_loopback{time.monotonic_ns()}"
        snapshot = {"id": rid, "object": "response", "created_at": int(time.time()),
                    "status": "in_progress", "model": model, "output": [], "usage": None}
        out = Rendered(head=[ev("response.created", {"response": snapshot}),
                             ev("response.in_progress", {"response": snapshot})])
        items: list[dict[str, Any]] = []
        if reply.reasoning:
            out.steps += self._part_item(ev, items, "reasoning", f"rs_{rid}", reply.reasoning)
        if reply.text:
            out.steps += self._part_item(ev, items, "message", f"msg_{rid}", reply.text)
        for i, call in enumerate(reply.tool_calls):
            out.steps += self._call_item(ev, items, f"fc_{rid}_{i}",
                                         call.id or f"call_loopback_{i}", call.name,
                                         orjson.dumps(call.arguments).decode())
        finish = finish_of(reply)
        final = {**snapshot, "output": items,
                 "status": "incomplete" if finish in _INCOMPLETE else "completed",
                 "incomplete_details": {"reason": _INCOMPLETE[finish]}
                 if finish in _INCOMPLETE else None}
        if reply.send_usage:
            final["usage"] = {
                "input_tokens": reply.input_tokens,
                "input_tokens_details": {"cached_tokens": reply.cached_input_tokens},
                "output_tokens": reply.total_output_tokens,
                "output_tokens_details": {"reasoning_tokens": reply.total_reasoning_tokens},
                "total_tokens": reply.input_tokens + reply.total_output_tokens}
        terminal = "response.incomplete" if finish in _INCOMPLETE else "response.completed"
        out.marker.append(ev(terminal, {"response": final}))
        return out

    @staticmethod
    def _part_item(ev: _Numbered, items: list[dict[str, Any]], kind: str, item_id: str,
                   pieces: Sequence[str]) -> list[bytes]:
        """One message or reasoning item: its steps, the first with the item's opening."""
        where = {"item_id": item_id, "output_index": len(items)}
        text = "".join(pieces)
        if kind == "message":
            part, delta_kind = {"type": "output_text", "text": "", "annotations": []}, \
                "response.output_text.delta"
            item = {"id": item_id, "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
        else:
            part, delta_kind = {"type": "reasoning_text", "text": ""}, \
                "response.reasoning_text.delta"
            item = {"id": item_id, "type": "reasoning", "summary": [], "content": []}
        opening = (ev("response.output_item.added", {"output_index": len(items), "item": item})
                   + ev("response.content_part.added", {**where, "content_index": 0,
                                                        "part": part}))
        steps = [ev(delta_kind, {**where, "content_index": 0, "delta": p}) for p in pieces]
        steps[0] = opening + steps[0]
        done_part = {**part, "text": text}
        finished = {**item, "status": "completed", "content": [done_part]}
        steps[-1] += (ev(delta_kind.replace(".delta", ".done"),
                         {**where, "content_index": 0, "text": text})
                      + ev("response.content_part.done", {**where, "content_index": 0,
                                                          "part": done_part})
                      + ev("response.output_item.done", {"output_index": len(items),
                                                         "item": finished}))
        items.append(finished)
        return steps

    @staticmethod
    def _call_item(ev: _Numbered, items: list[dict[str, Any]], item_id: str, call_id: str,
                   name: str, arguments: str) -> list[bytes]:
        index = len(items)
        item = {"id": item_id, "type": "function_call", "status": "in_progress",
                "arguments": "", "call_id": call_id, "name": name}
        steps = [ev("response.output_item.added", {"output_index": index, "item": item})]
        steps += [ev("response.function_call_arguments.delta",
                     {"item_id": item_id, "output_index": index, "delta": frag})
                  for frag in split_args(arguments)]
        finished = {**item, "status": "completed", "arguments": arguments}
        steps[-1] += (ev("response.function_call_arguments.done",
                         {"item_id": item_id, "output_index": index, "arguments": arguments})
                      + ev("response.output_item.done", {"output_index": index,
                                                         "item": finished}))
        items.append(finished)
        return steps
