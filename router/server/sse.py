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
from collections.abc import AsyncIterator, Callable

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
    """One SSE frame for log entry number `seq` (or a heartbeat comment when `seq` < 0)."""
    if seq < 0:
        return HEARTBEAT_FRAME
    etype, data = entry
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, etype.encode(), data)


def last_event_id(headers: dict[str, str], query: dict[str, str]) -> int | None:
    """Where a reader resumes: `Last-Event-ID` (what a reconnecting EventSource sends) or
    `?after=`; None when neither is given or it is not a number."""
    raw = headers.get("last-event-id") or query.get("after")
    if raw is None or not raw.strip().lstrip("-").isdigit():
        return None
    return int(raw)


class EventStreamResponse:
    """Streams `frames` as `text/event-stream`; the headers go out before the first frame.

    `on_disconnect` runs the moment the client goes away (before the writer is cancelled),
    so the caller can cancel upstream work or let it run on detached. It must not block."""

    def __init__(self, frames: AsyncIterator[bytes],
                 on_disconnect: Callable[[], None] | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.frames = frames
        self.on_disconnect = on_disconnect
        self.headers = SSE_HEADERS + (headers or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.current_task()
        assert writer is not None
        gone = False

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            if self.on_disconnect is not None:
                self.on_disconnect()
            writer.cancel()

        listener = asyncio.create_task(listen())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            # An empty body chunk flushes the headers: the response starts at once.
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            async for chunk in self.frames:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            # Our own cancellation, after the client left: nothing more to write.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        except OSError:
            # The client left and the write noticed first (ASGI 2.4 `send` raises).
            if not gone and self.on_disconnect is not None:
                gone = True
                self.on_disconnect()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
