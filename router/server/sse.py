"""Server-sent events: framing and a response that notices at once when its client leaves.

Framing follows the WHATWG HTML "server-sent events" section: `id:` (the entry's number,
which the browser sends back as `Last-Event-ID` when it reconnects), `event:` (the event
type), one `data:` line (compact JSON never contains a newline) and a blank line; a line
starting with `:` is a comment, used as the heartbeat.

Starlette's `StreamingResponse` only learns of a disconnect when a write fails (ASGI spec
2.4), which can be a whole TTFT later; `EventStreamResponse` listens for `http.disconnect`
and reacts the moment it arrives, so a provider stream is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.types import Receive, Scope, Send

from router.server.eventlog import Entry

HEARTBEAT_FRAME = b": ping\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]


def frame(seq: int, entry: Entry) -> bytes:
    """One SSE frame for log entry number `seq`."""
    etype, data = entry
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, etype.encode(), data)


class BadCursor(ValueError):
    """A `Last-Event-ID` / `?after=` that is not an event number; `param` names which."""

    def __init__(self, param: str) -> None:
        super().__init__(f"{param}: expected an event number (an integer, -1 for the start)")
        self.param = param


# ASCII digits only (`str.isdigit` takes "²"), and short: `int()` of 5,000 digits raises.
_CURSOR = re.compile(r"-?[0-9]{1,18}")


def last_event_id(headers: Mapping[str, str], query: Mapping[str, str]) -> int | None:
    """Where a reader resumes: `Last-Event-ID` (what a reconnecting EventSource sends) or
    `?after=`; None when neither is given. Raises BadCursor when it is not a number."""
    for param, raw in (("Last-Event-ID", headers.get("last-event-id")),
                       ("after", query.get("after"))):
        if raw:
            if not _CURSOR.fullmatch(raw.strip()):
                raise BadCursor(param)
            return int(raw)
    return None


class EventStreamResponse:
    """Streams `frames` as `text/event-stream`; the headers go out before the first frame,
    and a heartbeat comment whenever `heartbeat_s` passes without a frame.

    When the client goes away, `on_disconnect` runs at once (it must not block); then the
    writer is cancelled, unless `cancel_on_disconnect` is False: a detached stream's frames
    keep being produced (into the event log) and are simply no longer written."""

    def __init__(self, frames: AsyncIterator[bytes],
                 on_disconnect: Callable[[], None] | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, *,
                 heartbeat_s: float | None = None, cancel_on_disconnect: bool = True) -> None:
        self.frames = frames
        self.on_disconnect = on_disconnect
        self.headers = SSE_HEADERS + (headers or [])
        self.heartbeat_s = heartbeat_s
        self.cancel_on_disconnect = cancel_on_disconnect
        self.gone = False
        self.last_write = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.current_task()
        assert writer is not None
        helpers = [asyncio.create_task(self._listen(receive, writer))]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            self.last_write = time.monotonic()
            if self.heartbeat_s:
                helpers.append(asyncio.create_task(self._beat(send, self.heartbeat_s)))
            await self._write_all(send)
        except asyncio.CancelledError:
            if not self.gone:
                raise
            # Our own cancellation (it may have been asked twice: by the stream's cancel and
            # by the listener), after the client left: nothing more to write.
            while writer.cancelling():
                writer.uncancel()
        except OSError:
            # The client left and the write noticed first (ASGI 2.4 `send` raises).
            self._left()
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _write_all(self, send: Send) -> None:
        clock = time.monotonic
        async for chunk in self.frames:
            if self.gone:
                continue  # detached: produced into the log, nobody to write to
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.last_write = clock()
        if not self.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _left(self) -> None:
        if not self.gone:
            self.gone = True
            if self.on_disconnect is not None:
                self.on_disconnect()

    async def _listen(self, receive: Receive, writer: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._left()
        if self.cancel_on_disconnect:
            writer.cancel()

    async def _beat(self, send: Send, every_s: float) -> None:
        # One wake-up per period rather than a timer per frame: frames are the hot path.
        while not self.gone:
            due = self.last_write + every_s - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            await send({"type": "http.response.body", "body": HEARTBEAT_FRAME,
                        "more_body": True})
            self.last_write = time.monotonic()
