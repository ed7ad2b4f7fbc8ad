"""Wire encoders for the loopback provider server (`router.testing`).

Each encoder renders one scripted `Reply` into the exact bytes a real provider sends:
OpenAI Chat Completions SSE, Anthropic Messages SSE, Ollama `/api/chat` NDJSON and Gemini
`streamGenerateContent?alt=sse` (CRLF framing). See the repository's WIRE-FORMATS notes
for the shapes reproduced here. Bytes are built before streaming starts so the server
spends no time per chunk beyond writing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router.testing.script import Reply

__all__ = ["WIRES", "Rendered", "Wire"]


@dataclass(slots=True)
class Rendered:
    """One response as bytes: `head` right after the headers, one `steps` entry per content
    chunk (the "tokens" faults count), `tail` after the content, then the terminal `marker`."""

    head: list[bytes] = field(default_factory=list)
    steps: list[bytes] = field(default_factory=list)
    tail: list[bytes] = field(default_factory=list)
    marker: list[bytes] = field(default_factory=list)


def split_args(text: str, parts: int = 3) -> list[str]:
    """Split a JSON text at arbitrary points, as providers stream tool arguments."""
    if not text:
        return [""]
    size = max(1, math.ceil(len(text) / parts))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _retry_headers(retry_after: float | None, with_ms: bool) -> dict[str, str]:
    if retry_after is None:
        return {}
    headers = {"retry-after": str(max(0, math.ceil(retry_after)))}
    if with_ms:
        headers["retry-after-ms"] = str(int(retry_after * 1000))
    return headers


def finish_of(reply: Reply) -> str:
    if reply.finish is not None:
        return reply.finish
    return "tool_calls" if reply.tool_calls else "stop"


class Wire:
    """Base of the four encoders."""

    name = ""
    content_type = "text/event-stream; charset=utf-8"
    keepalive: bytes | None = None
    in_stream_error = b""
    malformed = b""

    def render(self, reply: Reply, model: str, body: Mapping[str, Any]) -> Rendered:
        raise NotImplementedError

    def error(self, kind: str, status: int, retry_after: float | None) -> tuple[
            dict[str, str], bytes]:
        raise NotImplementedError


# --- OpenAI Chat Completions ----------------------------------------------------------------

_OPENAI_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                  "content_filter": "content_filter"}
_OPENAI_ERRORS: dict[str, tuple[str, str | None, str | None, str | None]] = {
    # kind: (message, type, param, code)
    "rate_limited": ("Rate limit reached for requests per min (RPM). Please try again in 1s.",
                     "requests", None, "rate_limit_exceeded"),
    "server_error": ("The server had an error while processing your request. Sorry about that!",
                     "server_error", None, None),
    "unavailable": ("The engine is currently overloaded, please try again later.",
                    "server_error", None, None),
    "overloaded": ("Overloaded", "overloaded_error", None, None),
    "auth": ("Incorrect API key provided. You can find your API key at "
             "https://platform.openai.com/account/api-keys.",
             "invalid_request_error", None, "invalid_api_key"),
    "context_length": ("This model's maximum context length is 128000 tokens. However, your "
                       "messages resulted in 130517 tokens. Please reduce the length of the "
                       "messages.", "invalid_request_error", "messages",
                       "context_length_exceeded"),
    "content_filter": ("The response was filtered due to the prompt triggering Azure OpenAI's "
                       "content management policy.", None, "prompt", "content_filter"),
    "bad_request": ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead.", "invalid_request_error",
                    "max_tokens", "unsupported_parameter"),
    "not_found": ("The model does not exist or you do not have access to it.",
                  "invalid_request_error", None, "model_not_found"),
}


class OpenAIWire(Wire):
    name = "openai"
    keepalive = b": keep-alive\n\n"
    in_stream_error = (b'data: {"error":{"message":"The server had an error while processing '
                       b'your request. Sorry about that!","type":"server_error","param":null,'
                       b'"code":null}}\n\n')
    malformed = (b'data: {"id":"chatcmpl-loopback","object":"chat.completion.chunk",'
                 b'"choices":[{"index":0,"delta":{"content":"tru\n\n')

    def render(self, reply: Reply, model: str, body: Mapping[str, Any]) -> Rendered:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        created = int(time.time())
        rid = f"chatcmpl-loopback{time.monotonic_ns()}"

        def chunk(choices: list[Any], usage: Any = None) -> bytes:
            obj: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk",
                                   "created": created, "model": model,
                                   "system_fingerprint": "fp_loopback", "choices": choices}
            if include_usage:
                obj["usage"] = usage
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
            return chunk([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}])

        out = Rendered(head=[delta({"role": "assistant", "content": "", "refusal": None})])
        out.steps += [delta({"content": None, "reasoning_content": p}) for p in reply.reasoning]
        out.steps += [delta({"content": p}) for p in reply.text]
        for i, call in enumerate(reply.tool_calls):
            call_id = call.id or f"call_loopback_{i}"
            out.steps.append(delta({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                                    "function": {"name": call.name,
                                                                 "arguments": ""}}]}))
            for frag in split_args(orjson.dumps(call.arguments).decode()):
                out.steps.append(delta({"tool_calls": [{"index": i,
                                                        "function": {"arguments": frag}}]}))
        out.tail.append(delta({}, _OPENAI_FINISH[finish_of(reply)]))
        if include_usage and reply.send_usage:
            out.tail.append(chunk([], {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.total_output_tokens,
                "total_tokens": reply.input_tokens + reply.total_output_tokens,
                "prompt_tokens_details": {"cached_tokens": reply.cached_input_tokens,
                                          "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reply.total_reasoning_tokens,
                                              "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}))
        out.marker.append(b"data: [DONE]\n\n")
        return out

    def error(self, kind: str, status: int, retry_after: float | None) -> tuple[
            dict[str, str], bytes]:
        message, etype, param, code = _OPENAI_ERRORS[kind]
        body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
        payload = orjson.dumps(body, option=orjson.OPT_INDENT_2)
        return _retry_headers(retry_after, with_ms=True), payload


# --- Anthropic Messages -----------------------------------------------------------------------

_ANTHROPIC_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                     "content_filter": "refusal"}
_ANTHROPIC_ERRORS: dict[str, tuple[str, str]] = {
    "rate_limited": ("rate_limit_error", "Number of request tokens has exceeded your "
                     "per-minute rate limit. Please try again later."),
    "server_error": ("api_error", "Internal server error"),
    "unavailable": ("overloaded_error", "Overloaded"),
    "overloaded": ("overloaded_error", "Overloaded"),
    "auth": ("authentication_error", "invalid x-api-key"),
    "context_length": ("invalid_request_error", "prompt is too long: 208310 tokens > 200000 "
                       "maximum"),
    "content_filter": ("invalid_request_error", "Output blocked by content filtering policy"),
    "bad_request": ("invalid_request_error", "max_tokens: Field required"),
    "not_found": ("not_found_error", "model: claude-unknown"),
}


def _sse(event: str, obj: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class AnthropicWire(Wire):
    name = "anthropic"
    keepalive = b'event: ping\ndata: {"type": "ping"}\n\n'
    in_stream_error = (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                       b'"message":"Overloaded"}}\n\n')
    malformed = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                 b'"delta":{"type":"text_delta","text":"tru\n\n')

    def render(self, reply: Reply, model: str, body: Mapping[str, Any]) -> Rendered:
        usage = {"input_tokens": reply.input_tokens - reply.cached_input_tokens,
                 "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": reply.cached_input_tokens}
        start = {"type": "message_start", "message": {
            "id": f"msg_loopback{time.monotonic_ns()}", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1}}}
        out = Rendered(head=[_sse("message_start", start), self.keepalive or b""])
        index = -1
        pending = b""  # the previous block's closing events, sent with the next block's start

        def open_block(block: Mapping[str, Any]) -> bytes:
            nonlocal index, pending
            index += 1
            data = pending + _sse("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": block})
            pending = _sse("content_block_stop", {"type": "content_block_stop", "index": index})
            return data

        def delta(d: Mapping[str, Any]) -> bytes:
            return _sse("content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": d})

        for i, piece in enumerate(reply.reasoning):
            head = (open_block({"type": "thinking", "thinking": "", "signature": ""})
                    if i == 0 else b"")
            out.steps.append(head + delta({"type": "thinking_delta", "thinking": piece}))
        if reply.reasoning:
            pending = delta({"type": "signature_delta", "signature": "bG9vcGJhY2s="}) + pending
        for i, piece in enumerate(reply.text):
            head = open_block({"type": "text", "text": ""}) if i == 0 else b""
            out.steps.append(head + delta({"type": "text_delta", "text": piece}))
        for i, call in enumerate(reply.tool_calls):
            out.steps.append(open_block({"type": "tool_use", "id": call.id or f"toolu_loopback_{i}",
                                         "name": call.name, "input": {}})
                             + delta({"type": "input_json_delta", "partial_json": ""}))
            args = orjson.dumps(call.arguments).decode() if call.arguments else ""
            out.steps += [delta({"type": "input_json_delta", "partial_json": f})
                          for f in split_args(args) if f]
        final_usage = {**usage, "output_tokens": reply.total_output_tokens}
        out.tail.append(pending + _sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": _ANTHROPIC_FINISH[finish_of(reply)], "stop_sequence": None},
            "usage": final_usage if reply.send_usage else {"output_tokens": 0}}))
        out.marker.append(_sse("message_stop", {"type": "message_stop"}))
        return out

    def error(self, kind: str, status: int, retry_after: float | None) -> tuple[
            dict[str, str], bytes]:
        etype, message = _ANTHROPIC_ERRORS[kind]
        headers = _retry_headers(retry_after, with_ms=True)
        headers["request-id"] = "req_loopback"
        if kind in ("overloaded", "unavailable", "rate_limited", "server_error"):
            headers["x-should-retry"] = "true"
        body = {"type": "error", "error": {"type": etype, "message": message},
                "request_id": "req_loopback"}
        return headers, orjson.dumps(body)


# --- Ollama /api/chat ---------------------------------------------------------------------------

_OLLAMA_ERRORS = {
    "rate_limited": "too many requests, please try again later",
    "server_error": "llama runner process has terminated: exit status 2",
    "unavailable": "server busy, please try again.  maximum pending requests exceeded",
    "overloaded": "server busy, please try again.  maximum pending requests exceeded",
    "auth": "unauthorized",
    "context_length": "the input length exceeds the context length",
    "content_filter": "the request was blocked by the content filter",
    "bad_request": "invalid options: unknown_option",
    "not_found": "model 'unknown' not found",
}


class OllamaWire(Wire):
    name = "ollama"
    content_type = "application/x-ndjson"
    in_stream_error = b'{"error":"an error was encountered while running the model"}\n'
    malformed = (b'{"model":"loopback","created_at":"2026-01-01T00:00:00Z","message":'
                 b'{"role":"assistant","content":"tru\n')

    def render(self, reply: Reply, model: str, body: Mapping[str, Any]) -> Rendered:
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        def line(message: Mapping[str, Any]) -> bytes:
            return orjson.dumps({"model": model, "created_at": created,
                                 "message": message, "done": False}) + b"\n"

        out = Rendered()
        out.steps += [line({"role": "assistant", "content": "", "thinking": p})
                      for p in reply.reasoning]
        out.steps += [line({"role": "assistant", "content": p}) for p in reply.text]
        out.steps += [line({"role": "assistant", "content": "", "tool_calls": [
            {"id": c.id or f"call_loopback_{i}",
             "function": {"index": i, "name": c.name, "arguments": c.arguments}}]})
            for i, c in enumerate(reply.tool_calls)]
        finish = finish_of(reply)
        final: dict[str, Any] = {
            "model": model, "created_at": created,
            "message": {"role": "assistant", "content": ""}, "done": True,
            # Ollama reports `stop` for tool-call turns too.
            "done_reason": "length" if finish == "length" else "stop",
            "total_duration": 1_000_000, "load_duration": 100_000}
        if reply.send_usage:
            final.update(prompt_eval_count=reply.input_tokens, prompt_eval_duration=200_000,
                         eval_count=reply.total_output_tokens, eval_duration=700_000)
        out.marker.append(orjson.dumps(final) + b"\n")
        return out

    def error(self, kind: str, status: int, retry_after: float | None) -> tuple[
            dict[str, str], bytes]:
        return _retry_headers(retry_after, with_ms=False), orjson.dumps(
            {"error": _OLLAMA_ERRORS[kind]})


# --- Gemini streamGenerateContent --------------------------------------------------------------

_GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP",
                  "content_filter": "SAFETY"}
_GEMINI_ERRORS: dict[str, tuple[str, str]] = {
    "rate_limited": ("RESOURCE_EXHAUSTED",
                     "You exceeded your current quota, please check your plan."),
    "server_error": ("INTERNAL", "An internal error has occurred. Please retry or report in "
                     "https://developers.generativeai.google/guide/troubleshooting"),
    "unavailable": ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    "overloaded": ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    "auth": ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    "context_length": ("INVALID_ARGUMENT", "The input token count (1200000) exceeds the "
                       "maximum number of tokens allowed (1048576)."),
    # Gemini blocks prompts inside a 200 stream (promptFeedback); this is a stand-in.
    "content_filter": ("INVALID_ARGUMENT", "Request blocked by the content filter: SAFETY."),
    "bad_request": ("INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name "
                    "\"foo\": Cannot find field."),
    "not_found": ("NOT_FOUND", "models/unknown is not found for API version v1beta."),
}
# Gemini spaces its JSON as `{"a": 1,"b": 2}`.
_gemini_json: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ": "), ensure_ascii=False).encode


class GeminiWire(Wire):
    name = "gemini"
    content_type = "text/event-stream"
    in_stream_error = (b'{\n  "error": {\n    "code": 503,\n    "message": "The model is '
                       b'overloaded. Please try again later.",\n    "status": "UNAVAILABLE"\n'
                       b'  }\n}\n')
    malformed = b'data: {"candidates": [{"content": {"parts": [{"text": "tru\r\n\r\n'

    def render(self, reply: Reply, model: str, body: Mapping[str, Any]) -> Rendered:
        parts: list[dict[str, Any]] = [{"text": p, "thought": True} for p in reply.reasoning]
        parts += [{"text": p} for p in reply.text]
        parts += [{"functionCall": {"name": c.name, "args": dict(c.arguments)}}
                  for c in reply.tool_calls]
        thoughts = reply.total_reasoning_tokens
        answer = reply.total_output_tokens - thoughts
        n = max(1, len(parts))
        rid = f"loopback{time.monotonic_ns()}"

        def event(part: Mapping[str, Any], done: float, finish: str | None) -> bytes:
            candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
            if finish is not None:
                candidate["finishReason"] = finish
            candidate["index"] = 0
            obj: dict[str, Any] = {"candidates": [candidate]}
            if reply.send_usage:
                obj["usageMetadata"] = _gemini_usage(reply, math.ceil(answer * done), thoughts)
            obj["modelVersion"] = model
            obj["responseId"] = rid
            return b"data: " + _gemini_json(obj).encode() + b"\r\n\r\n"

        out = Rendered(steps=[event(p, (i + 1) / n, None) for i, p in enumerate(parts)])
        out.marker.append(event({"text": ""}, 1.0, _GEMINI_FINISH[finish_of(reply)]))
        return out

    def error(self, kind: str, status: int, retry_after: float | None) -> tuple[
            dict[str, str], bytes]:
        gstatus, message = _GEMINI_ERRORS[kind]
        details: list[dict[str, Any]] = []
        if retry_after is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{retry_after:g}s"})
        error: dict[str, Any] = {"code": status, "message": message, "status": gstatus}
        if details:
            error["details"] = details
        return {}, json.dumps({"error": error}, indent=2).encode()


def _gemini_usage(reply: Reply, answer: int, thoughts: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": reply.input_tokens,
                             "candidatesTokenCount": answer,
                             "totalTokenCount": reply.input_tokens + answer + thoughts}
    if reply.cached_input_tokens:
        usage["cachedContentTokenCount"] = reply.cached_input_tokens
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


WIRES: dict[str, Wire] = {w.name: w for w in (OpenAIWire(), AnthropicWire(), OllamaWire(),
                                              GeminiWire())}

