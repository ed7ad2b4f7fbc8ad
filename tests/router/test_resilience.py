"""Continuation requests, the splice that joins a continuation without repeating text,
learned refusals and the hedge delay."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import parse_config
from router.resilience.continuation import CONTINUE_INSTRUCTION, Splice, continuation_messages
from router.resilience.policies import Resilience
from router.routing.settings import RoutingConfig
from router.routing.stats import StatsRegistry

USER = {"role": "user", "content": "Tell me a story"}


def splice_all(splice: Splice, pieces: list[str]) -> str:
    return "".join(splice.feed(p) for p in pieces) + splice.flush()


def test_prefill_continuation_moves_trailing_whitespace_out() -> None:
    messages, stripped = continuation_messages([USER], "Once upon a ", "prefill")
    assert messages == [USER, {"role": "assistant", "content": "Once upon a"}]
    assert stripped
    messages, stripped = continuation_messages([USER], "Once upon a", "prefill")
    assert messages[-1]["content"] == "Once upon a" and not stripped


def test_instruct_continuation_asks_to_continue_exactly() -> None:
    messages, stripped = continuation_messages([USER], "Once upon a ", "instruct")
    assert messages == [USER, {"role": "assistant", "content": "Once upon a "},
                        {"role": "user", "content": CONTINUE_INSTRUCTION}]
    assert not stripped


def test_a_callers_own_prefill_is_extended_not_duplicated() -> None:
    own = {"role": "assistant", "content": "Once"}
    messages, _ = continuation_messages([USER, own], " upon a time", "prefill")
    assert messages == [USER, {"role": "assistant", "content": "Once upon a time"}]


def test_splice_drops_whitespace_the_caller_already_has() -> None:
    splice = Splice("Once upon a ", strip_leading_ws=True, repeat_check=False)
    assert splice_all(splice, [" ", " time", " there"]) == "time there"


@pytest.mark.parametrize("pieces", [
    [" time there was a router that never dropped a token."],
    [" ti", "me there was a router", " that never dropped a token."],
])
def test_splice_passes_a_clean_continuation(pieces: list[str]) -> None:
    splice = Splice("Once upon a", strip_leading_ws=False, repeat_check=True)
    assert splice_all(splice, pieces) == " time there was a router that never dropped a token."


def test_splice_removes_a_repeat_at_the_seam() -> None:
    splice = Splice("The breaker opened after five failures", strip_leading_ws=False,
                    repeat_check=True)
    out = splice_all(splice, ["after five failures", " and traffic moved", " elsewhere."])
    assert out == " and traffic moved elsewhere."


def test_splice_removes_a_whole_restart() -> None:
    partial = "The breaker opened after five failures and"
    splice = Splice(partial, strip_leading_ws=False, repeat_check=True)
    pieces = ["The breaker ", "opened after five ", "failures and", " traffic moved."]
    assert splice_all(splice, pieces) == " traffic moved."


def test_splice_keeps_a_short_chance_match() -> None:
    splice = Splice("I said no", strip_leading_ws=False, repeat_check=True)
    # "no" ends the partial and starts the continuation: too short to be a repeat.
    assert splice_all(splice, ["no", "w is the time."]) == "now is the time."


def test_a_short_continuation_is_released_at_the_end() -> None:
    splice = Splice("A long partial answer that goes on", strip_leading_ws=False,
                    repeat_check=True)
    assert splice.feed(".") == ""
    assert splice.flush() == "."


@given(words=st.lists(st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8),
                      min_size=4, max_size=40, unique=True),
       cut=st.integers(1, 39), overlap=st.integers(0, 39), chunk=st.integers(1, 9))
def test_splice_never_duplicates_or_loses_text(words: list[str], cut: int, overlap: int,
                                               chunk: int) -> None:
    """A model that repeats any suffix (or all) of the partial answer before continuing:
    the caller ends up with the answer exactly once, however the text is chunked."""
    answer = " ".join(words) + "."
    cut_at = min(len(answer) - 1, cut * 3)
    partial, rest = answer[:cut_at], answer[cut_at:]
    repeat = partial[max(0, len(partial) - overlap * 2):]
    if 0 < len(repeat) < 8 or (repeat and not partial.endswith(repeat)):
        repeat = ""  # below the trimmed minimum: a model would not be trimmed either
    continuation = repeat + rest
    pieces = [continuation[i:i + chunk] for i in range(0, len(continuation), chunk)]
    splice = Splice(partial, strip_leading_ws=False, repeat_check=True)
    joined = partial + splice_all(splice, pieces)
    # Distinct words: a text that repeats itself is ambiguous to any splice (documented).
    assert joined == answer


def _loaded(**resilience: Any) -> Any:
    return parse_config({
        "version": 1,
        "providers": {"sim": {"kind": "simulated"}},
        "deployments": [
            {"id": "a", "provider": "sim", "model": "m", "capabilities": ["prefill"],
             "price": {"input_per_mtok": 1, "output_per_mtok": 1}, "context_window": 1000,
             "latency_prior": {"ttft_ms": 200, "tokens_per_s": 10}},
            {"id": "b", "provider": "sim", "model": "m",
             "price": {"input_per_mtok": 1, "output_per_mtok": 1}, "context_window": 1000,
             "latency_prior": {"ttft_ms": 300, "tokens_per_s": 10}},
        ],
        "tasks": {"hedged": {"candidates": ["a", "b"], "hedge": {"enabled": True,
                                                                 "after_ms": 120}}},
        "resilience": resilience,
    }, "r.yaml", env={})


def test_continuation_ways_follow_capability_and_learned_refusals() -> None:
    loaded = _loaded()
    res = Resilience(loaded)
    a, b = loaded.deployments["a"], loaded.deployments["b"]
    assert res.continuation_ways(a) == ["prefill", "instruct"]
    assert res.continuation_ways(b) == ["instruct"]
    res.learn_refusal("a", "prefill")
    assert res.continuation_ways(a) == ["instruct"]
    res.learn_refusal("a", "instruct")  # refused both: still try the last way
    assert res.continuation_ways(a) == ["instruct"]
    assert res.refusals() == {"a": ["instruct", "prefill"]}


def test_hedge_delay_from_task_or_default_and_live_p95() -> None:
    loaded = _loaded(hedge={"enabled": True, "after_ms": "p95"})
    res = Resilience(loaded)
    stats = StatsRegistry(RoutingConfig(max_weight=1000))
    a = loaded.deployments["a"]
    assert res.hedge_after_s("hedged", a, stats) == pytest.approx(0.12)  # the task's own
    assert res.hedge_after_s(None, a, stats) == pytest.approx(0.4)  # 2x prior, no samples
    for ms in range(1, 101):
        stats.observe_ttft("a", float(ms))
    # The estimator's decayed p95 (log bins 10% wide).
    assert res.hedge_after_s(None, a, stats) == pytest.approx(0.095, rel=0.1)
    assert Resilience(_loaded()).hedge_after_s(None, a, stats) is None  # off by default
