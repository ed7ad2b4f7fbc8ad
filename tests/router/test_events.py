"""Events v1: the public schema. Every type validates, is frozen, refuses unknown fields,
and round-trips through the one JSON encode/decode path."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from router.events import (
    EVENT_ADAPTER,
    TERMINAL_TYPES,
    BudgetEvent,
    Candidate,
    CandidateEstimate,
    Cost,
    DoneEvent,
    ErrorEvent,
    FallbackEvent,
    Latency,
    ReasoningEvent,
    RetryEvent,
    RouteEvent,
    StartEvent,
    TextEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
    build,
    build_whole,
    decode_event,
    encode_event,
)

BASE: dict[str, Any] = {"request_id": "r1", "seq": 0, "elapsed_ms": 1.5}

# One example of every event type, as a consumer would receive it on the wire.
EXAMPLES: dict[str, dict[str, Any]] = {
    "route": {
        "deployment": "fast", "provider": "sim", "model": "sim-flash",
        "reason": "lowest estimated cost (prefer=cost) of 2 eligible",
        "estimated_cost_usd": 0.0002, "estimated_ttft_ms": 120.0,
        "estimated_latency_ms": 1370.0,
        "candidates": [
            {"deployment": "fast", "eligible": True, "reason": "chosen",
             "estimated_cost_usd": 0.0002, "estimated_ttft_ms": 120.0,
             "estimated_latency_ms": 1370.0},
            {"deployment": "strong", "eligible": False,
             "reason": "max_ttft_ms: estimated 900 ms > 500 ms",
             "estimated_cost_usd": 0.0075, "estimated_ttft_ms": 900.0,
             "estimated_latency_ms": 10900.0},
        ],
    },
    "start": {"deployment": "fast", "provider": "sim", "model": "sim-flash", "attempt": 1,
              "hedge": False},
    "text": {"delta": "Hello "},
    "reasoning": {"delta": "step 1 "},
    "tool_call": {"index": 0, "id": "call_1", "name": "lookup", "arguments_delta": "{\"q\":"},
    "retry": {"deployment": "fast", "attempt": 2, "error": "rate_limited", "delay_ms": 250.0},
    "fallback": {"from_deployment": "fast", "to_deployment": "mid", "error": "overloaded",
                 "after_tokens": 12, "mode": "continue"},
    "budget": {"scope": "team:a", "spent_usd": 0.8, "limit_usd": 1.0, "level": "warning"},
    "done": {
        "deployment": "fast", "provider": "sim", "model": "sim-flash", "finish_reason": "stop",
        "tool_calls": [{"id": "call_1", "name": "lookup", "arguments": {"q": "x"}}],
        "usage": {"input_tokens": 10, "cached_input_tokens": 2, "output_tokens": 42,
                  "reasoning_tokens": 0, "estimated": False},
        "cost_usd": 1.78e-05,
        "cost": {"input_usd": 1e-06, "output_usd": 1.68e-05, "total_usd": 1.78e-05},
        "latency": {"ttft_ms": 0.4, "total_ms": 0.6, "tokens_per_s": 2000.0},
        "attempts": 1,
    },
    "error": {"code": "no_route", "message": "no eligible deployment: fast: ...",
              "retryable": False, "deployment": None, "status": None,
              "suggestion": "relax max_cost_usd"},
}
CLASSES = {"route": RouteEvent, "start": StartEvent, "text": TextEvent,
           "reasoning": ReasoningEvent, "tool_call": ToolCallEvent, "retry": RetryEvent,
           "fallback": FallbackEvent, "budget": BudgetEvent, "done": DoneEvent,
           "error": ErrorEvent}


def wire(kind: str) -> dict[str, Any]:
    return {"type": kind, **BASE, **EXAMPLES[kind]}


def test_every_event_type_of_the_spec_has_an_example() -> None:
    assert set(EXAMPLES) == set(CLASSES) == {
        "route", "start", "text", "reasoning", "tool_call", "retry", "fallback", "budget",
        "done", "error"}
    assert {"done", "error"} == TERMINAL_TYPES


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_decode_dispatches_on_type_and_round_trips(kind: str) -> None:
    event = decode_event(orjson.dumps(wire(kind)))
    assert type(event) is CLASSES[kind]
    assert event.type == kind
    encoded = encode_event(event)
    assert orjson.loads(encoded) == wire(kind)
    assert decode_event(encoded) == event
    assert decode_event(encoded.decode()) == event  # str input too


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_encoding_is_compact_json(kind: str) -> None:
    encoded = encode_event(decode_event(orjson.dumps(wire(kind))))
    assert encoded == orjson.dumps(orjson.loads(encoded))  # no whitespace between tokens
    assert not encoded.endswith(b"\n")


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_unknown_fields_are_refused(kind: str) -> None:
    with pytest.raises(ValidationError, match="extra"):
        decode_event(orjson.dumps({**wire(kind), "vendor_field": 1}))


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_missing_common_fields_are_refused(kind: str) -> None:
    for key in ("request_id", "seq", "elapsed_ms"):
        data = wire(kind)
        del data[key]
        with pytest.raises(ValidationError, match=key):
            decode_event(orjson.dumps(data))


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_events_are_frozen(kind: str) -> None:
    event = decode_event(orjson.dumps(wire(kind)))
    with pytest.raises(ValidationError, match="frozen"):
        event.seq = 5  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "field", "bad"), [
    ("done", "finish_reason", "finished"),
    ("error", "code", "oops"),
    ("retry", "error", "oops"),
    ("fallback", "mode", "resume"),
    ("budget", "level", "critical"),
    ("text", "delta", None),
    ("start", "attempt", "first"),
])
def test_closed_sets_and_types_are_enforced(kind: str, field: str, bad: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        decode_event(orjson.dumps({**wire(kind), field: bad}))


def test_unknown_type_is_refused_naming_the_allowed_tags() -> None:
    with pytest.raises(ValidationError, match="route"):
        decode_event(orjson.dumps({**BASE, "type": "token", "delta": "x"}))


def test_decode_rejects_invalid_json() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        decode_event(b"{not json")


def test_fallback_mode_is_null_before_any_token() -> None:
    data = {**wire("fallback"), "after_tokens": 0, "mode": None}
    event = decode_event(orjson.dumps(data))
    assert isinstance(event, FallbackEvent) and event.mode is None


def test_error_optional_fields_default_to_null() -> None:
    data = {"type": "error", **BASE, "code": "timeout", "message": "ttft", "retryable": True}
    event = decode_event(orjson.dumps(data))
    assert isinstance(event, ErrorEvent)
    assert (event.deployment, event.status, event.suggestion) == (None, None, None)
    assert orjson.loads(encode_event(event))["deployment"] is None


def test_hot_path_construction_serializes_like_validated_events() -> None:
    # The router builds events with `build` (no validation); the JSON must be byte-identical
    # to that of the validated event.
    built = build(
        DoneEvent, request_id="r1", seq=0, elapsed_ms=1.5, deployment="fast", provider="sim",
        model="sim-flash", finish_reason="stop",
        tool_calls=[build(ToolCall, id="call_1", name="lookup", arguments={"q": "x"})],
        usage=build(Usage, input_tokens=10, cached_input_tokens=2, output_tokens=42,
                    reasoning_tokens=0, estimated=False),
        cost_usd=1.78e-05,
        cost=build(Cost, input_usd=1e-06, output_usd=1.68e-05, total_usd=1.78e-05),
        latency=build(Latency, ttft_ms=0.4, total_ms=0.6, tokens_per_s=2000.0),
        attempts=1)
    validated = EVENT_ADAPTER.validate_python(wire("done"))
    assert encode_event(built) == encode_event(validated)
    assert EVENT_ADAPTER.validate_python(built.model_dump()) == validated


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_build_fills_defaults_like_model_construct(kind: str) -> None:
    cls = CLASSES[kind]
    # Leave out every field that has a default (`type` included): `build` must fill them.
    given = {k: v for k, v in {**BASE, **EXAMPLES[kind]}.items()
             if cls.model_fields[k].is_required()}
    if kind in ("route", "done"):  # nested models as the router passes them
        given = {**given, **{k: getattr(decode_event(orjson.dumps(wire(kind))), k)
                             for k in ("candidates", "tool_calls", "usage", "cost", "latency")
                             if k in given}}
    built, constructed = build(cls, **given), cls.model_construct(**given)
    assert built == constructed and built.type == kind
    assert encode_event(built) == encode_event(constructed)
    assert built.model_fields_set == constructed.model_fields_set


def test_build_whole_of_a_route_event_builds_what_build_does() -> None:
    estimate = {"quantile": 0.9, "level": 0.85, "ttft_q_ms": 130.0, "latency_q_ms": 1400.0,
                "expected_ms": 1300.0, "samples": 3, "weight": 0.5, "age_s": None,
                "error_rate": 0.01, "inflight": 2, "wait_ms": 0.0, "explore": False,
                "load_slope": 0.05}
    candidate = {**EXAMPLES["route"]["candidates"][0]}
    route = {**BASE, **{k: v for k, v in EXAMPLES["route"].items() if k != "candidates"}}
    def in_order(cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
        return {name: values[name] for name in cls.model_fields}

    fast_estimate = build_whole(CandidateEstimate, in_order(CandidateEstimate, estimate))
    fast_candidate = build_whole(Candidate, in_order(Candidate, {**candidate,
                                                                 "estimate": fast_estimate}))
    fast = build_whole(RouteEvent, in_order(RouteEvent, {**route, "type": "route",
                                                         "candidates": [fast_candidate]}))
    built = build(RouteEvent, **route, candidates=[build(
        Candidate, **candidate, estimate=build(CandidateEstimate, **estimate))])
    assert encode_event(fast) == encode_event(built)
    assert fast == built and fast.type == "route"
    for ours, theirs in ((fast, built), (fast_candidate, built.candidates[0]),
                         (fast_estimate, built.candidates[0].estimate)):
        assert ours.model_fields_set == theirs.model_fields_set  # type: ignore[union-attr]
        assert list(vars(ours)) == list(vars(theirs))
    assert EVENT_ADAPTER.validate_python(fast.model_dump()) == fast


def test_candidate_reason_may_be_null_and_estimates_are_required() -> None:
    assert Candidate(deployment="a", eligible=True, estimated_cost_usd=0.0,
                     estimated_ttft_ms=1.0, estimated_latency_ms=2.0).reason is None
    with pytest.raises(ValidationError, match="estimated_cost_usd"):
        Candidate(deployment="a", eligible=True, estimated_ttft_ms=1.0,  # type: ignore[call-arg]
                  estimated_latency_ms=2.0)


def test_json_schema_is_discriminated_on_type() -> None:
    schema = EVENT_ADAPTER.json_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == set(CLASSES)
