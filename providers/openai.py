"""OpenAI Chat Completions streaming, for OpenAI and every OpenAI-compatible endpoint
(Cerebras, DeepSeek, Groq, Together, vLLM, xAI, OpenRouter, Azure, Ollama's `/v1`).

Streaming reference: https://platform.openai.com/docs/api-reference/chat-streaming.
Vendors are rows of data (`vendors:` in config/catalog.yaml), never classes: the router
resolves `settings.base_url` (with `/v1`) and `settings.options` from the row.

Supported on the wire: `delta.content`; reasoning from `delta.reasoning_content` or
`delta.reasoning`; tool-call fragments joined by their `index` (parallel calls; ours are
numbered by first appearance); usage wherever the vendor puts it (the final `choices: []`
chunk, DeepSeek's finish chunk, Groq's `x_groq.usage`; the last one wins); Azure's
empty-choices prompt-filter chunk (no usage: skipped); `refusal` (text, finish
`content_filter`); `finish_reason` repeated (the last wins); `[DONE]`; an `error` object
inside a 200 stream (`data:` or `event: error`), raised as the mapped `ProviderError`
after any usage it carried is yielded.

Normalization: `input_tokens` = `prompt_tokens` (includes cached), `cached_input_tokens`
from `prompt_tokens_details.cached_tokens` or DeepSeek's `prompt_cache_hit_tokens`,
`output_tokens` includes reasoning (xAI reports `completion_tokens` without it: detected
from `total_tokens`, and added), `finish_reason` `stop` on a turn with tool calls is
`tool_calls`.

Terminal marker: `[DONE]` is required unless the answer is provably complete. A stream that
ends cleanly without it after a `finish_reason` AND a usage object (in the finish chunk or
after it) is complete: nothing can follow the usage chunk but `[DONE]`, so it ends normally
rather than being re-served (which would pay for the answer twice). Without the usage (or
without the finish reason) the end is a `protocol_error`: the usage chunk follows the
finish chunk, so we cannot know the answer or its usage is complete. A vendor that never
sends `[DONE]` sets the row option `done_marker: false`; its streams then end at a clean
EOF after a `finish_reason`.

Request: `response_format` is sent natively (routing sends it only to deployments with the
`structured_output` capability), and the sampling parameters routing allowed for the kind
(`providers.base.PROVIDER_PARAMS`: seed, top_p, penalties, user, parallel_tool_calls) as
they are named.

Not supported here: the Responses API (`/v1/responses`, `event: response.*`; that is kind
`openai_responses`, `providers/openai_responses.py`), legacy
`function_call`, `n > 1` (only choice 0 is read), audio and logprobs (refused at the edge).

Options (provider `options`, overridden by the deployment's):
    include_usage     bool  send `stream_options.include_usage` (default true)
    done_marker       bool  the vendor ends streams with `[DONE]` (default true)
    requires_key      bool  a missing key is an error (default: when `api_key_env` is set,
                            or for kind `openai`)
    auth_header       str   send the key in this header instead of `Authorization: Bearer`
                            (Azure OpenAI: `api-key`, with base_url
                            https://<resource>.openai.azure.com/openai/v1)
    max_tokens_field  str   `max_tokens` (default) or `max_completion_tokens`
    prefill           str   how a final assistant message is continued: unset (sent as
                            is), `prefix` (DeepSeek: `"prefix": true` on it) or
                            `continue_final_message` (vLLM body flags)
    extra_body        dict  merged into the body verbatim
    top_p, seed, reasoning_effort, reasoning_format, reasoning, response_format, user,
    parallel_tool_calls, service_tier, frequency_penalty, presence_penalty: copied into
    the body.
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
FINISH_REASONS: dict[str, ProviderFinish] = {
    "stop": "stop",
    "end_turn": "stop",
    "eos": "stop",
    "length": "length",
    "max_tokens": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
# Finish reasons that mean the provider gave up mid-answer (DeepSeek under load).
FAILED_FINISH = frozenset({"insufficient_system_resource", "error"})
BODY_OPTIONS = (
    "top_p", "seed", "reasoning_effort", "reasoning_format", "reasoning", "response_format",
    "user", "parallel_tool_calls", "service_tier", "frequency_penalty", "presence_penalty",
)
_BODY_OPTION_SET = frozenset(BODY_OPTIONS)
_DONE = "[DONE]"
_MALFORMED = (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, IndexError)


# --- errors -------------------------------------------------------------------------------


def _map_error(payload: Any, secrets: Sequence[str], host: str) -> ProviderError:
    """An `error` object inside a 200 stream; HTTP errors are mapped by `providers.http`."""
    return map_error_payload(payload, secrets=secrets, where=f"{host} stream error")


# --- request ------------------------------------------------------------------------------


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _build_request(request: ProviderRequest, options: Mapping[str, Any]) -> dict[str, Any]:
    """The Chat Completions body (pure). `options`: provider options merged with the
    deployment's (see the module docstring)."""
    messages: list[Any] = list(request.messages)
    if request.system:
        messages.insert(0, {"role": "system", "content": request.system})
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
    prefill = options.get("prefill")
    if prefill and messages and messages[-1].get("role") == "assistant":
        if prefill == "prefix":
            messages[-1] = {**messages[-1], "prefix": True}
        elif prefill == "continue_final_message":
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    if options.get("include_usage", True):
        body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body[str(options.get("max_tokens_field", "max_tokens"))] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}}
            for t in request.tools
        ]
        if request.tool_choice:
            body["tool_choice"] = _tool_choice(request.tool_choice)
    if not _BODY_OPTION_SET.isdisjoint(options):  # (most deployments set none)
        for key in BODY_OPTIONS:
            if key in options:
                body[key] = options[key]
    # Routing sent only parameters this kind lists (`PROVIDER_PARAMS`): our names are OpenAI's.
    body.update(request.params)
    if request.response_format is not None:
        body["response_format"] = dict(request.response_format)
    extra = options.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return body


# --- stream parsing -----------------------------------------------------------------------


class _State:
    """Per-stream parse state: vendor tool index -> ours, finish reason, flags."""

    __slots__ = ("done", "finish", "refused", "tool_args", "tools", "usage_after_finish")

    def __init__(self) -> None:
        self.tools: dict[int, int] = {}
        self.tool_args: list[bool] = []  # ours -> a non-empty arguments fragment was seen
        self.finish: str | None = None
        self.refused = False
        self.done = False
        self.usage_after_finish = False  # the answer and its usage are provably complete


def _usage(raw: Mapping[str, Any]) -> UsageDelta:
    prompt = raw.get("prompt_tokens") or 0
    completion = raw.get("completion_tokens") or 0
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or raw.get("prompt_cache_hit_tokens") or 0
    reasoning = (raw.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    total = raw.get("total_tokens")
    if reasoning and total is not None and total == prompt + completion + reasoning:
        completion += reasoning  # the vendor (xAI) counts reasoning outside completion
    return UsageDelta(prompt, completion, cached, reasoning)


def _tool_deltas(calls: Sequence[Mapping[str, Any]], state: _State, out: list[Delta]) -> None:
    for position, call in enumerate(calls):
        vendor = call.get("index", position)
        fn = call.get("function") or {}
        args = fn.get("arguments") or ""
        if not isinstance(args, str):  # a vendor that sends an object
            args = orjson.dumps(args).decode()
        ours = state.tools.get(vendor)
        if ours is None:
            ours = state.tools[vendor] = len(state.tool_args)
            state.tool_args.append(bool(args))
            out.append(ToolCallDelta(ours, call.get("id"), fn.get("name"), args))
        elif args:
            state.tool_args[ours] = True
            out.append(ToolCallDelta(ours, None, None, args))


def _parse_chunk(chunk: Mapping[str, Any], state: _State) -> list[Delta]:
    """One chunk -> its deltas, in wire order: reasoning, text, tool calls, usage."""
    out: list[Delta] = []
    choices = chunk.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if delta and len(delta) == 1 and (content := delta.get("content")):
            out.append(TextDelta(content))  # the usual chunk: text alone, nothing else to read
        elif delta:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                out.append(ReasoningDelta(reasoning))
            content = delta.get("content")
            if content:
                out.append(TextDelta(content))
            refusal = delta.get("refusal")
            if refusal:
                state.refused = True
                out.append(TextDelta(refusal))
            calls = delta.get("tool_calls")
            if calls:
                _tool_deltas(calls, state, out)
        finish = choice.get("finish_reason")
        if finish:
            state.finish = finish
    usage = chunk.get("usage")
    if usage is None:
        x_groq = chunk.get("x_groq")
        usage = x_groq.get("usage") if x_groq else None
    if usage:
        out.append(_usage(usage))
        state.usage_after_finish = state.finish is not None
    return out


def _finish(state: _State) -> list[Delta]:
    """The closing deltas: `{}` for calls that never got arguments, then the finish."""
    out: list[Delta] = [ToolCallDelta(i, None, None, "{}")
                        for i, seen in enumerate(state.tool_args) if not seen]
    reason = FINISH_REASONS.get(state.finish or "stop", "stop")
    if state.refused and reason == "stop":
        reason = "content_filter"
    elif state.tool_args and reason == "stop":
        reason = "tool_calls"
    out.append(FinishDelta(reason))
    return out


# --- the provider -------------------------------------------------------------------------


class OpenAIProvider(HTTPProvider):
    """Streams Chat Completions over one pooled `httpx.AsyncClient`."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None):
        super().__init__(settings, client)
        self._url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        self._host = httpx.URL(self._url).host or settings.name
        # With a key, the headers depend on the deployment's `auth_header` alone: built once
        # per value and handed out as is (nothing changes them; the pool merges a copy).
        self._keyed_headers: dict[object, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.settings.name!r}, url={self._url!r})"

    def _headers(self, options: Mapping[str, Any]) -> dict[str, str]:
        if self._secrets:
            auth = options.get("auth_header")  # Azure: `api-key: <key>` instead of Bearer
            headers = self._keyed_headers.get(auth)
            if headers is None:
                headers = self._keyed_headers[auth] = self._new_headers(options)
            return headers
        return self._new_headers(options)

    def _new_headers(self, options: Mapping[str, Any]) -> dict[str, str]:
        headers = {**self.settings.headers, "content-type": "application/json",
                   "accept": "text/event-stream"}
        if self._secrets:
            auth = options.get("auth_header")
            if auth:
                headers[str(auth)] = self._secrets[0]
            else:
                headers["authorization"] = f"Bearer {self._secrets[0]}"
        elif options.get("requires_key",
                         self.settings.api_key_env is not None or self.settings.kind == "openai"):
            env = self.settings.api_key_env or "OPENAI_API_KEY"
            raise ProviderError("auth", f"missing API key: set {env}", retryable=False)
        return headers

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        base, own = self.settings.options, request.options
        options = {**base, **own} if base and own else own or base  # read only
        headers = self._headers(options)
        content = orjson.dumps(_build_request(request, options), default=json_default)
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
                async for raw in chunks:
                    for sse in feed(raw):
                        if sse.data.startswith(_DONE):
                            state.done = True
                            break
                        chunk = loads(sse.data)
                        deltas = _parse_chunk(chunk, state)
                        for delta in deltas:
                            yield delta
                        if sse.event == "error" or chunk.get("error"):
                            raise _map_error(chunk, self._secrets, self._host)
                    if state.done:
                        break
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, during="body", secrets=self._secrets) from exc
            except _MALFORMED as exc:  # invalid JSON, or JSON of an unexpected shape
                raise ProviderError("protocol_error", f"{self._host}: malformed chunk "
                                    f"({type(exc).__name__})") from exc
            if state.done:
                await drain(chunks)
            elif not (state.finish and (options.get("done_marker", True) is False
                                        or state.usage_after_finish)):
                stray = error_in_text(decoder.leftover())  # JSON error instead of SSE
                if stray is not None:
                    raise _map_error(stray, self._secrets, self._host)
                raise ProviderError("protocol_error", f"{self._host}: stream ended without "
                                    "[DONE]")
            if state.finish in FAILED_FINISH:
                raise ProviderError("overloaded", f"{self._host}: generation stopped: "
                                    f"{state.finish}")
            for delta in _finish(state):
                yield delta
        finally:
            await response.aclose()

