"""The continuation of a stream that died mid-answer.

Continuation (`resilience.resume: continue`): when a stream fails after text was sent, the
next deployment is asked for the rest of the answer, in one of two ways:

- `prefill`, for deployments with the `prefill` capability: the partial answer is sent as
  the final assistant message and the model continues it. Trailing whitespace is moved out
  of the prefill (some APIs refuse a prefill ending in whitespace) and the whitespace the
  continuation then starts with is dropped, since the caller already has it.
- `instruct`, for the others: the partial answer as an assistant turn, then a user turn
  asking to continue exactly. Models sometimes repeat the end of the partial answer (or
  all of it); the `Splice` removes such a repeat so the caller never sees text twice.

A deployment that refuses a way (a 400 before any token) is remembered and the other way
is used; the refusal never replaces the original failure in what the caller sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from providers.base import estimate_tokens

Way = Literal["prefill", "instruct"]

CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off mid-way. Continue it exactly from the point where it "
    "stopped: do not repeat any of it, add no preamble or commentary, output only the rest."
)
# The shortest repeat at the seam that is trimmed: shorter matches are likely chance.
_MIN_OVERLAP = 8
# How much continuation text is held back to look for a repeat before it is sent.
_LOOKAHEAD = 48


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def continuation_messages(messages: Sequence[Mapping[str, Any]], partial: str,
                          way: Way) -> tuple[list[Mapping[str, Any]], bool]:
    """The conversation that asks for the rest of `partial`. Returns it and whether
    whitespace was moved out of the prefill (the continuation's leading whitespace is then
    dropped)."""
    out = list(messages)
    if out and out[-1].get("role") == "assistant":
        # The caller's own prefill: the partial answer continues it.
        earlier = _content_text(out[-1].get("content"))
        if earlier is not None:
            out.pop()
            partial = earlier + partial
    if way == "prefill":
        kept = partial.rstrip()
        out.append({"role": "assistant", "content": kept})
        return out, len(kept) < len(partial)
    out.append({"role": "assistant", "content": partial})
    out.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    return out, False


class Splice:
    """Joins a continuation's text onto what the caller already has, removing whitespace
    the caller already has and any text the model repeated. Per text delta until decided,
    then not at all (`done`)."""

    __slots__ = ("_buf", "_matched", "_partial", "_repeat_check", "_strip", "done")

    def __init__(self, partial: str, *, strip_leading_ws: bool, repeat_check: bool) -> None:
        self._partial = partial
        self._strip = strip_leading_ws
        self._repeat_check = repeat_check and bool(partial)
        self._buf = ""
        self._matched = -1  # >= 0: dropping a repeat of the partial answer from its start
        self.done = not (strip_leading_ws or self._repeat_check)

    def feed(self, text: str) -> str:
        """Text to send for one continuation delta ("" while holding back)."""
        if self.done:
            return text
        if self._strip:
            text = text.lstrip()
            if not text:
                return ""
            self._strip = False
            if not self._repeat_check:
                self.done = True
                return text
        if self._matched >= 0:
            return self._drop_repeat(text)
        self._buf += text
        if len(self._buf) < min(_LOOKAHEAD, len(self._partial) + 1):
            return ""
        return self._decide()

    def flush(self) -> str:
        """At the end of the continuation: whatever is still held back."""
        if self.done or self._matched >= 0:
            self.done = True
            return ""
        return self._decide(final=True)

    def _decide(self, final: bool = False) -> str:
        """Does the held-back text repeat a tail of the partial answer (all of it, when the
        model started over)? The longest such repeat is dropped, or followed while it
        goes on; otherwise the text is sent as is."""
        buf, partial = self._buf, self._partial
        self._buf = ""
        for start in range(len(partial) - _MIN_OVERLAP + 1):
            tail = partial[start:]
            if len(buf) >= len(tail):
                if buf.startswith(tail):
                    self.done = True
                    return buf[len(tail):]
            elif not final and tail.startswith(buf):
                # Still repeating: keep dropping. Not at the end: a short last piece that
                # merely occurs in the partial answer is new text, not a repeat to the seam.
                self._matched = start + len(buf)
                return ""
        self.done = True
        return buf

    def _drop_repeat(self, text: str) -> str:
        partial, i = self._partial, self._matched
        n = 0
        while n < len(text) and i < len(partial) and text[n] == partial[i]:
            n += 1
            i += 1
        self._matched = i
        if n == len(text) and i < len(partial):
            return ""  # still repeating
        self.done = True
        self._matched = -1
        return text[n:]


def added_input_tokens(original: Sequence[Mapping[str, Any]],
                       continued: Sequence[Mapping[str, Any]]) -> int:
    """The input a continuation adds to the request (the partial answer, an instruction):
    billed, so counted in its attempt's input estimate."""
    def size(ms: Sequence[Mapping[str, Any]]) -> int:
        return sum(4 + estimate_tokens(str(m.get("content") or "")) for m in ms)

    return max(0, size(continued) - size(original))
