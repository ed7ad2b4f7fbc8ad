"""Events v1: the one public schema of a routed stream (see ARCHITECTURE.md, "Events v1").

Every event has `type`, `request_id`, `seq` (contiguous from 0 per request) and
`elapsed_ms` (since `stream()` was called). Exactly one `done` or `error` ends a stream.

The router builds events with `build` (and, per chunk, `text_event` and its siblings): it
does not re-validate what it produced itself. Input from outside (JSON from a client or a
log) goes through `decode_event`, which validates.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "budget", "cancelled"]
ErrorCode = Literal[
    "no_route",
    "rate_limited",
    "overloaded",
    "timeout",
    "connection",
    "auth",
    "bad_request",
    "context_length",
    "content_filter",
    "circuit_open",
    "budget_exceeded",
    "provider_error",
    "protocol_error",
    "cancelled",
    "state_unavailable",
]
ResumeMode = Literal["continue", "restart"]
BudgetLevel = Literal["warning", "exceeded"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class CandidateEstimate(_Model):
    """How a candidate's estimate was made. `quantile` is the one the budgets were held
    against (read at `level`), `ttft_q_ms` / `latency_q_ms` its values at the load now;
    `expected_ms` the ranking's expected time to a successful answer; `samples`
    observations ever, `weight` their decayed weight (below 1: drifting back to the
    prior), `age_s` since the last one (null: never observed); `wait_ms` a quota wait;
    `explore`: chosen to re-measure it; `load_slope` the learnt slowdown of its first token
    per other request in flight (0.05: 5% each), which `inflight` was scaled by."""

    quantile: float
    ttft_q_ms: float
    latency_q_ms: float
    expected_ms: float
    # The level the budgets were read at: `quantile` less one standard error of it for the
    # evidence behind it (`routing.budget_confidence`); absent in older logs.
    level: float | None = None
    samples: int
    weight: float
    age_s: float | None
    error_rate: float
    inflight: int
    wait_ms: float
    explore: bool = False
    load_slope: float | None = None  # absent in older logs


class Candidate(_Model):
    deployment: str
    eligible: bool
    reason: str | None = None
    estimated_cost_usd: float
    estimated_ttft_ms: float
    estimated_latency_ms: float
    # Absent (not null) when unknown, so that logs written before it still round-trip.
    estimate: CandidateEstimate | None = Field(default=None, exclude_if=lambda v: v is None)


class ToolCall(_Model):
    id: str
    name: str
    arguments: Any


class Usage(_Model):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


class Cost(_Model):
    input_usd: float = 0.0
    output_usd: float = 0.0
    total_usd: float = 0.0


class Latency(_Model):
    ttft_ms: float | None = None
    total_ms: float = 0.0
    tokens_per_s: float | None = None


class _Event(_Model):
    request_id: str
    seq: int
    elapsed_ms: float


class RouteEvent(_Event):
    type: Literal["route"] = "route"
    deployment: str | None
    provider: str | None
    model: str | None
    reason: str
    estimated_cost_usd: float | None
    estimated_ttft_ms: float | None
    estimated_latency_ms: float | None
    candidates: list[Candidate]


class StartEvent(_Event):
    type: Literal["start"] = "start"
    deployment: str
    provider: str
    model: str
    attempt: int
    hedge: bool = False


class TextEvent(_Event):
    type: Literal["text"] = "text"
    delta: str


class ReasoningEvent(_Event):
    type: Literal["reasoning"] = "reasoning"
    delta: str


class ToolCallEvent(_Event):
    type: Literal["tool_call"] = "tool_call"
    index: int
    id: str | None
    name: str | None
    arguments_delta: str


class RetryEvent(_Event):
    type: Literal["retry"] = "retry"
    deployment: str
    attempt: int
    error: ErrorCode
    delay_ms: float


class FallbackEvent(_Event):
    type: Literal["fallback"] = "fallback"
    from_deployment: str
    to_deployment: str
    error: ErrorCode
    after_tokens: int
    mode: ResumeMode | None


class BudgetEvent(_Event):
    type: Literal["budget"] = "budget"
    scope: str
    spent_usd: float
    limit_usd: float
    level: BudgetLevel


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    deployment: str
    provider: str
    model: str
    finish_reason: FinishReason
    tool_calls: list[ToolCall]
    usage: Usage
    cost_usd: float
    cost: Cost
    latency: Latency
    attempts: int


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    retryable: bool
    deployment: str | None = None
    status: int | None = None
    suggestion: str | None = None


Event = Annotated[
    RouteEvent
    | StartEvent
    | TextEvent
    | ReasoningEvent
    | ToolCallEvent
    | RetryEvent
    | FallbackEvent
    | BudgetEvent
    | DoneEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
TerminalEvent = DoneEvent | ErrorEvent
TERMINAL_TYPES = frozenset({"done", "error"})

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event, config=ConfigDict(defer_build=True))

# --- builders -----------------------------------------------------------------------------
# The model's state set directly: what `model_construct` does, without its per-field walk.
# Only for values the router produced itself.
_new = object.__new__
# The slots' own setters, called directly: a fifth less per event than `object.__setattr__`
# looking each one up.
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__
_M = TypeVar("_M", bound=BaseModel)
_DEFAULTS: dict[type[BaseModel], dict[str, Any]] = {}


def build(cls: type[_M], /, **values: Any) -> _M:
    """`cls.model_construct(**values)`, several times as fast (a dozen per request): the
    fields in the model's order (the JSON's key order), the left-out ones at their plain
    defaults (these models have no default factories). `values` must name fields only."""
    state = _DEFAULTS.get(cls)
    if state is None:
        state = _DEFAULTS[cls] = {name: f.default for name, f in cls.model_fields.items()}
    state = state.copy()
    state.update(values)  # known keys keep their place: the model's order
    obj = _new(cls)
    _set_dict(obj, state)
    _set_fields_set(obj, set(values))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# One event per chunk: also skip the defaults merge (~8x faster than `model_construct`).
_TEXT_FIELDS = set(TextEvent.model_fields)
_REASONING_FIELDS = set(ReasoningEvent.model_fields)
_TOOL_FIELDS = set(ToolCallEvent.model_fields)


def text_event(request_id: str, seq: int, elapsed_ms: float, delta: str) -> TextEvent:
    ev: TextEvent = _new(TextEvent)
    _set_dict(ev, {"request_id": request_id, "seq": seq, "elapsed_ms": elapsed_ms,
                          "type": "text", "delta": delta})
    _set_fields_set(ev, _TEXT_FIELDS)
    _set_extra(ev, None)
    _set_private(ev, None)
    return ev


def reasoning_event(request_id: str, seq: int, elapsed_ms: float, delta: str) -> ReasoningEvent:
    ev: ReasoningEvent = _new(ReasoningEvent)
    _set_dict(ev, {"request_id": request_id, "seq": seq, "elapsed_ms": elapsed_ms,
                          "type": "reasoning", "delta": delta})
    _set_fields_set(ev, _REASONING_FIELDS)
    _set_extra(ev, None)
    _set_private(ev, None)
    return ev


def tool_call_event(request_id: str, seq: int, elapsed_ms: float, index: int, id: str | None,
                    name: str | None, arguments_delta: str) -> ToolCallEvent:
    ev: ToolCallEvent = _new(ToolCallEvent)
    _set_dict(ev, {"request_id": request_id, "seq": seq, "elapsed_ms": elapsed_ms,
                          "type": "tool_call", "index": index, "id": id, "name": name,
                          "arguments_delta": arguments_delta})
    _set_fields_set(ev, _TOOL_FIELDS)
    _set_extra(ev, None)
    _set_private(ev, None)
    return ev


_GIVEN_FIELDS: dict[type[BaseModel], set[str]] = {}


def build_whole(cls: type[_M], state: dict[str, Any], /) -> _M:
    """`build` for a `state` that names every field of `cls` (`type` too) in the model's
    order (the JSON's key order): no defaults merged, one fields set per class, `type`
    left out of it as `build` leaves it (the per-request `route`, `start` and `done`
    events and their parts: the defaults merge was a third of their cost). `state` is
    kept, not copied."""
    fields = _GIVEN_FIELDS.get(cls)
    if fields is None:
        fields = _GIVEN_FIELDS[cls] = set(cls.model_fields) - {"type"}
    obj = _new(cls)
    _set_dict(obj, state)
    _set_fields_set(obj, fields)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def encode_event(event: _Event) -> bytes:
    """Compact JSON of one event (the only encoder used by CLI, server and logs)."""
    return event.__pydantic_serializer__.to_json(event)


def decode_event(data: bytes | str) -> Event:
    """Validate JSON from outside back into an event."""
    return EVENT_ADAPTER.validate_python(orjson.loads(data))
