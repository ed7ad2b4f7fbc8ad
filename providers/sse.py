"""One Server-Sent Events decoder for every HTTP provider.

Follows the WHATWG HTML Living Standard, "Parsing an event stream" and "Interpreting an
event stream" (https://html.spec.whatwg.org/multipage/server-sent-events.html
#parsing-an-event-stream):

- lines end with CRLF, LF or a lone CR, mixed freely; a CR at the end of one network chunk
  followed by an LF at the start of the next is one line end, not two;
- one leading U+FEFF BOM is stripped;
- lines starting with `:` are comments (counted in `SSEDecoder.comments`, never dispatched,
  so keep-alives are never mistaken for content);
- `data` lines append to a buffer joined with `\\n`; `event`, `id`, `retry` fields;
  unknown field names are ignored (kept in `SSEDecoder.stray`, see there);
- an event is dispatched only at a blank line; an event with empty data is not dispatched;
  at end of stream an unterminated event is discarded (`SSEDecoder.pending` says whether
  there was one).

The decoder works on bytes: line ends are ASCII, so splitting bytes never cuts a UTF-8
character, and payloads are decoded once per event. `str.splitlines` is never used: it
also splits on U+2028, U+0085 and friends, which may appear unescaped inside JSON strings.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["SSEDecoder", "SSEEvent", "aiter_sse"]

_BOM = b"\xef\xbb\xbf"
_STRAY_MAX_LINES = 512  # bound the memory a misbehaving server can make us keep


class SSEEvent:
    """One dispatched event. `event` defaults to "message"; `id` is the last event id
    seen so far in the stream (the spec's persistent "last event ID"); `retry` is the
    reconnection time set by this stream, in ms."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, event: str, data: str, id: str | None, retry: int | None) -> None:
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.event, self.data, self.id, self.retry) == (
            other.event, other.data, other.id, other.retry
        )

    __hash__ = None  # type: ignore[assignment]  # mutable value object

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data!r}, id={self.id!r})"


class SSEDecoder:
    """Incremental decoder: `feed(bytes) -> list[SSEEvent]`, chunks split anywhere.

    Attributes a caller may read:
    - `comments`: number of comment lines seen (keep-alives such as `: ping`).
    - `stray`: lines whose field name is unknown, verbatim (at most 512). A conforming
      parser ignores them; an adapter may inspect them after the stream ended (a raw JSON
      error body appended after the events, as Gemini was seen to send).
    - `pending`: true while an event is being accumulated (at EOF: it will be dropped).
    """

    __slots__ = (
        "_buf",
        "_data",
        "_event",
        "_head",
        "_last_id",
        "_retry",
        "_skip_lf",
        "_started",
        "_stray",
        "comments",
    )

    def __init__(self) -> None:
        # Pieces of the incomplete last line (no CR/LF in it), and the data lines of the
        # event being read: None while there are none (most of the time: a list each would
        # be two more objects per live stream for the garbage collector to walk).
        self._buf: list[bytes] | None = None
        self._data: list[bytes] | None = None
        self._event = b""
        self._head = b""  # first bytes while we cannot yet tell whether they are a BOM
        self._last_id: str | None = None
        self._retry: int | None = None
        self._skip_lf = False  # previous chunk ended with CR: a leading LF belongs to it
        self._started = False
        self.comments = 0
        self._stray: list[bytes] | None = None  # made at the first stray line

    @property
    def stray(self) -> list[bytes]:
        return self._stray if self._stray is not None else []

    @property
    def pending(self) -> bool:
        return bool(self._data or self._event or self._buf)

    def leftover(self) -> bytes:
        """What was not SSE: the stray lines and the unterminated tail, joined by LF.
        Read at end of stream to recognize a plain JSON error body sent instead of (or
        after) the events."""
        return b"\n".join([*self.stray, b"".join(self._buf or ())])

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    @property
    def retry(self) -> int | None:
        return self._retry

    def _lines(self, chunk: bytes) -> tuple[bytes, int]:
        """The bytes holding complete lines, LF-normalized, and the first LF's index
        (-1: no complete line yet; the bytes were buffered)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not self._started:
            chunk = self._head + chunk
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._head = chunk
                return b"", -1
            self._started = True
            self._head = b""
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if b"\r" in chunk:
            # Normalize to LF. A trailing CR already ends its line; remember to swallow
            # an LF that may start the next chunk.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = chunk.find(b"\n")
        if end < 0:
            if chunk:
                self._keep(chunk)
            return b"", -1
        if self._buf:
            head = b"".join(self._buf)
            self._buf = None
            return head + chunk, end + len(head)
        return chunk, end

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode the next bytes; return the events completed by them (often none)."""
        # The usual network chunk is one whole event, `data: <payload>\n\n`, arriving with
        # nothing pending: one scan for its first line end says so, no line loop. A chunk
        # starting with `data: ` holds no BOM, so the first one of a stream takes the fast
        # paths too (unless the bytes of a possible BOM are held).
        end = chunk.find(b"\n")
        if end == len(chunk) - 2 and chunk.startswith(b"data: ") and chunk[-1] == 0x0A and (
                not (self._head or self._buf or self._data or self._event or self._skip_lf)
                and b"\r" not in chunk):
            self._started = True
            return [SSEEvent("message", chunk[6:end].decode("utf-8", "replace"),
                             self._last_id, self._retry)]
        if chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and (
                not (self._head or self._buf or self._data or self._event or self._skip_lf)
                and b"\r" not in chunk):
            # Several whole one-line events read at once (a stream that waited for the loop;
            # often most of a short answer, in its first read): when the separators hold
            # every LF of the chunk, no payload has one. Decoded once, then split: the
            # separators are ASCII, which UTF-8 never uses inside a character, so no payload
            # (nor a replaced invalid sequence) spans one.
            self._started = True
            parts = chunk[6:-2].decode("utf-8", "replace").split("\n\ndata: ")
            if chunk.count(b"\n") == 2 * len(parts):
                last_id, retry = self._last_id, self._retry
                return [SSEEvent("message", part, last_id, retry) for part in parts]
        buf, end = self._lines(chunk)
        if end < 0:
            return []
        out: list[SSEEvent] = []
        start = 0
        data = self._data if self._data is not None else []
        event = self._event
        while end >= 0:
            if end == start:  # blank line: dispatch (inlined: this loop is the hot path)
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    out.append(SSEEvent(
                        event.decode("utf-8", "replace") if event else "message",
                        payload.decode("utf-8", "replace"),
                        self._last_id,
                        self._retry,
                    ))
                    data = []
                # "If the data buffer is an empty string": no event, type reset anyway.
                event = b""
            elif buf.startswith(b"data:", start):
                # Strip one optional leading space.
                vstart = start + 6 if buf.startswith(b" ", start + 5) else start + 5
                data.append(buf[vstart:end])
            elif buf.startswith(b"event:", start):
                vstart = start + 7 if buf.startswith(b" ", start + 6) else start + 6
                event = buf[vstart:end]
            elif buf[start] == 0x3A:  # ":" comment
                self.comments += 1
            else:  # rare fields: id, retry, bare names, unknown lines
                self._data, self._event = data, event
                self._field(buf[start:end])
                data, event = self._data or [], self._event
            start = end + 1
            end = buf.find(b"\n", start)
        self._data = data or None
        self._event = event
        if start < len(buf):
            self._keep(buf[start:])
        return out

    def _keep(self, piece: bytes) -> None:
        """Buffer a piece of an incomplete line (in a list: no quadratic re-copying of a
        long line arriving in many chunks)."""
        if self._buf is None:
            self._buf = [piece]
        else:
            self._buf.append(piece)

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # `data` without a colon: an empty line of data
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit() and value.isascii():
                self._retry = int(value)
        elif self._stray is None:
            self._stray = [line]
        elif len(self._stray) < _STRAY_MAX_LINES:
            self._stray.append(line)


async def aiter_sse(
    chunks: AsyncIterable[bytes], decoder: SSEDecoder | None = None
) -> AsyncIterator[SSEEvent]:
    """Events from an async byte iterator (e.g. `response.aiter_bytes()`). Pass your own
    `decoder` to read `comments`, `stray` or `pending` afterwards."""
    dec = decoder if decoder is not None else SSEDecoder()
    feed = dec.feed
    async for chunk in chunks:
        for event in feed(chunk):
            yield event
