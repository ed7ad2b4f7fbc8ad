"""OpenAI Responses API streaming (`POST {base_url}/responses`, `"stream": true`), for
models offered only there (and OpenAI-compatible servers that expose it).

Streaming reference: https://platform.openai.com/docs/api-reference/responses-streaming.
Named SSE events (`event: response.output_text.delta`), each a JSON object with the same
`type`; no `[DONE]`: a stream ends after `response.completed`, `response.incomplete` or
`response.failed`. A stream that ends without one of them is a `protocol_error`.

Supported on the wire: `response.output_text.delta` (text), `response.refusal.delta` (text,
finish `content_filter`), `response.reasoning_text.delta` and
`response.reasoning_summary_text.delta` (reasoning), function-call items
(`response.output_item.added` with `call_id` and `name`, then
`response.function_call_arguments.delta`, keyed by `item_id`; arguments that arrive only in
`.done` or in the finished item are sent whole), usage from the terminal event's
`response.usage`, `incomplete_details.reason` (`max_output_tokens` -> `length`,
`content_filter`), and errors: the `error` event (flat `code`/`message`, or nested
`error`) and `response.failed` (`response.error`). Every other event is ignored, as the
docs ask.

Normalization: `input_tokens` includes `input_tokens_details.cached_tokens`,
`output_tokens` includes `output_tokens_details.reasoning_tokens` (as OpenAI reports them).
Requests go out with `store: false`: the conversation is sent whole each turn, so nothing
needs to be kept server-side.

Not supported: hosted tools (web search, file search, code interpreter…), `previous_response_id`
and conversations, encrypted reasoning items sent back, audio, logprobs.

Options (provider `options`, overridden by the deployment's): `reasoning`, `text`, `top_p`,
`user`, `service_tier`, `parallel_tool_calls`, `truncation`, `include`, `prompt_cache_key`,
`safety_identifier`, `metadata` are copied into the body; `extra_body` is merged verbatim;
`requires_key: false` for a local server that needs no key. Without `base_url` and key the
provider uses the catalog's `openai` vendor row (its base URL, `OPENAI_API_KEY`).
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

DEFAULT_BASE_URL = "https://api.openai.com/v1"
INCOMPLETE_REASONS: dict[str, ProviderFinish] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}
BODY_OPTIONS = (
    "reasoning", "text", "top_p", "user", "service_tier", "parallel_tool_calls", "truncation",
    "include", "prompt_cache_key", "safety_identifier", "metadata",
)
_TERMINAL = frozenset({"response.completed", "response.incomplete"})
_TEXT_EVENTS = frozenset({"response.output_text.delta", "response.refusal.delta"})
_REASONING_EVENTS = frozenset({"response.reasoning_text.delta",
                               "response.reasoning_summary_text.delta"})
_MALFORMED = (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, IndexError)


# --- errors -------------------------------------------------------------------------------


def _map_error(event: Mapping[str, Any], secrets: Sequence[str], host: str) -> ProviderError:
    """An `error` event (flat, or with a nested `error`) or `response.failed`."""
    if event.get("type") == "response.failed":
        error = (event.get("response") or {}).get("error") or {}
    else:
        error = event.get("error") or {k: event.get(k) for k in ("code", "message", "type")}
    return map_error_payload({"error": error}, secrets=secrets, where=f"{host} stream error")


# --- request ------------------------------------------------------------------------------


def _content(content: Any, role: str) -> Any:
    """Chat content (a string or parts) as Responses content parts."""
    if isinstance(content, str) or content is None:
        return content or ""
    text_type = "output_text" if role == "assistant" else "input_text"
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": text_type, "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url") or {}
            url = image.get("url") if isinstance(image, Mapping) else image
            parts.append({"type": "input_image", "image_url": url,
                          "detail": (image.get("detail") if isinstance(image, Mapping)
                                     else None) or "auto"})
    return parts


def _input_items(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Responses input items (tool calls and results included)."""
    items: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            output = m.get("content")
            items.append({"type": "function_call_output", "call_id": m.get("tool_call_id"),
                          "output": output if isinstance(output, str)
                          else orjson.dumps(output).decode()})
            continue
        content = m.get("content")
        if content:
            items.append({"role": role, "content": _content(content, str(role))})
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            args = fn.get("arguments") or "{}"
            items.append({"type": "function_call", "call_id": call.get("id"),
                          "name": fn.get("name"),
                          "arguments": args if isinstance(args, str)
                          else orjson.dumps(args).decode()})
    return items


def _build_request(request: ProviderRequest, options: Mapping[str, Any]) -> dict[str, Any]:
    """The Responses API body (pure)."""
    body: dict[str, Any] = {"model": request.model, "input": _input_items(request.messages),
                            "stream": True, "store": False}
    if request.system:
        body["instructions"] = request.system
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                          "parameters": t.parameters} for t in request.tools]
        choice = request.tool_choice
        if choice:
            body["tool_choice"] = choice if choice in ("auto", "none", "required") else {
                "type": "function", "name": choice}
    for key in BODY_OPTIONS:
        if key in options:
            body[key] = options[key]
    body.update(request.params)  # top_p, user, parallel_tool_calls: the same names here
    fmt = request.response_format
    if fmt is not None:  # the Chat Completions shape, flattened into `text.format`
        spec = fmt.get("json_schema")
        body["text"] = {"format": {"type": "json_schema", **spec} if spec else dict(fmt)}
    extra = options.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return body


# --- stream parsing -----------------------------------------------------------------------


class _State:
    """Per-stream parse state: function-call item -> our tool index, flags, the end."""

    __slots__ = ("calls", "finish", "refused", "streamed_args", "terminal")

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # item id (or output index) -> ours
        self.streamed_args: list[bool] = []  # ours -> argument fragments were sent
        self.refused = False
        self.finish: ProviderFinish = "stop"
        self.terminal = False


def _usage(raw: Mapping[str, Any]) -> UsageDelta:
    cached = (raw.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (raw.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return UsageDelta(raw.get("input_tokens") or 0, raw.get("output_tokens") or 0, cached,
                      reasoning)


def _call_key(event: Mapping[str, Any]) -> str:
    item_id = event.get("item_id") or (event.get("item") or {}).get("id")
    return str(item_id) if item_id else f"#{event.get('output_index')}"


def _call_deltas(kind: str, event: Mapping[str, Any], state: _State) -> list[Delta]:
    if kind == "response.output_item.added":
        item = event.get("item") or {}
        if item.get("type") != "function_call":
            return []
        ours = state.calls[_call_key(event)] = len(state.streamed_args)
        args = item.get("arguments") or ""
        state.streamed_args.append(bool(args))
        return [ToolCallDelta(ours, item.get("call_id"), item.get("name"), args)]
    ours_or_none = state.calls.get(_call_key(event))
    if ours_or_none is None:
        return []
    ours = ours_or_none
    if kind == "response.function_call_arguments.delta":
        delta = event.get("delta") or ""
        if not delta:
            return []
        state.streamed_args[ours] = True
        return [ToolCallDelta(ours, None, None, delta)]
    # `.arguments.done` or the finished item: the whole arguments, if none were streamed.
    args = event.get("arguments")
    if args is None:
        args = (event.get("item") or {}).get("arguments")
    if state.streamed_args[ours] or not args:
        return []
    state.streamed_args[ours] = True
    return [ToolCallDelta(ours, None, None, args)]


def _end(event: Mapping[str, Any], state: _State) -> list[Delta]:
    response = event.get("response") or {}
    state.terminal = True
    if event.get("type") == "response.incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        state.finish = INCOMPLETE_REASONS.get(str(reason), "length")
    usage = response.get("usage")
    return [_usage(usage)] if usage else []


def _parse_event(event: Mapping[str, Any], state: _State) -> list[Delta]:
    """One event -> its deltas. Errors are raised by the caller."""
    kind = event.get("type")
    if kind in _TEXT_EVENTS:
        if kind == "response.refusal.delta":
            state.refused = True
        delta = event.get("delta")
        return [TextDelta(delta)] if delta else []
    if kind in _REASONING_EVENTS:
        delta = event.get("delta")
        return [ReasoningDelta(delta)] if delta else []
    if kind in ("response.output_item.added", "response.function_call_arguments.delta",
                "response.function_call_arguments.done", "response.output_item.done"):
        return _call_deltas(str(kind), event, state)
    if kind in _TERMINAL:
        return _end(event, state)
    return []


def _finish(state: _State) -> list[Delta]:
    """The closing deltas: `{}` for calls that never got arguments, then the finish."""
    out: list[Delta] = [ToolCallDelta(i, None, None, "{}")
                        for i, seen in enumerate(state.streamed_args) if not seen]
    reason = state.finish
    if state.refused and reason == "stop":
        reason = "content_filter"
    elif state.streamed_args and reason == "stop":
        reason = "tool_calls"
    out.append(FinishDelta(reason))
    return out


# --- the provider -------------------------------------------------------------------------


class OpenAIResponsesProvider(HTTPProvider):
    """Streams the Responses API over one pooled `httpx.AsyncClient`."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None):
        super().__init__(settings, client)
        self._url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/") + "/responses"
        self._host = httpx.URL(self._url).host or settings.name

    def __repr__(self) -> str:
        return f"OpenAIResponsesProvider(name={self.settings.name!r}, url={self._url!r})"

    def _headers(self, options: Mapping[str, Any]) -> dict[str, str]:
        headers = {**self.settings.headers, "content-type": "application/json",
                   "accept": "text/event-stream"}
        if self._secrets:
            headers["authorization"] = f"Bearer {self._secrets[0]}"
        elif options.get("requires_key", True):  # a local server may set it false
            env = self.settings.api_key_env or "OPENAI_API_KEY"
            raise ProviderError("auth", f"missing API key: set {env}", retryable=False)
        return headers

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        options = {**self.settings.options, **request.options}
        headers = self._headers(options)
        content = orjson.dumps(_build_request(request, options), default=json_default)
        response = await open_stream(self._client, self._url, content=content, headers=headers,
                                     secrets=self._secrets)
        state = _State()
        decoder = SSEDecoder()
        chunks = body_chunks(response)
        quota = parse_quota(response.headers)
        try:
            if quota is not None:  # routing spends the announced headroom deliberately
                yield quota
            try:
                async for raw in chunks:
                    for sse in decoder.feed(raw):
                        event = orjson.loads(sse.data)
                        kind = event.get("type")
                        if kind in ("error", "response.failed") or sse.event == "error":
                            raise _map_error(event, self._secrets, self._host)
                        for delta in _parse_event(event, state):
                            yield delta
                        if state.terminal:
                            break
                    if state.terminal:
                        break
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, during="body", secrets=self._secrets) from exc
            except _MALFORMED as exc:  # invalid JSON, or JSON of an unexpected shape
                raise ProviderError("protocol_error", f"{self._host}: malformed event "
                                    f"({type(exc).__name__})") from exc
            if not state.terminal:
                stray = error_in_text(decoder.leftover())  # JSON error instead of SSE
                if stray is not None:
                    raise map_error_payload(stray, secrets=self._secrets,
                                            where=f"{self._host} stream error")
                raise ProviderError("protocol_error", f"{self._host}: stream ended without "
                                    "response.completed")
            await drain(chunks)
            for delta in _finish(state):
                yield delta
        finally:
            await response.aclose()
