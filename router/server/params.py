"""The body of `POST /v1/stream` (and of a WebSocket `stream` message): the `stream()`
parameters as JSON, validated once at the edge so a mistake is a 422 naming its field.

The authenticated key's budget scope always becomes `metadata["key"]`, whatever the client
sent there: a client cannot spend from another key's budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError
from starlette.responses import Response

from router.events import ErrorEvent, encode_event
from router.request import (
    CostCap,
    Input,
    Metadata,
    Milliseconds,
    Stop,
    Temperature,
    TokenCount,
    ToolChoice,
    ToolSpec,
    first_problem,
)
from router.server.auth import Principal, error_body

# An `error` event before the first `start` is a refusal, answered with an HTTP status.
_EARLY_STATUS = {"budget_exceeded": 429, "bad_request": 422, "no_route": 422,
                 "context_length": 422, "state_unavailable": 503}


class StreamBody(BaseModel):
    """`stream()`'s arguments (the library's own field types) and `detach`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Input
    task: str | None = None
    model: str | None = None
    prefer: Literal["cost", "latency", "quality", "balanced"] | None = None
    max_ttft_ms: Milliseconds | None = None
    max_latency_ms: Milliseconds | None = None
    max_cost_usd: CostCap | None = None
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    system: str | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    stop: Stop | None = None
    metadata: Metadata | None = None
    response_format: dict[str, Any] | None = None  # checked by router.request_params
    params: dict[str, Any] | None = None  # sampling parameters: seed, top_p, ...
    # Keep producing into the event log when the client disconnects (resume later).
    detach: StrictBool = False


@dataclass(frozen=True, slots=True)
class BodyProblem:
    status: int
    code: str
    message: str
    param: str | None

    def response(self) -> Response:
        return Response(error_body(self.status, self.code, self.message, self.param),
                        status_code=self.status, media_type="application/json")


def check_stream_body(data: Any) -> StreamBody | BodyProblem:
    if not isinstance(data, dict):
        return BodyProblem(422, "invalid_body", "body: expected a JSON object", "body")
    try:
        return StreamBody.model_validate(data)
    except ValidationError as exc:
        param, msg = first_problem(exc)
        return BodyProblem(422, "invalid_request", f"{param}: {msg}", param)


def parse_stream_body(raw: bytes) -> StreamBody | Response:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BodyProblem(422, "invalid_json", f"body: not valid JSON ({exc})", "body").response()
    checked = check_stream_body(data)
    return checked.response() if isinstance(checked, BodyProblem) else checked


def stream_kwargs(body: StreamBody, principal: Principal) -> tuple[Any, dict[str, Any]]:
    """`(input, keyword arguments)` for `Router.stream`."""
    kwargs: dict[str, Any] = {}
    for name in ("task", "model", "prefer", "max_ttft_ms", "max_latency_ms", "max_cost_usd",
                 "max_tokens", "temperature", "system", "tools", "tool_choice", "stop",
                 "response_format", "params"):
        value = getattr(body, name)
        if value is not None:
            kwargs[name] = value
    metadata = dict(body.metadata or {})
    metadata["key"] = principal.scope
    kwargs["metadata"] = metadata
    return body.input, kwargs


def early_status(ev: ErrorEvent) -> int | None:
    return _EARLY_STATUS.get(ev.code)


def early_error_response(ev: ErrorEvent) -> Response | None:
    """The HTTP refusal for an `error` that ended a stream before it started, or None when
    the error is better delivered in the stream (provider failures)."""
    status = early_status(ev)
    if status is None:
        return None
    param = ev.message.split(":", 1)[0] if ":" in ev.message else None
    if param is not None and (" " in param or len(param) > 64):
        param = None
    body = orjson.loads(error_body(status, ev.code, ev.message, param))
    body["event"] = orjson.loads(encode_event(ev))
    headers = {"x-request-id": ev.request_id}
    if status == 429:
        headers["retry-after"] = "60"
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)
