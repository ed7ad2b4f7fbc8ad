"""Whether and how the next candidate takes over an answer that failed: the resume mode,
and what the spending limit and the caller's `max_tokens` still allow. Decisions read from
the request's books (`Ledger`); `router.serving.failover` acts on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from router.config.schema import Deployment
from router.events import ResumeMode
from router.resilience.continuation import Way, added_input_tokens, continuation_messages
from router.routing.cost import input_cost
from router.serving.ledger import Ledger


def content_sent(ledger: Ledger) -> int:
    """Content deltas the caller was shown, over every attempt."""
    attempts = ledger.attempts
    return sum(a.content_deltas for a in attempts) if attempts else 0


def resume_mode(resume: str, ledger: Ledger, sent: int) -> ResumeMode | None:
    """How the next candidate takes over an answer of which `sent` deltas were shown
    (`resume`: the configured `resilience.resume`)."""
    if not sent:
        return None
    return "restart" if resume == "restart" or ledger.tool_calls else "continue"


def affordable(ledger: Ledger, dep: Deployment, input_tokens: int,
               messages: Sequence[Mapping[str, Any]], way: Way | None) -> bool:
    """A resumed attempt bills its input (with the partial answer when continuing, asked
    `way`) before its first chunk: start none the spending limit cannot pay for, so that
    the limit is passed by one chunk at most."""
    limit = ledger.limit_usd
    if limit is None:
        return True
    tokens = input_tokens
    if way is not None:  # the continuation request as it will be sent
        asked, _ = continuation_messages(messages, ledger.text(), way)
        tokens += added_input_tokens(messages, asked)
    return ledger.cost_usd() + input_cost(dep.price, tokens) < limit


def hedge_affordable(ledger: Ledger, dep: Deployment, hedge: Deployment,
                     input_tokens: int) -> bool:
    """Both `dep` and its `hedge` bill their input: the spending limit must pay for both."""
    limit = ledger.limit_usd
    if limit is None:
        return True
    both = input_cost(dep.price, input_tokens) + input_cost(hedge.price, input_tokens)
    return ledger.cost_usd() + both < limit


def tokens_left(asked: int, ledger: Ledger, answer_from: int) -> int:
    """What a continuation may still produce of the answer's `max_tokens` (`asked`), the
    answer's attempts beginning at `answer_from`."""
    return asked - sum(a.output_tokens for a in ledger.attempts[answer_from:])
