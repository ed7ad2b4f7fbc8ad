"""Normalizing what a caller passes to `stream()`: messages, system prompts, tools in any
of the three common shapes, tool_choice, and the routing constraints that task defaults
and explicit arguments produce."""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import Tool
from router.config import LoadedConfig
from router.request import PreparedRequest, RequestError, StreamParams, prepare

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}


@pytest.fixture(scope="module")
def loaded(fleet: Any) -> LoadedConfig:
    cfg: LoadedConfig = fleet.load(fleet.config(tasks={
        "brief": {"candidates": ["fast", "mid"], "prefer": "latency", "max_ttft_ms": 500,
                  "max_latency_ms": 3000, "max_cost_usd": 0.01, "expected_output_tokens": 80,
                  "system": "Be brief.", "requires": ["reasoning"]},
        "capped": {"candidates": ["mid"], "max_tokens": 64},
    }))
    return cfg


def prep(loaded: LoadedConfig, input: Any = "hi", **kw: Any) -> PreparedRequest:
    return prepare(StreamParams(input=input, **kw), loaded)


def refused(loaded: LoadedConfig, input: Any = "hi", **kw: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        prep(loaded, input, **kw)
    return caught.value


def test_a_string_is_one_user_message(loaded: LoadedConfig) -> None:
    req = prep(loaded, "Explain breakers")
    assert req.messages == [{"role": "user", "content": "Explain breakers"}]
    assert req.system is None


def test_system_messages_are_lifted_out_and_joined(loaded: LoadedConfig) -> None:
    req = prep(loaded, [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "assistant", "content": "hello"},
    ], system="You are a router.")
    assert req.system == "You are a router.\n\nBe kind.\n\nBe brief."
    assert [m["role"] for m in req.messages] == ["user", "assistant"]


def test_tool_messages_pass_through_unchanged(loaded: LoadedConfig) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert prep(loaded, messages).messages == messages


@pytest.mark.parametrize(("input", "message"), [
    ("", "input: the prompt is empty"),
    ("  \n", "input: the prompt is empty"),
    ([], "input: Input should be a valid string, or List should have at least 1 item"),
    ([{"role": "robot", "content": "x"}], "input[0].role: Input should be 'system', 'user',"),
    ([{"role": "user", "content": "x"}, "text"], "input[1]: Input should be a valid dict"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}],
     "input[0].content[0].text: Input should be a valid string"),
    ([{"role": "system", "content": "x"}], "input: no user message"),
])
def test_bad_input_is_refused(loaded: LoadedConfig, input: Any, message: str) -> None:
    err = refused(loaded, input)
    assert err.code == "bad_request" and err.message.startswith(message)


@pytest.mark.parametrize("spec", [
    {"type": "function", "function": {"name": "search", "description": "Search",
                                      "parameters": SCHEMA}},
    {"name": "search", "description": "Search", "input_schema": SCHEMA},
    {"name": "search", "description": "Search", "parameters": SCHEMA},
], ids=["openai", "anthropic", "plain"])
def test_tools_in_every_shape_normalize_alike(loaded: LoadedConfig, spec: Any) -> None:
    req = prep(loaded, tools=[spec])
    assert req.tools == (Tool("search", "Search", SCHEMA),)
    assert "tools" in req.constraints.requires


def test_a_tool_without_parameters_takes_an_empty_object(loaded: LoadedConfig) -> None:
    assert prep(loaded, tools=[{"name": "now"}]).tools[0].parameters == {
        "type": "object", "properties": {}}


def test_tool_choice_none_does_not_require_tool_support(loaded: LoadedConfig) -> None:
    req = prep(loaded, tools=[{"name": "now"}], tool_choice="none")
    assert "tools" not in req.constraints.requires and req.tool_choice == "none"


@pytest.mark.parametrize(("choice", "normalized"), [
    ("auto", "auto"), ("required", "required"), ("now", "now"),
    ({"type": "function", "function": {"name": "now"}}, "now"),
    ({"name": "now"}, "now"),
])
def test_tool_choice_shapes(loaded: LoadedConfig, choice: Any, normalized: str) -> None:
    assert prep(loaded, tools=[{"name": "now"}], tool_choice=choice).tool_choice == normalized


@pytest.mark.parametrize(("kw", "message"), [
    ({"tools": [{"name": "now"}], "tool_choice": "later"}, "tool_choice: no tool named 'later'"),
    ({"tools": [{"name": "now"}], "tool_choice": {"function": {}}},
     "tool_choice: expected a tool name"),
    ({"tools": [{"parameters": {}}]}, "tools[0]: expected a tool with a name"),
    ({"task": "nope"}, "unknown task 'nope' (expected one of: general, cheap, quick, best, "
                       "brief, capped)"),
    ({"model": "nope"}, "unknown model 'nope' (expected a deployment id: fast, mid, strong)"),
    ({"prefer": "speed"}, "prefer: Input should be 'cost', 'latency', 'quality' or 'balanced'"),
    ({"max_ttft_ms": 0}, "max_ttft_ms: Input should be greater than 0"),
    ({"max_cost_usd": -0.5}, "max_cost_usd: Input should be greater than 0"),
    ({"max_tokens": -1}, "max_tokens: Input should be greater than 0"),
    ({"max_tokens": True}, "max_tokens: Input should be a valid integer"),
    ({"max_cost_usd": float("nan")}, "max_cost_usd: Input should be a finite number"),
    ({"system": 5}, "system: Input should be a valid string"),
    ({"metadata": []}, "metadata: Input should be a valid dictionary"),
    # At the edges of the checks that let plain arguments skip the schema (`_PLAIN`):
    ({"max_ttft_ms": 0.0}, "max_ttft_ms: Input should be greater than 0"),
    ({"max_latency_ms": float("inf")}, "max_latency_ms: Input should be a finite number"),
    ({"max_ttft_ms": 86_400_000.5},
     "max_ttft_ms: Input should be less than or equal to 86400000"),
    ({"temperature": 2.5}, "temperature: Input should be less than or equal to 2"),
    ({"temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
    ({"max_tokens": 100_000_001}, "max_tokens: Input should be less than or equal to 100000000"),
    ({"metadata": {1: "x"}}, "metadata[1]: Input should be a valid string"),
    ({"prefer": "Cost"}, "prefer: Input should be 'cost', 'latency', 'quality' or 'balanced'"),
])
def test_bad_options_are_refused_with_a_clear_message(loaded: LoadedConfig, kw: dict[str, Any],
                                                      message: str) -> None:
    err = refused(loaded, **kw)
    assert (err.code, err.message) == ("bad_request", message)


@pytest.mark.parametrize("kw", [
    {"max_ttft_ms": 86_400_000.0, "max_latency_ms": 1e-9, "max_cost_usd": 1e6,
     "temperature": 0.0, "max_tokens": 100_000_000},
    {"temperature": 2.0, "prefer": "cost", "stop": "END", "metadata": {"user": "ann"}},
    {"max_ttft_ms": 500, "max_tokens": 10, "temperature": 1},  # ints where floats are asked
])
def test_valid_options_at_their_bounds_are_accepted(loaded: LoadedConfig,
                                                    kw: dict[str, Any]) -> None:
    prep(loaded, **kw)


def test_default_task_applies_when_neither_task_nor_model_is_given(
        loaded: LoadedConfig) -> None:
    req = prep(loaded)
    assert req.task == "general"
    assert req.constraints.candidates == ("mid", "fast", "strong")
    assert req.constraints.prefer == "balanced" and not req.constraints.pinned


def test_task_supplies_budgets_prefer_system_and_requirements(loaded: LoadedConfig) -> None:
    c = prep(loaded, task="brief").constraints
    assert (c.candidates, c.prefer, c.max_ttft_ms, c.max_latency_ms, c.max_cost_usd) == (
        ("fast", "mid"), "latency", 500, 3000, 0.01)
    assert c.output_tokens == 80 and c.requires == {"reasoning"}
    assert prep(loaded, task="brief").system == "Be brief."


def test_explicit_arguments_override_the_task(loaded: LoadedConfig) -> None:
    req = prep(loaded, task="brief", prefer="cost", max_ttft_ms=100, max_latency_ms=200,
               max_cost_usd=0.5, max_tokens=30, system="Be long.")
    c = req.constraints
    assert (c.prefer, c.max_ttft_ms, c.max_latency_ms, c.max_cost_usd) == (
        "cost", 100, 200, 0.5)
    assert c.output_tokens == 30 and req.max_tokens == 30
    assert req.system == "Be long."


def test_output_estimate_order_max_tokens_then_task_then_default(
        loaded: LoadedConfig) -> None:
    assert prep(loaded, task="brief", max_tokens=20).constraints.output_tokens == 20
    assert prep(loaded, task="capped").constraints.output_tokens == 64
    assert prep(loaded, task="capped").max_tokens == 64
    assert prep(loaded, task="brief").constraints.output_tokens == 80
    default = loaded.config.defaults.expected_output_tokens
    assert prep(loaded, task="general").constraints.output_tokens == default


def test_a_pinned_model_is_the_only_candidate_and_ignores_the_default_task(
        loaded: LoadedConfig) -> None:
    req = prep(loaded, model="strong")
    assert req.constraints.candidates == ("strong",) and req.constraints.pinned
    assert req.task is None


def test_input_estimate_grows_with_the_conversation_and_tools(loaded: LoadedConfig) -> None:
    short = prep(loaded, "hi").constraints.input_tokens
    long = prep(loaded, "hi " * 400).constraints.input_tokens
    assert long >= short + 290  # ~4 characters a token
    with_tools = prep(loaded, "hi", tools=[{"name": "s", "parameters": SCHEMA}])
    assert with_tools.constraints.input_tokens > short


def test_stop_and_metadata_are_normalized(loaded: LoadedConfig) -> None:
    assert prep(loaded, stop="END").stop == ("END",)
    assert prep(loaded, stop=["a", "b"]).stop == ("a", "b")
    assert prep(loaded).stop == ()
    meta = {"user": "u1"}
    req = prep(loaded, metadata=meta)
    assert req.metadata == meta and req.metadata is not meta


def test_every_argument_lands_in_its_own_field(loaded: LoadedConfig) -> None:
    # `prepare` builds the request and its constraints positionally: a swap of two fields of
    # one type would pass the type checker, not this.
    req = prep(loaded, "hi", task="brief", prefer="cost", max_ttft_ms=101.0,
               max_latency_ms=202.0, max_cost_usd=0.303, max_tokens=44, temperature=0.5,
               system="S", tools=[{"name": "t", "parameters": SCHEMA}], tool_choice="t",
               stop="END", metadata={"user": "u"}, response_format={"type": "json_object"},
               params={"seed": 7})
    assert (req.system, req.tool_choice, req.stop, req.max_tokens, req.temperature) == (
        "S", "t", ("END",), 44, 0.5)
    assert (req.tools[0].name, req.response_format, req.params, req.task, req.metadata) == (
        "t", {"type": "json_object"}, {"seed": 7}, "brief", {"user": "u"})
    assert req.messages == [{"role": "user", "content": "hi"}]
    c = req.constraints
    assert (c.candidates, c.prefer, c.output_tokens, c.max_ttft_ms, c.max_latency_ms,
            c.max_cost_usd, c.task, c.pinned) == (
        ("fast", "mid"), "cost", 44, 101.0, 202.0, 0.303, "brief", False)
    assert c.requires == {"reasoning", "tools", "structured_output"} and c.params == {"seed"}
    assert c.input_tokens > 0
