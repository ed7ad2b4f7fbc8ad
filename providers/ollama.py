"""Ollama native chat API, streaming (`POST {base}/api/chat`, NDJSON).

Reference: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
and docs/api/errors.mdx ("Errors that occur while streaming"). One JSON object per
`\\n`-terminated line (the last line may lack its `\\n`); a network read may end anywhere,
also inside a UTF-8 character, so bytes are buffered up to a line end.

Supported: `message.content` (text), `message.thinking` (reasoning), `message.tool_calls`
(arguments arrive as JSON objects: serialized once into `ToolCallDelta.arguments`; the
`id` is passed on when the server sends one), the final `done: true` line with
`done_reason` (`stop` on a turn with tool calls is `tool_calls`; `length`; `load`/`unload`
are `stop`) and the counts `prompt_eval_count` (input) and `eval_count` (output, thinking
included; Ollama reports no cached or reasoning counts). An `{"error": "…"}` line inside a
200 stream raises the mapped `ProviderError`; a stream that ends without `done: true` is a
`protocol_error`.

Not supported: `/api/generate` (top-level `response`/`thinking`, `context` arrays), the
`/v1` OpenAI-compatible endpoint (use the `openai_compatible` kind for it),
`tool_choice` other than `none` or a tool name (Ollama cannot force a call: `required`
sends the tools unchanged).

Authentication: none by default; a configured key is sent as `Authorization: Bearer`
(Ollama's cloud and authenticating proxies).

Options (provider `options`, overridden by the deployment's): `think`, `keep_alive`,
`format` go into the body; `options` (a mapping) and any other key (`num_ctx`, `top_p`,
`seed`, …) go into the body's runtime `options`. A request's `response_format` becomes
`format` (its JSON schema, or `"json"` for json_object); its sampling parameters (seed,
top_p, top_k, penalties) go into the runtime `options`.
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

DEFAULT_BASE_URL = "http://localhost:11434"
FINISH_REASONS: dict[str, ProviderFinish] = {
    "stop": "stop",
    "length": "length",
    "load": "stop",
    "unload": "stop",
}
BODY_OPTIONS = ("think", "keep_alive", "format")
_RUNTIME_PARAMS = frozenset({"seed", "top_p", "top_k", "frequency_penalty", "presence_penalty"})


# --- errors -------------------------------------------------------------------------------


def _map_error(payload: Any, secrets: Sequence[str]) -> ProviderError:
    """An `{"error": "…"}` line inside a 200 stream; HTTP errors go through
    `providers.http` (which reads the same body shape) and `_refine`."""
    return map_error_payload(payload, secrets=secrets, where="ollama stream error")


def _refine(error: ProviderError) -> ProviderError:
    """Ollama answers 503 "server busy … maximum pending requests exceeded" when its queue
    is full: that is overload, whatever the wording."""
    if error.status == 503 and error.code == "provider_error":
        return ProviderError("overloaded", error.message, status=503,
                             retry_after=error.retry_after)
    return error


# --- request ------------------------------------------------------------------------------



def _images_of(content: Any) -> list[str]:
    """Base64 payloads of OpenAI `image_url` parts with `data:` URLs (Ollama takes raw
    base64 only; remote URLs are not fetched)."""
    if not isinstance(content, Sequence) or isinstance(content, str):
        return []
    images = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "image_url":
            ref = part.get("image_url")
            url = ref.get("url", "") if isinstance(ref, Mapping) else str(ref or "")
            if url.startswith("data:") and ";base64," in url:
                images.append(url.split(";base64,", 1)[1])
    return images


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return {}  # a malformed call from an earlier turn: send it without arguments
    return dict(raw) if isinstance(raw, Mapping) else {}


def _messages(request: ProviderRequest) -> list[dict[str, Any]]:
    """OpenAI chat history -> Ollama messages. Tool results carry `tool_name` (looked up
    from the assistant call with that id) and `tool_call_id`."""
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    names: dict[str, str] = {}
    for message in request.messages:
        role = str(message.get("role", "user"))
        item: dict[str, Any] = {"role": role, "content": content_text(message.get("content"))}
        images = _images_of(message.get("content"))
        if images:
            item["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                fn = call.get("function", {})
                names[call.get("id", "")] = fn.get("name", "")
                entry: dict[str, Any] = {"function": {"name": fn.get("name", ""),
                                                      "arguments": _arguments(fn.get("arguments"))}}
                if call.get("id"):
                    entry["id"] = call["id"]
                calls.append(entry)
            item["tool_calls"] = calls
        elif role == "tool":
            call_id = message.get("tool_call_id", "")
            item["tool_call_id"] = call_id
            item["tool_name"] = message.get("name") or names.get(call_id, "")
        out.append(item)
    return out


def _build_request(request: ProviderRequest, options: Mapping[str, Any]) -> dict[str, Any]:
    """The `/api/chat` body for `request` (pure). `options`: provider + request options."""
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request),
                            "stream": True}
    if request.tools and request.tool_choice != "none":
        tools = request.tools
        if request.tool_choice not in (None, "auto", "required"):
            tools = [t for t in tools if t.name == request.tool_choice] or tools
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": dict(t.parameters)}}
            for t in tools]
    runtime: dict[str, Any] = {}
    for key, value in options.items():
        if key == "params":  # the router's own option (which sampling parameters to route)
            continue
        if key in BODY_OPTIONS:
            body[key] = value
        elif key == "options" and isinstance(value, Mapping):
            runtime.update(value)
        else:
            runtime[key] = value
    if request.max_tokens is not None:
        runtime["num_predict"] = request.max_tokens
    if request.temperature is not None:
        runtime["temperature"] = request.temperature
    if request.stop:
        runtime["stop"] = list(request.stop)
    # seed, top_p, top_k, penalties: Ollama's names are ours
    runtime.update((k, v) for k, v in request.params.items() if k in _RUNTIME_PARAMS)
    fmt = request.response_format
    if fmt is not None:
        schema = (fmt.get("json_schema") or {}).get("schema")
        body["format"] = dict(schema) if schema is not None else "json"
    if runtime:
        body["options"] = runtime
    return body


# --- stream parsing -----------------------------------------------------------------------


class _State:
    """Per-stream parse state: tool calls seen so far, the finish reason once done."""

    __slots__ = ("done", "done_reason", "tools")

    def __init__(self) -> None:
        self.tools = 0
        self.done = False
        self.done_reason: str | None = None


def _parse_line(obj: Mapping[str, Any], state: _State, out: list[Delta]) -> None:
    """One decoded line -> deltas appended to `out` (pure but for `state`). A line may
    carry thinking, content, tool calls and the final counts together."""
    message = obj.get("message")
    if message:
        thinking = message.get("thinking")
        if thinking:
            out.append(ReasoningDelta(thinking))
        content = message.get("content")
        if content:
            out.append(TextDelta(content))
        calls = message.get("tool_calls")
        if calls:
            for call in calls:
                fn = call.get("function") or {}
                args = fn.get("arguments")
                text = args if isinstance(args, str) else orjson.dumps(
                    args if args is not None else {}).decode()
                out.append(ToolCallDelta(state.tools, call.get("id"), fn.get("name"), text))
                state.tools += 1
    if obj.get("done"):
        state.done = True
        state.done_reason = obj.get("done_reason")
        prompt, completion = obj.get("prompt_eval_count"), obj.get("eval_count")
        if prompt is not None or completion is not None:
            out.append(UsageDelta(int(prompt or 0), int(completion or 0)))


def _finish(state: _State) -> FinishDelta:
    reason = FINISH_REASONS.get(state.done_reason or "stop", "stop")
    if reason == "stop" and state.tools:
        reason = "tool_calls"  # Ollama keeps `stop` on tool-call turns
    return FinishDelta(reason)


class _Lines:
    """NDJSON framing: complete lines from chunks split anywhere (bytes, so a UTF-8
    character cut by a network read is rejoined before decoding)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # pieces of the incomplete last line

    def feed(self, chunk: bytes) -> list[bytes]:
        end = chunk.rfind(b"\n")
        if end < 0:
            if chunk:
                self._pending.append(chunk)
            return []
        pending = self._pending
        if pending:
            pending.append(chunk[:end])
            block = b"".join(pending)
            pending.clear()
        else:
            block = chunk[:end]
        if end + 1 < len(chunk):
            pending.append(chunk[end + 1:])
        return [line for line in block.split(b"\n") if line]

    def tail(self) -> bytes:
        """What is left at the end of the body (a last line without its newline)."""
        tail = b"".join(self._pending)
        self._pending.clear()
        return tail if tail.strip() else b""


# --- the provider -------------------------------------------------------------------------


class OllamaProvider(HTTPProvider):
    """Streams Ollama's `/api/chat` over one pooled `httpx.AsyncClient`."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None):
        super().__init__(settings, client)
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = base + ("/chat" if base.endswith("/api") else "/api/chat")
        self._headers = {**settings.headers, "content-type": "application/json",
                         "accept": "application/x-ndjson"}
        if self._secrets:
            self._headers["authorization"] = f"Bearer {self._secrets[0]}"

    def __repr__(self) -> str:
        return f"OllamaProvider(name={self.settings.name!r}, url={self._url!r})"

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        options = {**self.settings.options, **request.options}
        content = orjson.dumps(_build_request(request, options))
        try:
            response = await open_stream(self._client, self._url, content=content,
                                         headers=self._headers, secrets=self._secrets)
        except ProviderError as exc:
            raise _refine(exc) from exc
        state = _State()
        lines = _Lines()
        out: list[Delta] = []
        chunks = body_chunks(response)
        try:
            try:
                async for chunk in chunks:
                    error = self._parse(lines.feed(chunk), state, out)
                    if out:
                        for delta in out:
                            yield delta
                        out.clear()
                    if error is not None:
                        raise error
                    if state.done:
                        break
                else:
                    # The last line may lack its newline.
                    error = self._parse([lines.tail()], state, out)
                    for delta in out:
                        yield delta
                    if error is not None:
                        raise error
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, during="body", secrets=self._secrets) from exc
            if not state.done:
                raise ProviderError("protocol_error", "ollama: stream ended without done: true")
            await drain(chunks)
            yield _finish(state)
        finally:
            await response.aclose()

    def _parse(self, lines: list[bytes], state: _State, out: list[Delta]) -> ProviderError | None:
        """Parse complete lines into `out`; an error is returned, not raised, so that the
        deltas of the lines before it are still delivered."""
        for line in lines:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                if not line or line.isspace():
                    continue
                return ProviderError("protocol_error", "ollama: malformed JSON line")
            if not isinstance(obj, dict):
                return ProviderError("protocol_error", "ollama: a line is not a JSON object")
            if "error" in obj:
                return _map_error(obj, self._secrets)
            _parse_line(obj, state, out)
            if state.done:
                break
        return None

