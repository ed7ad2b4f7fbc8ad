"""Shared HTTP plumbing for the HTTP adapters: open a streaming POST on the injected pooled
client, iterate its body, drain it after the terminal marker so the connection returns to
the pool, and map every failure (HTTP status + error body, in-stream error objects, httpx
exceptions) to a `ProviderError`.

Error bodies seen in the wild (all handled by `map_error_payload`):
- Anthropic `{"type":"error","error":{"type":"overloaded_error","message":"…"}}`
- OpenAI and compatibles `{"error":{"message","type","param","code"}}` (`code` may be null;
  Groq adds `status_code`, OpenRouter puts an int HTTP status in `code`)
- Gemini `{"error":{"code":429,"message","status":"RESOURCE_EXHAUSTED","details":[…]}}`
  with the retry delay in a `google.rpc.RetryInfo` detail (`"retryDelay": "34.4s"`)
- Ollama `{"error":"…"}`

Messages never contain headers, URLs or keys: they are built from the status and the
error body only, and every secret the adapter passes in is redacted from them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, cast

import httpx
import orjson

from providers.base import (
    ErrorCodeName,
    ProviderError,
    ProviderSettings,
    make_client,
)
from providers.headers import header, parse_retry_after
from providers.transport import DirectResponse, PooledClient

# What `open_stream` returns: httpx's response, or the pool's own (same attributes).
StreamedResponse = httpx.Response | DirectResponse

__all__ = [
    "StreamedResponse",
    "aiter_body",
    "body_chunks",
    "drain",
    "error_in_text",
    "map_error_payload",
    "map_http_error",
    "map_transport_error",
    "open_stream",
    "redact",
]

ERROR_BODY_MAX_BYTES = 64 * 1024
DRAIN_MAX_BYTES = 256 * 1024  # after the terminal marker: more than this is not a tail
DRAIN_TIMEOUT_S = 1.0  # a server that keeps the body open after its marker loses the socket
_MESSAGE_MAX_CHARS = 400

# Substrings (lowercase) of an error's type/code/message that mean "prompt too long".
_CONTEXT_MARKERS = (
    "context_length",
    "context length",
    "context window",
    "context limit",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "reduce the length",
    "input token count",
    "exceeds the maximum number of tokens",
)
_FILTER_MARKERS = ("content_filter", "content_policy", "content management policy",
                   "content filter")  # Anthropic: "Output blocked by content filtering policy"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `***` (secrets under 8 characters, such as
    placeholder keys of local servers, are not real credentials and are left alone)."""
    for secret in secrets:
        if len(secret) >= 8 and secret in text:
            text = text.replace(secret, "***")
    return text


def _duration_s(text: Any) -> float | None:
    """Google's protobuf Duration JSON form: "34.4s"."""
    if isinstance(text, str) and text.endswith("s"):
        try:
            return max(0.0, float(text[:-1]))
        except ValueError:
            return None
    return None


# --- error bodies -------------------------------------------------------------------------


def _error_fields(payload: Any) -> tuple[str, str, str, int | None, float | None]:
    """(kind, message, code, status, retry_after) from any known error body shape.
    `kind` joins type/code/status words, lowercase, for classification."""
    err: Any = payload
    if isinstance(payload, Mapping) and "error" in payload:
        err = payload["error"]
    if isinstance(err, str):
        return "", err, "", None, None
    if not isinstance(err, Mapping):
        return "", "", "", None, None
    message = err.get("message")
    message = message if isinstance(message, str) else ""
    words = [w for w in (err.get("type"), err.get("code"), err.get("status")) if isinstance(w, str)]
    status = next(
        (v for v in (err.get("status_code"), err.get("code")) if isinstance(v, int)), None
    )
    code = err.get("code") if isinstance(err.get("code"), str) else err.get("type")
    retry_after = None
    details = err.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, Mapping) and "retryDelay" in detail:
                retry_after = _duration_s(detail["retryDelay"])
    return " ".join(words).lower(), message, code if isinstance(code, str) else "", status, \
        retry_after


def _classify(status: int | None, kind: str, message: str) -> ErrorCodeName:
    msg = message.lower()
    if "overloaded" in kind or status == 529 or (status == 503 and "overload" in msg):
        return "overloaded"
    if status == 429 or any(k in kind for k in ("rate_limit", "resource_exhausted", "quota")):
        return "rate_limited"
    if status == 409:  # lock/conflict: transient, retried by the official SDKs
        return "provider_error"
    if status == 408 or "timeout" in kind or "deadline_exceeded" in kind:
        return "timeout"
    if status in (401, 403) or any(
        k in kind for k in ("authentication", "permission", "invalid_api_key", "unauthenticated")
    ):
        return "auth"
    client_side = status is None or 400 <= status < 500
    if client_side and any(m in kind or m in msg for m in _FILTER_MARKERS):
        return "content_filter"
    if client_side and any(m in kind or m in msg for m in _CONTEXT_MARKERS):
        return "context_length"
    if (status is not None and 400 <= status < 500) or any(
        k in kind for k in ("invalid_request", "not_found", "invalid_argument", "too_large")
    ):
        return "bad_request"
    return "provider_error"


def map_error_payload(
    payload: Any,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
    where: str = "",
) -> ProviderError:
    """A `ProviderError` from an error body or an in-stream error object. `status` is the
    HTTP status (None inside a 200 stream: then a status in the body is used)."""
    kind, message, code, body_status, body_retry = _error_fields(payload)
    effective = status if status is not None else body_status
    error_code = _classify(effective, kind, message)
    retryable: bool | None = None
    if "insufficient_quota" in kind:  # billing, not a rate: waiting does not help
        retryable = False
    label = " ".join(p for p in (where, f"HTTP {status}" if status else "", code) if p)
    text = message[:_MESSAGE_MAX_CHARS] or "no error message"
    return ProviderError(
        error_code,
        redact(f"{label}: {text}" if label else text, secrets),
        status=effective,
        retry_after=retry_after if retry_after is not None else body_retry,
        retryable=retryable,
    )


def error_in_text(text: bytes) -> Any | None:
    """The error object of a JSON error body found where SSE was expected (a proxy's
    `{"error": …}` with status 200, or one appended after the events), else None."""
    text = text.strip()
    if not text.startswith(b"{"):
        return None
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, Mapping) and payload.get("error") else None


def map_http_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
    now: float | None = None,
) -> ProviderError:
    """A `ProviderError` for a non-2xx response, from its status, error body and headers."""
    try:
        payload: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        # A proxy's HTML page or plain text: keep a short, printable excerpt.
        payload = {"error": {"message": body[:200].decode("utf-8", "replace").strip()}}
    if 300 <= status < 400:
        return ProviderError(
            "protocol_error",
            f"HTTP {status}: redirects are not followed; check base_url",
            status=status,
            retryable=False,
        )
    error = map_error_payload(
        payload, status=status, retry_after=parse_retry_after(headers, now=now), secrets=secrets
    )
    should_retry = header(headers, "x-should-retry")  # the provider's own verdict wins
    if should_retry in ("true", "false"):
        error.retryable = should_retry == "true"
    return error


# --- transport ----------------------------------------------------------------------------


def map_transport_error(
    exc: httpx.HTTPError, *, during: str = "request", secrets: Iterable[str] = ()
) -> ProviderError:
    """httpx exceptions -> codes. `during` is "request" (before headers) or "body"."""
    name = type(exc).__name__
    detail = redact(str(exc), secrets)[:200]
    code: ErrorCodeName
    retryable: bool | None = None
    if isinstance(exc, httpx.ConnectTimeout):
        code, what = "timeout", "connect timeout"
    elif isinstance(exc, httpx.ReadTimeout):
        code, what = "timeout", "read timeout (no data from the provider)"
    elif isinstance(exc, httpx.WriteTimeout):
        code, what = "timeout", "write timeout"
    elif isinstance(exc, httpx.PoolTimeout):
        code, what = "timeout", "pool timeout (no free connection)"
    elif isinstance(exc, httpx.RemoteProtocolError):
        # "peer closed connection", "Server disconnected", "incomplete chunked read":
        # a connection cut, worth a retry; anything else is a malformed response.
        low = str(exc).lower()
        cut = any(m in low for m in ("peer closed", "disconnected", "incomplete", "reset"))
        code = "connection" if cut else "protocol_error"
        what = f"connection closed by the provider {'mid-body' if during == 'body' else ''}"
        what = what.strip() if cut else "malformed HTTP response"
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        code, what, retryable = "connection", "invalid base_url", False
    elif isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        code, what = "connection", "cannot connect"
    elif isinstance(exc, httpx.NetworkError):
        code, what = "connection", f"network error {'mid-body' if during == 'body' else ''}"
        what = what.strip()
    elif isinstance(exc, httpx.DecodingError | httpx.TooManyRedirects):
        code, what = "protocol_error", "undecodable response"
    else:
        code, what = "connection", "HTTP failure"
    message = f"{what}: {name}" + (f" ({detail})" if detail else "")
    return ProviderError(code, message, retryable=retryable)


async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    secrets: Iterable[str] = (),
) -> StreamedResponse:
    """POST `content` and return the streaming response once its status is 2xx. The
    caller owns the response and must `aclose()` it in `finally`; read its body with
    `body_chunks`. Non-2xx responses are read (bounded), closed and raised as
    `ProviderError`. On our pooled client the POST goes to the pool directly (see
    `providers.transport.PooledClient`); any other client (a respx-mocked one) via httpx."""
    secrets = tuple(secrets)
    response: StreamedResponse
    try:
        if isinstance(client, PooledClient):
            response = await client.post_streaming(url, content, headers)
        else:
            request = client.build_request("POST", url, content=content, headers=headers)
            response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise map_transport_error(exc, secrets=secrets) from exc
    if 200 <= response.status_code < 300:
        return response
    try:
        body = await _read_bounded(response, ERROR_BODY_MAX_BYTES)
    except httpx.HTTPError:
        body = b""  # the status alone still says what happened
    finally:
        await response.aclose()
    raise map_http_error(response.status_code, body, response.headers, secrets=secrets)


async def _read_bounded(response: StreamedResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in body_chunks(response):
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def body_chunks(response: StreamedResponse) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive (decoded when content-encoded). From httpx, when
    the body is not content-encoded, straight from the transport's stream, without
    httpx's decoder and re-chunker layers (two generator resumptions less per chunk)."""
    if isinstance(response, DirectResponse):
        return response.chunks()
    if "content-encoding" in response.headers:
        return response.aiter_bytes()
    return aiter(cast(httpx.AsyncByteStream, response.stream))


async def aiter_body(
    response: StreamedResponse, *, secrets: Iterable[str] = ()
) -> AsyncIterator[bytes]:
    """The response body as it arrives, with httpx failures mapped to `ProviderError`.
    Keep the iterator: after the terminal marker, pass it to `drain`."""
    chunks = body_chunks(response)
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, during="body", secrets=secrets) from exc
        yield chunk


async def drain(
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int = DRAIN_MAX_BYTES,
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> bool:
    """Read what follows the terminal marker to the end of the body, so httpx returns the
    connection to the pool instead of closing it (a client that stops reading at `[DONE]`
    opens a new TCP+TLS connection per request). `chunks` is the iterator the caller was
    reading (`aiter_body(...)` or `response.aiter_bytes()`). Bounded in bytes and time;
    True if the body ended cleanly."""
    at_eof = getattr(chunks, "at_eof", None)  # the pool's own body reader has it
    if at_eof is not None and at_eof():
        return True  # the end came with the marker: no timer to arm (~8 us a request)
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    return False
    except (TimeoutError, ProviderError, httpx.HTTPError):
        return False
    return True


class HTTPProvider:
    """What every HTTP adapter shares: its settings, one pooled keep-alive client (made
    here and closed by `aclose()` unless one was injected, e.g. a respx-mocked one in
    tests) and the secrets that error messages must never contain."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None):
        self.settings = settings
        self._owns_client = client is None
        self._client = client if client is not None else make_client(settings)
        key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
        self._secrets: tuple[str, ...] = (key,) if key else ()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
