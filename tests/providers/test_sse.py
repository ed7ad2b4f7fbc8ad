"""The SSE decoder against the WHATWG rules, every recorded transcript under every
chunking, and a literal reference implementation of the spec (hypothesis)."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.sse import SSEDecoder, SSEEvent, aiter_sse

TRANSCRIPTS = Path(__file__).parent.parent / "transcripts"
SSE_FILES = sorted(TRANSCRIPTS.glob("*/*.sse"))


def reference(stream: bytes) -> list[tuple[str, str, str | None]]:
    """The spec's algorithm, line by line on the fully decoded text (slow, obviously right)."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    lines.pop()  # what follows the last line end is not a line (EOF mid-line)
    out: list[tuple[str, str, str | None]] = []
    data, event, last_id = "", "", None
    for line in lines:
        if line == "":
            if data:
                out.append((event or "message", data[:-1] if data.endswith("\n") else data,
                            last_id))
            data, event = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
    return out


def decode(chunks: list[bytes]) -> list[tuple[str, str, str | None]]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return [(e.event, e.data, e.id) for e in out]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- spec cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending_frames_events(eol: bytes) -> None:
    stream = eol.join([b"data: one", b"", b"event: x", b"data: two", b"", b""])
    assert decode([stream]) == [("message", "one", None), ("x", "two", None)]


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode([b"data: a\r\n\rdata: b\n\r\ndata: c\r\r"]) == [
        ("message", "a", None), ("message", "b", None), ("message", "c", None)
    ]


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    # Were CR and LF counted twice, "a" would be dispatched before "b" joined it.
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [("message", "a\nb", None)]


def test_lone_cr_then_other_byte_across_chunks() -> None:
    assert decode([b"data: a\r", b"\r", b"data: b\r", b"\r"]) == [
        ("message", "a", None), ("message", "b", None)
    ]


def test_one_leading_bom_is_stripped_even_when_split() -> None:
    assert decode([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [("message", "x", None)]
    # Only one: a second BOM makes the field name "\ufeffdata", which is ignored.
    assert decode([b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n"]) == [("message", "y", None)]


def test_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    assert decode([b"\xef", b"data: x\n\n"]) == []  # "\ufffddata" is an unknown field
    assert decode([b"d", b"ata: x\n\n"]) == [("message", "x", None)]


def test_comments_are_counted_and_never_dispatched() -> None:
    dec = SSEDecoder()
    events = dec.feed(b": OPENROUTER PROCESSING\n\n: keep-alive\n\n:\n\n")
    assert events == []
    assert dec.comments == 3


def test_multiline_data_is_joined_with_lf() -> None:
    assert decode([b'data: {"a":\ndata:  1}\n\n']) == [("message", '{"a":\n 1}', None)]


def test_only_one_leading_space_is_removed() -> None:
    assert decode([b"data:x\n\ndata:  y\n\n"]) == [("message", "x", None), ("message", " y", None)]


def test_field_without_colon_and_empty_data() -> None:
    # "data" alone appends an empty line: an event whose data is "" IS dispatched.
    assert decode([b"data\n\n"]) == [("message", "", None)]
    assert decode([b"data\ndata\n\n"]) == [("message", "\n", None)]


def test_event_without_data_is_not_dispatched_and_resets_type() -> None:
    assert decode([b"event: ping\n\ndata: x\n\n"]) == [("message", "x", None)]


def test_id_persists_and_nul_ids_are_ignored() -> None:
    dec = SSEDecoder()
    events = dec.feed(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


def test_retry_only_when_all_digits() -> None:
    dec = SSEDecoder()
    dec.feed(b"retry: 1500\n\nretry: 12x\n\nretry: -1\n\n")
    assert dec.retry == 1500


def test_unterminated_final_event_is_dropped() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\ndata: b\n") == [SSEEvent("message", "a", None, None)]
    assert dec.pending  # EOF now would drop "b": the adapter must notice
    dec2 = SSEDecoder()
    dec2.feed(b"data: a\n\n")
    assert not dec2.pending


def test_utf8_split_inside_a_character() -> None:
    payload = "data: é👋€\n\n".encode()
    for cut in range(len(payload)):
        assert decode(split_at(payload, [cut])) == [("message", "é👋€", None)]


def test_unicode_line_separators_are_not_line_ends() -> None:
    text = "data: a\u2028b\u0085c\x1cd\u2029e\n\n"
    assert decode([text.encode()]) == [("message", "a\u2028b\u0085c\x1cd\u2029e", None)]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode([b"data: a\xffb\n\n"]) == [("message", "a\ufffdb", None)]


def test_unknown_fields_are_ignored_but_kept_as_stray() -> None:
    dec = SSEDecoder()
    events = dec.feed(b'data: x\n\n{\n  "error": {\n    "code": 503\n  }\n}\n')
    assert [e.data for e in events] == ["x"]
    assert dec.stray == [b"{", b'  "error": {', b'    "code": 503', b"  }", b"}"]


async def test_aiter_sse_over_an_async_byte_iterator() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b"data: a", b"\r", b"\n\r\n: c\n\ndata: b\n", b"\n"):
            yield piece

    dec = SSEDecoder()
    events = [e async for e in aiter_sse(chunks(), dec)]
    assert [e.data for e in events] == ["a", "b"]
    assert dec.comments == 1


# --- transcripts --------------------------------------------------------------------------


def test_transcripts_present() -> None:
    assert len(SSE_FILES) >= 30


@pytest.mark.parametrize("path", SSE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_transcript_whole_and_byte_by_byte_match_reference(path: Path) -> None:
    data = path.read_bytes()
    expected = reference(data)
    assert expected, "every transcript has events"
    assert decode([data]) == expected
    assert decode([data[i : i + 1] for i in range(len(data))]) == expected


@pytest.mark.parametrize("path", SSE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_transcript_split_in_two_at_every_byte(path: Path) -> None:
    data = path.read_bytes()
    # Quadratic: big files take ~300 cuts (the byte-by-byte test covers every boundary).
    step = len(data) // 300 + 1 if len(data) > 6000 else 1
    cuts = range(0, len(data) + 1, step)
    expected = decode([data])
    for cut in cuts:
        assert decode([data[:cut], data[cut:]]) == expected, cut


def test_unterminated_transcripts_lose_their_final_event() -> None:
    # sdk-*.sse lack the final newline: the spec drops `message_stop`.
    data = (TRANSCRIPTS / "anthropic" / "sdk-basic-text.sse").read_bytes()
    events = decode([data])
    assert events[-1][0] == "message_delta"
    assert decode([data + b"\n\n"])[-1][0] == "message_stop"


def test_crlf_transcript_equals_its_lf_version() -> None:
    data = (TRANSCRIPTS / "openai" / "pydantic-text-include-usage.sse").read_bytes()
    assert decode([data.replace(b"\n", b"\r\n")]) == decode([data])
    assert decode([data.replace(b"\n", b"\r")]) == decode([data])


# --- property: any stream, any chunking ---------------------------------------------------

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
_line = st.one_of(
    st.just(""),
    st.sampled_from([":", ": keep-alive", "event: x", "id: 7", "retry: 10", "data", "bogus"]),
    st.text(alphabet=_chars, max_size=12).map(
        lambda s: "data: " + s
    ),
    st.text(alphabet=_chars, max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_line, max_size=25),
    eols=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=25, max_size=25),
    bom=st.booleans(),
    tail=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_chunking_matches_the_reference(
    lines: list[str], eols: list[str], bom: bool, tail: bool, cuts: list[int]
) -> None:
    text = "".join(line + eol for line, eol in zip(lines, eols, strict=False))
    if tail:
        text += "data: unterminated"
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    cuts = [c for c in cuts if c <= len(data)]
    assert decode(split_at(data, cuts)) == reference(data)


def test_leftover_holds_what_was_not_sse() -> None:
    dec = SSEDecoder()
    dec.feed(b'data: x\n\n{"error": {\n"code": 503}')
    assert dec.leftover() == b'{"error": {\n"code": 503}'


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_line, max_size=25),
    eols=st.lists(st.sampled_from(["\n", "\n", "\r", "\r\n"]), min_size=25, max_size=25),
    bom=st.booleans(),
)
def test_chunks_of_whole_events_match_the_reference(
    lines: list[str], eols: list[str], bom: bool
) -> None:
    # Network chunks that are exactly one event each (`data: ...` then a blank line): the
    # decoder's one-scan path for them must agree with the line loop, whatever came before
    # (a pending event type or data line, a CR at a chunk's end, a BOM at the start).
    text = "".join(line + eol for line, eol in zip(lines, eols, strict=False))
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    cuts = [m.end() for m in re.finditer(rb"\n\n", data)]
    assert decode(split_at(data, cuts)) == reference(data)


def test_a_whole_event_chunk_after_pending_fields_keeps_them() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"event: delta\n") == []
    assert dec.feed(b"data: a\n") == []
    assert dec.feed(b"data: b\n\n") == [SSEEvent("delta", "a\nb", None, None)]
    assert dec.feed(b"data: c\n\n") == [SSEEvent("message", "c", None, None)]


def test_several_whole_events_in_one_read() -> None:
    # Streams that waited for the loop get several events per read; the id set by an
    # earlier read is carried, and a payload of several lines is still joined by LF.
    dec = SSEDecoder()
    dec.feed(b"id: 7\ndata: first\n\n")
    events = dec.feed(b"data: a\n\ndata: \n\ndata: [DONE]\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("", "7"), ("[DONE]", "7")]
    assert dec.feed(b"data: a\n\ndata: b\ndata: c\n\n") == [
        SSEEvent("message", "a", "7", None), SSEEvent("message", "b\nc", "7", None)]
    assert dec.feed(b"data: a\n\ndata: b\n\n\n\n") == [
        SSEEvent("message", "a", "7", None), SSEEvent("message", "b", "7", None)]
    assert not dec.pending


def test_whole_events_that_start_a_stream() -> None:
    # The first read of a short answer often holds most of it: it takes the whole-event
    # paths too (no BOM can precede `data: `), invalid UTF-8 replaced in its own payload,
    # unless the first bytes of a possible BOM are held, which then belong to the line.
    events = SSEDecoder().feed(b"data: a\xe2\x82\n\ndata: \xffb\n\ndata: [DONE]\n\n")
    assert [e.data for e in events] == ["a\ufffd", "\ufffdb", "[DONE]"]
    assert SSEDecoder().feed(b"data: x\n\n") == [SSEEvent("message", "x", None, None)]
    dec = SSEDecoder()
    assert dec.feed(b"\xef\xbb") == []
    assert [e.data for e in dec.feed(b"data: x\n\ndata: y\n\n")] == ["y"]
    assert dec.stray == [b"\xef\xbbdata: x"]
