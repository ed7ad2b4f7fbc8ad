"""The simulated provider: deterministic answers, exact continuation, usage, timing lower
bounds, and every injectable fault."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import orjson
import pytest

from providers.base import (
    Delta,
    FinishDelta,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    ReasoningDelta,
    TextDelta,
    Tool,
    ToolCallDelta,
    UsageDelta,
    create_provider,
)
from providers.simulated import SimulatedProvider
from tests.providers.replay import joined as text


def provider(seed: int = 0, **options: Any) -> SimulatedProvider:
    p = create_provider(ProviderSettings(name="sim", kind="simulated",
                                         options={"seed": seed, **options}))
    assert isinstance(p, SimulatedProvider)
    return p


def request(prompt: str = "Explain circuit breakers", *, messages: Sequence[Mapping[str, Any]]
            | None = None, **kw: Any) -> ProviderRequest:
    return ProviderRequest(model="sim", messages=messages or [{"role": "user",
                                                                "content": prompt}], **kw)


async def drain(p: SimulatedProvider, req: ProviderRequest | None = None) -> list[Delta]:
    return [d async for d in p.stream(req or request())]


async def test_same_seed_and_prompt_give_the_same_answer() -> None:
    assert await drain(provider(1)) == await drain(provider(1))
    assert text(await drain(provider(1))) != text(await drain(provider(2)))
    assert text(await drain(provider(1))) != text(await drain(provider(1), request("Other")))


async def test_answer_is_sentences_of_whole_words() -> None:
    answer = text(await drain(provider(5)))
    assert answer[0].isupper() and answer.endswith(".")
    assert "  " not in answer and not answer.endswith(" ")


async def test_stream_ends_with_usage_then_finish() -> None:
    deltas = await drain(provider(output_tokens=12))
    n_text = sum(isinstance(d, TextDelta) for d in deltas)
    assert n_text == 12
    assert deltas[-2:] == [UsageDelta(input_tokens=10, output_tokens=12), FinishDelta("stop")]


async def test_default_length_depends_on_the_prompt_within_bounds() -> None:
    lengths = set()
    for prompt in ("a", "b", "hello there", "Explain circuit breakers", "x" * 50):
        n = sum(isinstance(d, TextDelta) for d in await drain(provider(), request(prompt)))
        assert 40 <= n <= 120
        lengths.add(n)
    assert len(lengths) > 1


async def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    full = await drain(provider(output_tokens=30))
    cut = await drain(provider(output_tokens=30), request(max_tokens=10))
    assert text(full).startswith(text(cut))
    assert sum(isinstance(d, TextDelta) for d in cut) == 10
    assert cut[-1] == FinishDelta("length")
    assert cut[-2] == UsageDelta(input_tokens=10, output_tokens=10)


async def test_usage_counts_the_system_prompt_and_every_message() -> None:
    deltas = await drain(provider(output_tokens=3), request(system="x" * 40, messages=[
        {"role": "user", "content": "y" * 40}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "z" * 40}]}]))
    usage = next(d for d in deltas if isinstance(d, UsageDelta))
    assert usage.input_tokens == (40 + 40 + 2 + 40 + 3) // 4 + 4 * 3


async def test_usage_can_be_withheld() -> None:
    deltas = await drain(provider(report_usage=False))
    assert not any(isinstance(d, UsageDelta) for d in deltas)
    assert deltas[-1] == FinishDelta("stop")


async def test_reasoning_comes_first_and_is_reported() -> None:
    deltas = await drain(provider(output_tokens=5, reasoning_tokens=3))
    assert [type(d) for d in deltas[:4]] == [ReasoningDelta] * 3 + [TextDelta]
    usage = next(d for d in deltas if isinstance(d, UsageDelta))
    assert (usage.output_tokens, usage.reasoning_tokens) == (8, 3)


async def test_request_options_override_provider_options() -> None:
    deltas = await drain(provider(output_tokens=50), request(options={"output_tokens": 4}))
    assert sum(isinstance(d, TextDelta) for d in deltas) == 4


# --- continuation -------------------------------------------------------------------------


async def test_prefill_continues_exactly_where_the_partial_answer_stopped() -> None:
    full = text(await drain(provider(3, output_tokens=40)))
    partial = full[:57]  # mid-word on purpose
    rest = await drain(provider(3, output_tokens=40), request(messages=[
        {"role": "user", "content": "Explain circuit breakers"},
        {"role": "assistant", "content": partial}]))
    assert partial + text(rest) == full


async def test_partial_answer_then_a_continue_turn_also_continues() -> None:
    full = text(await drain(provider(3, output_tokens=40)))
    partial = full[:80]
    rest = await drain(provider(3, output_tokens=40), request(messages=[
        {"role": "user", "content": "Explain circuit breakers"},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Continue exactly where you stopped."}]))
    assert partial + text(rest) == full


async def test_an_unrelated_assistant_turn_is_not_a_continuation() -> None:
    full = text(await drain(provider(3, output_tokens=40)))
    other = await drain(provider(3, output_tokens=40), request(messages=[
        {"role": "user", "content": "Explain circuit breakers"},
        {"role": "assistant", "content": "Something else entirely"}]))
    assert text(other) == full


async def test_prefill_can_be_refused() -> None:
    with pytest.raises(ProviderError) as caught:
        await drain(provider(reject_prefill=True), request(messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "He"}]))
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (
        "bad_request", 400, False)


# --- tools --------------------------------------------------------------------------------


WEATHER = Tool("get_weather", "Current weather for a city", {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "where": {"$ref": "#/$defs/Place"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "detailed": {"type": "boolean"},
    },
    "required": ["city", "unit", "where"],
    "additionalProperties": False,
    "$defs": {"Place": {"type": "object", "properties": {
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "country": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["lat", "country"]}},
})
CLOCK = Tool("get_time", "The time now in a timezone", {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})


def calls_of(deltas: list[Delta]) -> dict[str, Any]:
    out: dict[int, list[str]] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            call = out.setdefault(d.index, ["", ""])
            call[0] = call[0] or d.name or ""
            call[1] += d.arguments
    return {name: orjson.loads(args) for name, args in out.values()}


async def test_a_forced_tool_is_called_in_fragments_with_arguments_valid_for_its_schema(
) -> None:
    deltas = await drain(provider(), request("Find the docs", tools=(WEATHER,),
                                             tool_choice="get_weather"))
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert len(calls) >= 2 and calls[0].name == "get_weather" and calls[0].id
    assert all((c.id, c.name, c.index) == (None, None, 0) for c in calls[1:])
    jsonschema.validate(calls_of(deltas)["get_weather"], WEATHER.parameters)
    assert text(deltas) == "" and deltas[-1] == FinishDelta("tool_calls")


@pytest.mark.parametrize("choice", [None, "auto"])
async def test_auto_calls_the_tool_the_question_is_about(choice: str | None) -> None:
    deltas = await drain(provider(), request("What is the weather in Paris?",
                                             tools=(CLOCK, WEATHER), tool_choice=choice))
    args = calls_of(deltas)
    assert list(args) == ["get_weather"]
    jsonschema.validate(args["get_weather"], WEATHER.parameters)
    assert args["get_weather"]["city"] == "Paris"  # drawn from the user's words
    assert deltas[-1] == FinishDelta("tool_calls")


async def test_after_the_tool_result_it_answers_using_it() -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
    ]
    deltas = await drain(provider(), request(messages=messages, tools=(WEATHER,),
                                             tool_choice="auto"))
    assert not calls_of(deltas)
    assert "sunny, 21 C" in text(deltas) and deltas[-1] == FinishDelta("stop")


async def test_required_after_a_tool_result_calls_the_output_tool() -> None:
    # An agent framework's output tool (pydantic-ai's `final_result`) ends the run.
    final = Tool("final_result", "The final response", {
        "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    deltas = await drain(provider(), request(messages=messages, tools=(WEATHER, final),
                                             tool_choice="required"))
    assert list(calls_of(deltas)) == ["final_result"]


async def test_none_never_calls_and_unrelated_tools_are_not_called_twice() -> None:
    none = await drain(provider(), request(tools=(WEATHER,), tool_choice="none"))
    assert not calls_of(none) and text(none)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "noon"},
        {"role": "assistant", "content": "It is noon."},
        {"role": "user", "content": "Explain circuit breakers"},
    ]
    later = await drain(provider(), request(messages=messages, tools=(CLOCK,)))
    assert not calls_of(later) and text(later)


async def test_a_json_schema_response_format_streams_valid_json_in_chunks() -> None:
    schema = {k: v for k, v in WEATHER.parameters.items()}
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema,
                                                  "strict": True}}
    deltas = await drain(provider(), request("Weather in Oslo as JSON", response_format=fmt))
    pieces = [d for d in deltas if isinstance(d, TextDelta)]
    assert len(pieces) > 3
    jsonschema.validate(orjson.loads(text(deltas)), schema)
    assert deltas[-1] == FinishDelta("stop")
    assert deltas == await drain(provider(), request("Weather in Oslo as JSON",
                                                     response_format=fmt))  # deterministic


async def test_json_object_gives_an_object() -> None:
    deltas = await drain(provider(), request(response_format={"type": "json_object"}))
    assert isinstance(orjson.loads(text(deltas)), dict)


# --- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "status", "retryable"), [
    ("overloaded", 529, True), ("rate_limited", 429, True), ("provider_error", 500, True),
    ("timeout", 408, True), ("auth", 401, False), ("context_length", 400, False)])
async def test_injected_errors_fail_before_the_first_token(code: str, status: int,
                                                           retryable: bool) -> None:
    p = provider(error_rate=1.0, error_code=code, retry_after_s=1.5)
    with pytest.raises(ProviderError) as caught:
        await drain(p)
    err = caught.value
    assert (err.code, err.status, err.retry_after, err.retryable) == (
        code, status, 1.5, retryable)
    assert p.open_streams == 0 and p.calls == 1


async def test_error_rate_is_a_seeded_probability() -> None:
    async def pattern(seed: int) -> list[bool]:
        p = provider(seed, error_rate=0.5, output_tokens=1)
        out = []
        for _ in range(40):
            try:
                await drain(p)
                out.append(True)
            except ProviderError:
                out.append(False)
        return out

    first = await pattern(11)
    assert first == await pattern(11)
    assert 8 <= first.count(False) <= 32


async def test_fail_after_tokens_cuts_the_stream_without_a_finish() -> None:
    p = provider(fail_after_tokens=5)
    seen: list[Delta] = []
    with pytest.raises(ProviderError) as caught:
        async for d in p.stream(request()):
            seen.append(d)
    assert caught.value.code == "protocol_error" and caught.value.retryable
    assert [type(d) for d in seen] == [TextDelta] * 5
    assert p.open_streams == 0


async def test_stall_goes_silent_after_n_tokens() -> None:
    p = provider(stall_after_tokens=2)
    stream = p.stream(request())
    assert isinstance(await anext(stream), TextDelta)
    assert isinstance(await anext(stream), TextDelta)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.05)


# --- timing and stream bookkeeping ----------------------------------------------------------


async def test_time_to_first_token_and_pace_are_lower_bounds() -> None:
    p = provider(ttft_ms=40, tokens_per_s=500, output_tokens=10)
    start = time.perf_counter()
    stream = p.stream(request())
    await anext(stream)
    ttft = time.perf_counter() - start
    async for _ in stream:
        pass
    total = time.perf_counter() - start
    assert ttft >= 0.039
    assert total >= 0.039 + 10 / 500 - 0.002


async def test_open_streams_counts_live_streams_and_aclose_releases_them() -> None:
    p = provider()
    a, b = p.stream(request()), p.stream(request())
    await anext(a)
    await anext(b)
    assert (p.open_streams, p.calls) == (2, 2)
    await a.aclose()  # type: ignore[attr-defined]
    assert p.open_streams == 1
    async for _ in b:
        pass
    assert p.open_streams == 0
