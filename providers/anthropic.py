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
)
from providers.http import (
    HTTPProvider,
    drain,
    error_in_text,
    map_error_payload,
    map_transport_error,
    open_stream,
    parse_quota,
)
from providers.sse import SSEDecoder

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # the API requires max_tokens; the router normally sets it

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
BODY_OPTIONS = ("thinking", "top_p", "top_k", "metadata", "service_tier")
_MALFORMED = (orjson.JSONDecodeError, AttributeError, KeyError, TypeError)
_TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


# --- errors -------------------------------------------------------------------------------


def _map_error(payload: Any, secrets: Sequence[str]) -> ProviderError:
    """The in-stream `error` event; HTTP errors are mapped by `providers.http`."""
    return map_error_payload(payload, secrets=secrets, where="anthropic stream error")


# --- request ------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI-shaped content (str or parts) -> Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = part["image_url"]["url"] if isinstance(part["image_url"], Mapping) \
                else part["image_url"]
            if url.startswith("data:"):
                media, _, data = url[5:].partition(";base64,")
                source = {"type": "base64", "media_type": media, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
    return blocks


def _assistant_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = _user_blocks(_text_of(message.get("content")))
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        raw = fn.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            arguments = {}  # a malformed call from an earlier turn: send it without input
        blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""),
                       "input": arguments})
    return blocks


def _messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """OpenAI chat history -> (Anthropic messages, system texts found in the history).
    Tool results become `tool_result` blocks of a user turn; consecutive turns of one role
    are merged, so parallel tool results share one user message as the API requires."""
    out: list[dict[str, Any]] = []
    system: list[str] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(_text_of(message.get("content")))
            continue
        if role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [{
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text_of(message.get("content")),
            }]
        elif role == "assistant":
            blocks = _assistant_blocks(message)
        else:
            role = "user"
            blocks = _user_blocks(message.get("content"))
        if not blocks:  # the API rejects empty content
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if out and out[-1]["role"] == "assistant":  # a prefill: no trailing whitespace allowed
        last = out[-1]["content"]
        if last and last[-1]["type"] == "text":
            last[-1]["text"] = last[-1]["text"].rstrip()
            if not last[-1]["text"]:
                last.pop()
        if not last:
            out.pop()
    return out, system


def _build_request(
    request: ProviderRequest, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Messages API body for `request` (pure). `options`: provider-level extras."""
    messages, system = _messages(request.messages)
    if request.system:
        system.insert(0, request.system)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(s for s in system if s)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if request.tool_choice:
            body["tool_choice"] = _TOOL_CHOICE.get(
                request.tool_choice, {"type": "tool", "name": request.tool_choice}
            )
    merged = {**(options or {}), **request.options}
    for key in BODY_OPTIONS:
        if key in merged:
            body[key] = merged[key]
    return body


# --- stream parsing -----------------------------------------------------------------------


class _State:
    """Per-stream parse state: our tool indices, usage so far, stop reason, end seen."""

    __slots__ = ("cache_creation", "cache_read", "done", "error", "input", "output",
                 "stop_reason", "tool_args", "tools")

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
        if block.get("type") == "tool_use":
            index = len(state.tools)
            state.tools[event.get("index", index)] = index
            state.tool_args[index] = False
            # `input` here is always {} and must not be prepended to the fragments.
            return ToolCallDelta(index, block.get("id"), block.get("name"), "")
        if block.get("type") == "text" and block.get("text"):
            return TextDelta(block["text"])
        return None
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
        return state.usage(usage) if usage else None
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
        content = orjson.dumps(_build_request(request, self.settings.options),
                               default=_json_default)
        response = await open_stream(self._client, self._url, content=content, headers=headers,
                                     secrets=self._secrets)
        state = _State()
        decoder = SSEDecoder()
        feed = decoder.feed
        loads = orjson.loads
        chunks = response.aiter_bytes()
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
                raise ProviderError("protocol_error", "anthropic: stream ended without "
                                    "message_stop")
            await drain(chunks)
            yield _finish(state)
        finally:
            await response.aclose()

