"""API keys, per-key rate limits, body limits and the JSON error shape of the server.

Keys are configured as SHA-256 hex digests (`server.api_keys[].sha256`), so the config holds
no secret. A presented key is hashed and compared with *every* configured digest through
`hmac.compare_digest`, so neither a match's position nor its prefix shows in the timing.
Every path but `/healthz` (and the public paths a module declares, such as the static
playground page) needs a key: `Authorization: Bearer <key>`, `x-api-key: <key>` (what the
OpenAI and Anthropic SDKs send), or `?api_key=` on GET requests, for EventSource, which
cannot set headers (`llm-router serve` redacts it from access logs). WebSocket clients that
cannot set headers authenticate with their first message instead (see `ws.py`).

The authenticated key is put on the ASGI scope: `scope["state"]["key_scope"]` (its budget
scope, which the server passes to the core as `metadata["key"]`) and
`scope["state"]["principal"]`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.config.schema import ApiKeyConfig

PUBLIC_PATHS = frozenset({"/healthz"})
ANONYMOUS = "anonymous"
_QUERY_KEY = "api_key"
def hash_key(key: str) -> str:
    """The digest to put in `server.api_keys[].sha256` for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


# A query parameter: its name (still URL-encoded) and value, up to the next separator.
_QUERY_PARAM = re.compile(r"(?<=[?&;])([^=&;\s\"?#]+)=([^&;\s\"#]*)")


def _redact_param(m: re.Match[str]) -> str:
    name = m.group(1)
    # The name as the server reads it: `api%5Fkey` and `API_KEY` are the key parameter too.
    if unquote_plus(name).lower() == _QUERY_KEY:
        return f"{name}=[redacted]"
    return m.group(0)


def redact(text: str) -> str:
    """`text` (an access-log line, a URL) with the value of any query parameter that names
    `api_key` (URL-decoded, in any case) removed."""
    return _QUERY_PARAM.sub(_redact_param, text) if "=" in text else text


class RedactKeys(logging.Filter):
    """Removes `api_key=` query values from log records (uvicorn's access log prints full
    paths, and EventSource clients put the key in the query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
                isinstance(a, str) and "=" in a for a in record.args):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact(record.msg)
        return True


def install_log_redaction(names: Iterable[str] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Put `RedactKeys` on the loggers that may print request paths (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the key's configured name and budget scope (never the key)."""

    name: str
    scope: str
    rate_per_min: float | None = None


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS, ANONYMOUS)


class KeyRing:
    """The configured keys. With none configured, the server is open (`open` is True) and
    every request acts as `anonymous`; `llm-router serve` refuses that off loopback."""

    def __init__(self, keys: Sequence[ApiKeyConfig]) -> None:
        self._entries = [
            (bytes.fromhex(k.sha256), Principal(k.name, k.scope or k.name, k.rate_per_min))
            for k in keys
        ]

    @property
    def open(self) -> bool:
        return not self._entries

    def verify(self, presented: str | None) -> Principal | None:
        if not self._entries:
            return ANONYMOUS_PRINCIPAL
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for stored, principal in self._entries:
            # No early exit: every digest is compared whatever matched.
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


class RateLimiter:
    """A token bucket per key (`rate_per_min`, burst of one minute's worth)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, principal: Principal) -> float | None:
        """None when admitted, else the seconds until a request would be."""
        rate = principal.rate_per_min
        if rate is None:
            return None
        now = self._clock()
        tokens, last = self._buckets.get(principal.name, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate / 60.0)
        if tokens >= 1.0:
            self._buckets[principal.name] = (tokens - 1.0, now)
            return None
        self._buckets[principal.name] = (tokens, now)
        return (1.0 - tokens) * 60.0 / rate


def error_body(status: int, code: str, message: str, param: str | None = None) -> bytes:
    """The server's JSON error: readable by the OpenAI SDK (`error.message/type/code/param`)
    and the Anthropic SDK (`type: error`, `error.type`, `error.message`)."""
    return orjson.dumps({"type": "error", "error": {
        "type": _ERROR_TYPES.get(status, "api_error"), "code": code, "message": message,
        "param": param}})


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 409: "invalid_request_error",
                410: "not_found_error", 413: "request_too_large",
                422: "invalid_request_error", 429: "rate_limit_error"}


def problem(status: int, code: str, message: str, param: str | None = None,
            headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(status, code, message, param), status_code=status,
                    media_type="application/json", headers=headers)


def presented_key(scope: Scope) -> str | None:
    """The key a request carries, from its headers (or, on GET, its query string)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return str(text[7:].strip())
        elif name == b"x-api-key":
            return str(value.decode("latin-1")).strip()
    if scope.get("method", "GET") == "GET" and b"=" in scope.get("query_string", b""):
        # Decoded first, as for any parameter: `?api%5Fkey=` is the key too (and redacted).
        for key, value in parse_qsl(scope["query_string"].decode("latin-1")):
            if key == _QUERY_KEY:
                return str(value)
    return None


class AuthMiddleware:
    """Refuses requests without a valid key (401, or 429 past the key's rate) before they
    reach a route. WebSockets without a header key pass through unauthenticated: `ws.py`
    then requires an `auth` message first."""

    def __init__(self, app: ASGIApp, keys: KeyRing, limiter: RateLimiter,
                 public_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.public = PUBLIC_PATHS | frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        if kind == "http" and scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)  # CORS preflight carries no credentials
            return
        presented = presented_key(scope)
        principal = self.keys.verify(presented)
        if principal is None:
            if kind == "websocket" and presented is None:
                await self.app(scope, receive, send)
                return
            await self._refuse(scope, receive, send, 401, "unauthorized",
                               "missing or invalid API key: send `Authorization: Bearer "
                               "<key>` or `x-api-key: <key>`")
            return
        wait = self.limiter.allow(principal)
        if wait is not None:
            await self._refuse(scope, receive, send, 429, "rate_limited",
                               f"rate limit of key {principal.name!r} exceeded",
                               {"retry-after": str(max(1, round(wait)))})
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["principal"] = principal
        state["key_scope"] = principal.scope
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      code: str, message: str, headers: dict[str, str] | None = None) -> None:
        if scope["type"] == "websocket":
            # Refusing the handshake answers HTTP 403 (the ASGI websocket.close before accept).
            await send({"type": "websocket.close", "code": 1008, "reason": code})
            return
        await problem(status, code, message, None, headers)(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for request bodies over `limit` bytes: at once from `Content-Length`, or as soon
    as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        # `send` is not wrapped (it is on every streamed chunk's path): every route reads
        # its body before it starts a response, so a 413 can always still be sent.
        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, "body_too_large",
                      f"request body exceeds {self.limit} bytes (server.max_body_bytes)")(
            scope, receive, send)
