"""Google Gemini API, streaming (`POST {base}/v1beta/models/{model}:streamGenerateContent
?alt=sse`).

Reference: https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
Each SSE event (CRLF-framed, no `event:` lines, no `[DONE]`) is one `GenerateContentResponse`.

Supported: text parts; `thought: true` parts as reasoning; `functionCall` parts (arguments
arrive as objects, complete in one part: serialized once into `ToolCallDelta.arguments`;
the optional `id` is passed on); `finishReason` (`STOP` on a turn with function calls is
`tool_calls`; `MAX_TOKENS` is `length`; the safety family is `content_filter`;
`MALFORMED_FUNCTION_CALL`/`UNEXPECTED_TOOL_CALL` raise `provider_error`); a prompt blocked by
`promptFeedback.blockReason` finishes as `content_filter`; the cumulative `usageMetadata`
(the last snapshot is yielded once at the end: input = `promptTokenCount`, which includes
`cachedContentTokenCount`; output = `candidatesTokenCount` + `thoughtsTokenCount`;
reasoning = `thoughtsTokenCount`). Errors: HTTP errors with the retry delay of a 429 from
the body's `google.rpc.RetryInfo`; an invalid key (HTTP 400 "API key not valid") is `auth`;
an `error` object in an event, or a raw JSON error body after the events (no `data:`
prefix, as Gemini was seen to send), raises the mapped `ProviderError` even after a
`finishReason`. Gemini has no terminal marker: the stream is complete when the body ends
cleanly after a chunk with a `finishReason`; otherwise it is a `protocol_error`.

Not supported: candidates other than the first, `executableCode`/`codeExecutionResult`,
`inlineData` output, grounding and citation metadata, the non-SSE JSON-array stream, and
thought signatures (not kept, so they cannot be echoed: function calls from earlier turns
are sent with Google's documented placeholder signature, which skips validation). Remote
image URLs are not fetched (only `data:` URLs are sent, as `inlineData`). A final assistant
message is sent as a model turn; Gemini does not promise to continue it (no prefill).

Authentication: `x-goog-api-key` header. A missing key raises `auth` before any call.

Options (provider `options`, overridden by the deployment's): `thinking_config` (e.g.
`{"includeThoughts": true}`), `safety_settings`, `top_p`, `top_k`, `seed`, and
`generation_config` (merged into `generationConfig` verbatim).

Structured output: `response_format` -> `generationConfig.responseMimeType:
application/json` with the schema as `responseJsonSchema`; sampling parameters seed, top_p,
top_k and the penalties -> their `generationConfig` fields.
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
    content_text,
)
from providers.http import (
    HTTPProvider,
    body_chunks,
    drain,
    map_error_payload,
    map_transport_error,
    open_stream,
)
from providers.sse import SSEDecoder, SSEEvent

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_KEY_ENV = "GEMINI_API_KEY"
FINISH_REASONS: dict[str, ProviderFinish] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}
FAILED_FINISH = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"})
# Google's documented placeholder for function calls whose signature was not kept.
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_GENERATION_OPTIONS = {"top_p": "topP", "top_k": "topK", "seed": "seed"}
# Our sampling parameter names (`PROVIDER_PARAMS["gemini"]`) -> generationConfig fields.
_SAMPLING = {"top_p": "topP", "top_k": "topK", "seed": "seed",
             "frequency_penalty": "frequencyPenalty", "presence_penalty": "presencePenalty"}


# --- errors -------------------------------------------------------------------------------


def _map_error(error: ProviderError) -> ProviderError:
    """Refine the shared mapping: Gemini answers an invalid key with HTTP 400
    INVALID_ARGUMENT ("API key not valid"), which is an auth failure, not a bad request."""
    if error.code == "bad_request" and "api key" in error.message.lower():
        return ProviderError("auth", error.message, status=error.status, retryable=False)
    return error


def _payload_error(payload: Any, secrets: Sequence[str]) -> ProviderError:
    return _map_error(map_error_payload(payload, secrets=secrets, where="gemini stream error"))


# --- request ------------------------------------------------------------------------------



def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text":
            parts.append({"text": part.get("text", "")})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url", "") if isinstance(ref, Mapping) else str(ref or "")
            if url.startswith("data:") and ";base64," in url:
                mime, _, data = url[5:].partition(";base64,")
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
    return parts


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except orjson.JSONDecodeError:
        value = {}  # a malformed call from an earlier turn: send it without arguments
    return value if isinstance(value, dict) else {}


def _tool_result(content: Any) -> dict[str, Any]:
    """`functionResponse.response` must be an object: JSON objects pass as they are."""
    text = content_text(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _contents(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """OpenAI chat history -> (Gemini contents, system texts found in the history).
    Tool results become `functionResponse` parts of a user turn; consecutive turns of one
    role are merged, so parallel results share one turn."""
    out: list[dict[str, Any]] = []
    system: list[str] = []
    names: dict[str, str] = {}
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(content_text(message.get("content")))
            continue
        if role == "assistant":
            role, parts = "model", _user_parts(content_text(message.get("content")))
            for call in message.get("tool_calls") or ():
                fn = call.get("function", {})
                names[call.get("id", "")] = fn.get("name", "")
                parts.append({"functionCall": {"name": fn.get("name", ""),
                                               "args": _arguments(fn.get("arguments"))},
                              "thoughtSignature": call.get("thought_signature")
                              or PLACEHOLDER_SIGNATURE})
        elif role == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id", ""), "")
            role, parts = "user", [{"functionResponse": {
                "name": name, "response": _tool_result(message.get("content"))}}]
        else:
            role, parts = "user", _user_parts(message.get("content"))
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        elif parts:
            out.append({"role": role, "parts": parts})
    return out, system


def _build_request(request: ProviderRequest, options: Mapping[str, Any]) -> dict[str, Any]:
    """The `streamGenerateContent` body for `request` (pure). `options`: provider +
    request options."""
    contents, system = _contents(request.messages)
    if request.system:
        system.insert(0, request.system)
    body: dict[str, Any] = {"contents": contents}
    if any(system):
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(s for s in system if s)}]}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [
            {"name": t.name, "description": t.description,
             "parametersJsonSchema": dict(t.parameters)} for t in request.tools]}]
        if request.tool_choice:
            mode = _TOOL_MODES.get(request.tool_choice)
            config: dict[str, Any] = {"mode": mode or "ANY"}
            if mode is None:
                config["allowedFunctionNames"] = [request.tool_choice]
            body["toolConfig"] = {"functionCallingConfig": config}
    generation: dict[str, Any] = {}
    if request.max_tokens is not None:
        generation["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.stop:
        generation["stopSequences"] = list(request.stop)
    for key, name in _GENERATION_OPTIONS.items():
        if key in options:
            generation[name] = options[key]
    for key, value in request.params.items():  # routing sent only what this kind lists
        if key in _SAMPLING:
            generation[_SAMPLING[key]] = value
    fmt = request.response_format
    if fmt is not None:
        generation["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            generation["responseJsonSchema"] = dict(schema)
    if "thinking_config" in options:
        generation["thinkingConfig"] = dict(options["thinking_config"])
    generation.update(options.get("generation_config") or {})
    if generation:
        body["generationConfig"] = generation
    if "safety_settings" in options:
        body["safetySettings"] = list(options["safety_settings"])
    return body


# --- stream parsing -----------------------------------------------------------------------


class _State:
    """Per-stream parse state: tool calls seen, the last usage snapshot, the finish."""

    __slots__ = ("finish", "tools", "usage")

    def __init__(self) -> None:
        self.tools = 0
        self.usage: Mapping[str, Any] | None = None
        self.finish: str | None = None


def _parse_event(event: Mapping[str, Any], state: _State, out: list[Delta]) -> None:
    """One `GenerateContentResponse` -> deltas appended to `out` (pure but for `state`)."""
    usage = event.get("usageMetadata")
    if usage is not None:
        state.usage = usage  # cumulative: the last one wins
    candidates = event.get("candidates")
    if not candidates:
        blocked = (event.get("promptFeedback") or {}).get("blockReason")
        if blocked:
            state.finish = "SAFETY"
        return
    candidate = candidates[0]
    content = candidate.get("content")
    if content:
        for part in content.get("parts") or ():
            text = part.get("text")
            if text:
                out.append(ReasoningDelta(text) if part.get("thought") else TextDelta(text))
                continue
            call = part.get("functionCall")
            if call is not None:
                args = call.get("args")
                out.append(ToolCallDelta(state.tools, call.get("id"), call.get("name"),
                                         orjson.dumps(args if args is not None else {}).decode()))
                state.tools += 1
    finish = candidate.get("finishReason")
    if finish is not None:
        state.finish = finish


def _usage(raw: Mapping[str, Any]) -> UsageDelta:
    thoughts = raw.get("thoughtsTokenCount") or 0
    return UsageDelta(input_tokens=raw.get("promptTokenCount") or 0,
                      output_tokens=(raw.get("candidatesTokenCount") or 0) + thoughts,
                      cached_input_tokens=raw.get("cachedContentTokenCount") or 0,
                      reasoning_tokens=thoughts)


def _finish(state: _State) -> FinishDelta:
    if state.finish in FAILED_FINISH:
        raise ProviderError("provider_error", f"gemini: finishReason {state.finish}")
    reason = FINISH_REASONS.get(state.finish or "STOP", "stop")
    if reason == "stop" and state.tools:
        reason = "tool_calls"  # Gemini reports STOP on function-call turns
    return FinishDelta(reason)


def _trailing_error(stray: Sequence[bytes], secrets: Sequence[str]) -> ProviderError | None:
    """A raw JSON error body after the events: lines an SSE parser ignores."""
    text = b"\n".join(stray).strip()
    if not text.startswith(b"{"):
        return None
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ProviderError("protocol_error", "gemini: unparsable data after the events")
    if isinstance(payload, dict) and "error" in payload:
        return _payload_error(payload, secrets)
    return None


# --- the provider -------------------------------------------------------------------------


class GeminiProvider(HTTPProvider):
    """Streams `streamGenerateContent?alt=sse` over one pooled `httpx.AsyncClient`."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None):
        super().__init__(settings, client)
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._base = base if base.endswith(("/v1beta", "/v1")) else base + "/v1beta"

    def __repr__(self) -> str:
        return f"GeminiProvider(name={self.settings.name!r}, base={self._base!r})"

    def _url(self, model: str) -> str:
        model = model.removeprefix("models/")
        return f"{self._base}/models/{model}:streamGenerateContent?alt=sse"

    def _headers(self) -> dict[str, str]:
        if not self._secrets:
            env = self.settings.api_key_env or DEFAULT_KEY_ENV
            raise ProviderError("auth", f"missing API key: set {env}", retryable=False)
        return {**self.settings.headers, "x-goog-api-key": self._secrets[0],
                "content-type": "application/json", "accept": "text/event-stream"}

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        headers = self._headers()
        options = {**self.settings.options, **request.options}
        content = orjson.dumps(_build_request(request, options))
        try:
            response = await open_stream(self._client, self._url(request.model),
                                         content=content, headers=headers,
                                         secrets=self._secrets)
        except ProviderError as exc:
            raise _map_error(exc) from exc
        state = _State()
        decoder = SSEDecoder()
        feed = decoder.feed
        out: list[Delta] = []
        chunks = body_chunks(response)
        try:
            try:
                async for chunk in chunks:
                    error = self._parse(feed(chunk), state, out)
                    if out:
                        for delta in out:
                            yield delta
                        out.clear()
                    if error is not None:
                        raise error
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, during="body", secrets=self._secrets) from exc
            error = _trailing_error(decoder.stray, self._secrets)
            if error is not None:
                raise error
            if state.finish is None:
                raise ProviderError("protocol_error", "gemini: stream ended without a "
                                    "finishReason")
            await drain(chunks)
            if state.usage is not None:
                yield _usage(state.usage)
            yield _finish(state)
        finally:
            await response.aclose()

    def _parse(self, events: list[SSEEvent], state: _State,
               out: list[Delta]) -> ProviderError | None:
        """Parse events into `out`; an error is returned, not raised, so that the deltas
        of the events before it are still delivered."""
        for sse in events:
            try:
                event = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                return ProviderError("protocol_error", "gemini: malformed JSON in event")
            if type(event) is not dict:
                return ProviderError("protocol_error", "gemini: an event is not a JSON object")
            if "error" in event:
                return _payload_error(event, self._secrets)
            _parse_event(event, state, out)
        return None

