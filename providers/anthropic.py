"""Anthropic Messages API, streaming (`POST /v1/messages`, `"stream": true`).

Streaming reference: https://docs.claude.com/en/api/messages-streaming (event flow
`message_start`, `content_block_start|delta|stop`, `message_delta`, `message_stop`, `ping`,
`error`). Text, thinking (`thinking_delta` -> reasoning; redacted thinking yields nothing),
tool use (`input_json_delta` fragments; a call whose fragments are all empty gets `{}`),
cumulative usage (`message_start`, then every `message_delta` overrides what it states),
cache read/creation tokens and the in-stream `error` event (e.g. `overloaded_error` after
HTTP 200) are supported. Unknown event, block and delta types are ignored, as the docs ask.

Usage is normalized: `input_tokens` = input + cache_read + cache_creation,
`cached_input_tokens` = cache_read; reasoning is not reported separately by Anthropic (it
is inside `output_tokens`). A UsageDelta is yielded at `message_start` (input known,
output provisional) and at each `message_delta`.

End of stream: `message_stop` is the terminal marker, but a stream that ends cleanly
without it (its last event lacking the blank line that dispatches it, as in the official
SDK's own fixtures) is complete when a `message_delta` already carried the stop reason
and usage: nothing but `message_stop` can follow it, and re-serving a complete answer
would pay for it twice. Without that `message_delta` the end is a `protocol_error`.

Structured output (`response_format`) is a forced tool, `json_answer`, whose input schema
is the requested one; its input fragments are streamed as text and the turn ends `stop`.
Sampling parameters: `top_p`, `top_k`, `user` (-> `metadata.user_id`),
`parallel_tool_calls: false` (-> `tool_choice.disable_parallel_tool_use`).

Not supported: thinking signatures and redacted-thinking blocks are not returned (so
thinking cannot be sent back in a later turn), citations, server tools (web search, code
execution) results, images in assistant turns, the Batch and Files APIs. A final assistant
message is a prefill that the model continues; its trailing whitespace is removed
because the API rejects it.

Settings: `base_url` defaults to https://api.anthropic.com (with or without `/v1`).
Options honored (provider `options`, overridden by the deployment's): `thinking`,
`top_p`, `top_k`, `metadata`, `service_tier` (copied into the body), `anthropic_beta`
(str or list -> `anthropic-beta` header) and `anthropic_version`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from providers.anthropic_request import ANSWER_TOOL, build_request
from providers.base import (
    Delta,
    FinishDelta,
    ProviderError,
    ProviderFinish,
    ProviderRequest,
    ProviderSettings,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
    json_default,
)
from providers.headers import parse_quota
from providers.http import (
    HTTPProvider,
    body_chunks,
    drain,
    error_in_text,
    map_error_payload,
    map_transport_error,
    open_stream,
)
from providers.sse import SSEDecoder

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

FINISH_REASONS: dict[str, ProviderFinish] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "compaction": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_MALFORMED = (orjson.JSONDecodeError, AttributeError, KeyError, TypeError)


# --- errors -------------------------------------------------------------------------------


def _map_error(payload: Any, secrets: Sequence[str]) -> ProviderError:
    """The in-stream `error` event; HTTP errors are mapped by `providers.http`."""
    return map_error_payload(payload, secrets=secrets, where="anthropic stream error")


# --- stream parsing -----------------------------------------------------------------------


class _State:
    """Per-stream parse state: our tool indices, usage so far, stop reason, end seen."""

    __slots__ = ("answer_block", "answer_seen", "cache_creation", "cache_read", "done",
                 "error", "final_usage", "input", "output", "stop_reason", "tool_args",
                 "tools")

    def __init__(self) -> None:
        self.tools: dict[int, int] = {}  # Anthropic block index -> our tool-call index
        self.tool_args: dict[int, bool] = {}  # our index -> a non-empty fragment was seen
        self.input = 0
        self.output = 0
        self.cache_read = 0
        self.cache_creation = 0
        self.stop_reason: str | None = None
        self.done = False  # message_stop or error: stop reading
        self.error: Mapping[str, Any] | None = None  # the in-stream `error` event
        self.final_usage = False  # a message_delta carried the stop reason and usage
        self.answer_block: int | None = None  # the block index of the ANSWER_TOOL call
        self.answer_seen = False  # it had input

    def usage(self, raw: Mapping[str, Any]) -> UsageDelta:
        """Override with every non-null count in `raw` (message_delta is cumulative)."""
        value = raw.get("input_tokens")
        if value is not None:
            self.input = value
        value = raw.get("output_tokens")
        if value is not None:
            self.output = value
        value = raw.get("cache_read_input_tokens")
        if value is not None:
            self.cache_read = value
        value = raw.get("cache_creation_input_tokens")
        if value is not None:
            self.cache_creation = value
        return UsageDelta(self.input + self.cache_read + self.cache_creation, self.output,
                          self.cache_read, 0)


def _block_edge(kind: str, event: Mapping[str, Any], state: _State) -> Delta | None:
    """`content_block_start` / `content_block_stop`: tool calls open and close here."""
    if kind == "content_block_start":
        block = event.get("content_block") or {}
        if block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL:
            state.answer_block = event.get("index", -1)
            return None
        if block.get("type") == "tool_use":
            index = len(state.tools)
            state.tools[event.get("index", index)] = index
            state.tool_args[index] = False
            # `input` here is always {} and must not be prepended to the fragments.
            return ToolCallDelta(index, block.get("id"), block.get("name"), "")
        if block.get("type") == "text" and block.get("text"):
            return TextDelta(block["text"])
        return None
    if event.get("index", -1) == state.answer_block and not state.answer_seen:
        state.answer_seen = True
        return TextDelta("{}")
    ours = state.tools.get(event.get("index", -1))
    if ours is not None and not state.tool_args[ours]:
        state.tool_args[ours] = True
        return ToolCallDelta(ours, None, None, "{}")  # no input at all: no arguments
    return None


def _parse_event(event: Mapping[str, Any], state: _State) -> Delta | None:
    """One decoded event -> at most one delta (pure but for `state`)."""
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event["delta"]
        dtype = delta.get("type")
        if dtype == "text_delta":
            text = delta.get("text")
            return TextDelta(text) if text else None
        if dtype == "input_json_delta":
            fragment = delta.get("partial_json")
            if event.get("index", -1) == state.answer_block:
                state.answer_seen = state.answer_seen or bool(fragment)
                return TextDelta(fragment) if fragment else None
            index = state.tools.get(event.get("index", -1))
            if not fragment or index is None:
                return None
            state.tool_args[index] = True
            return ToolCallDelta(index, None, None, fragment)
        if dtype == "thinking_delta":
            text = delta.get("thinking")
            return ReasoningDelta(text) if text else None
        return None  # signature_delta, citations_delta, compaction_delta, future types
    if kind == "content_block_start" or kind == "content_block_stop":
        return _block_edge(kind, event, state)
    if kind == "message_delta":
        stop = (event.get("delta") or {}).get("stop_reason")
        if stop is not None:
            state.stop_reason = stop
        usage = event.get("usage")
        if not usage:
            return None
        state.final_usage = state.stop_reason is not None
        return state.usage(usage)
    if kind == "message_start":
        usage = (event.get("message") or {}).get("usage")
        return state.usage(usage) if usage else None
    if kind == "message_stop":
        state.done = True
    elif kind == "error":
        state.done = True
        state.error = event
    return None  # ping and unknown events


def _finish(state: _State) -> FinishDelta:
    if state.answer_block is not None and not state.tools:
        return FinishDelta("stop")  # the forced answer tool ended the turn: a text answer
    return FinishDelta(FINISH_REASONS.get(state.stop_reason or "end_turn", "stop"))


# --- the provider -------------------------------------------------------------------------


class AnthropicProvider(HTTPProvider):
    """Streams the Messages API over one pooled `httpx.AsyncClient`."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None):
        super().__init__(settings, client)
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.settings.name!r}, url={self._url!r})"

    def _headers(self, options: Mapping[str, Any]) -> dict[str, str]:
        if not self._secrets:
            env = self.settings.api_key_env or "ANTHROPIC_API_KEY"
            raise ProviderError("auth", f"missing API key: set {env}", retryable=False)
        headers = {
            **self.settings.headers,
            "x-api-key": self._secrets[0],
            "anthropic-version": str(options.get("anthropic_version", API_VERSION)),
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        beta = options.get("anthropic_beta")
        if beta:
            headers["anthropic-beta"] = beta if isinstance(beta, str) else ",".join(beta)
        return headers

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        options = {**self.settings.options, **request.options}
        headers = self._headers(options)
        content = orjson.dumps(build_request(request, self.settings.options),
                               default=json_default)
        response = await open_stream(self._client, self._url, content=content, headers=headers,
                                     secrets=self._secrets)
        state = _State()
        decoder = SSEDecoder()
        feed = decoder.feed
        loads = orjson.loads
        chunks = body_chunks(response)
        quota = parse_quota(response.headers)
        try:
            if quota is not None:  # routing spends the announced headroom deliberately
                yield quota
            try:
                async for chunk in chunks:
                    for sse in feed(chunk):
                        delta = _parse_event(loads(sse.data), state)
                        if delta is not None:
                            yield delta
                        if state.done:
                            break
                    if state.done:
                        break
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, during="body", secrets=self._secrets) from exc
            except _MALFORMED as exc:  # invalid JSON, or JSON of an unexpected shape
                raise ProviderError("protocol_error", f"anthropic: malformed event "
                                    f"({type(exc).__name__})") from exc
            if state.error is not None:
                raise _map_error(state.error, self._secrets)
            if not state.done:
                stray = error_in_text(decoder.leftover())  # JSON error instead of SSE
                if stray is not None:
                    raise _map_error(stray, self._secrets)
                if not state.final_usage:
                        raise ProviderError("protocol_error", "anthropic: stream ended without "
                                        "message_stop")
            await drain(chunks)
            yield _finish(state)
        finally:
            await response.aclose()

