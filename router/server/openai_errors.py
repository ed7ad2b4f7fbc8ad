"""OpenAI's error shape for every OpenAI-wire endpoint (`/v1/chat/completions`,
`/v1/responses`, the URL errors): the `{"error": {message, type, param, code}}` body, the
HTTP status of each router error code, and the `x-should-retry` header the SDK obeys."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from providers.base import SAMPLING_PARAMS
from router.events import ErrorEvent
from router.server.compat import RequestProblem

# Router error code -> (HTTP status, OpenAI error type, OpenAI error code).
_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "no_route": (400, "invalid_request_error", "no_route"),
    "bad_request": (400, "invalid_request_error", None),
    "context_length": (400, "invalid_request_error", "context_length_exceeded"),
    "content_filter": (400, "invalid_request_error", "content_filter"),
    "auth": (502, "server_error", "upstream_auth"),
    "rate_limited": (429, "requests", "rate_limit_exceeded"),
    "budget_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "overloaded": (503, "server_error", "overloaded"),
    "circuit_open": (503, "server_error", "circuit_open"),
    "timeout": (504, "server_error", "timeout"),
    "connection": (502, "server_error", "connection"),
    "provider_error": (500, "server_error", "provider_error"),
    "protocol_error": (502, "server_error", "protocol_error"),
    "cancelled": (500, "server_error", "cancelled"),
}
def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param: str | None = None,
                   code: str | None = None, request_id: str | None = None,
                   retryable: bool = False) -> Response:
    # `x-should-retry` steers the SDK's retry loop: only transient failures are retried
    # (an exhausted budget is a 429 the SDK must not hammer).
    headers = {"x-should-retry": "true" if retryable else "false"}
    if request_id:
        headers["x-request-id"] = request_id
    return Response(orjson.dumps(error_body(message, type_, param, code)), status,
                    headers=headers, media_type="application/json")


def event_error(ev: ErrorEvent) -> tuple[int, dict[str, Any]]:
    """An `error` event as OpenAI's HTTP status and `{"error": {...}}` body."""
    status, type_, code = _ERRORS.get(ev.code, (500, "server_error", ev.code))
    if ev.code == "no_route" and ev.retryable:
        status, type_ = 503, "server_error"
    message = ev.message if not ev.suggestion else f"{ev.message} ({ev.suggestion})"
    return status, error_body(message, type_, _param_of(ev.message), code or ev.code)


def _param_of(message: str) -> str | None:
    """The request field a core validation message starts with (`input[2]: ...`)."""
    head = message.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0].strip()
    if head in SAMPLING_PARAMS or head == "response_format":
        return head
    return {"input": "messages", "tools": "tools", "tool_choice": "tool_choice",
            "stop": "stop", "max_tokens": "max_tokens"}.get(head)


def problem_response(p: RequestProblem) -> Response:
    return error_response(p.status, p.message, "invalid_request_error", p.param, p.code)


def error_of(ev: ErrorEvent) -> Response:
    """An `error` event as OpenAI's HTTP error response."""
    status, err = event_error(ev)
    return error_response(status, **_flat(err), request_id=ev.request_id,
                          retryable=ev.retryable)


def _flat(err: dict[str, Any]) -> dict[str, Any]:
    e = err["error"]
    return {"message": e["message"], "type_": e["type"], "param": e["param"],
            "code": e["code"]}
