"""The server's log lines are written by threads, off the event loop.

A `logging.StreamHandler` writes where it is called. On the event loop, a log reader that
falls behind (a pipe nobody drains, a stalled log shipper) fills the pipe, and the next log
line blocks the loop: every request of the process froze until the reader caught up. Here
each handler the logging config built (uvicorn's `default` to stderr and `access` to
stdout, which the `router` loggers share) is fed by its own bounded queue and written by
its own `logging.handlers.QueueListener` thread. A full queue drops the line rather than
wait, and the writer says how many it dropped once it catches up.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue

# Log lines held for a writer that fell behind: past it they are dropped (and counted).
MAX_PENDING = 10_000
# How long the exit waits for the writers to flush what they hold.
_EXIT_FLUSH_S = 2.0


class _Enqueue(logging.handlers.QueueHandler):
    """Puts records on the bounded queue as they are; never waits for room."""

    def __init__(self, pending: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(pending)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatted by the writer with the handler's own formatter: uvicorn's access
        # formatter reads `record.args`, which QueueHandler's prepare would merge away.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1  # under the handler's lock (`Handler.handle` holds it)


class _Writer(logging.handlers.QueueListener):
    """Writes one handler's records; first says how many were dropped since the last."""

    def __init__(self, pending: queue.Queue[logging.LogRecord | None],
                 handler: logging.Handler, source: _Enqueue) -> None:
        super().__init__(pending, handler, respect_handler_level=True)
        self._pending = pending  # `self.queue` too, but typed for `get` only: stop puts
        self._source = source
        self._reported = 0

    def handle(self, record: logging.LogRecord) -> None:
        dropped = self._source.dropped
        if dropped > self._reported:
            notice = logging.LogRecord(
                "router.server", logging.WARNING, __file__, 0,
                "%d log lines dropped: the log output was not read fast enough",
                (dropped - self._reported,), None)
            self._reported = dropped
            super().handle(notice)
        super().handle(record)

    def stop_within(self, timeout_s: float) -> None:
        """Flush what is held and stop, waiting at most `timeout_s` (a writer blocked on a
        reader that never reads is left to the process's exit)."""
        thread = self._thread
        if thread is None:
            return
        try:
            self._pending.put(None, timeout=timeout_s)  # QueueListener's stop sentinel
        except queue.Full:
            return
        thread.join(timeout_s)
        self._thread = None


def write_logs_in_background(names: tuple[str, ...] = ("", "uvicorn", "uvicorn.error",
                                                       "uvicorn.access", "router")) -> None:
    """Move the handlers of the loggers `names` (after the logging config was applied) to
    writer threads: each handler gets one queue and one thread, however many loggers share
    it. Idempotent: a handler already moved is left as it is."""
    moved: dict[int, _Enqueue] = {}
    for name in names:
        logger = logging.getLogger(name)
        for i, handler in enumerate(list(logger.handlers)):
            if isinstance(handler, _Enqueue):
                continue
            enqueue = moved.get(id(handler))
            if enqueue is None:
                pending: queue.Queue[logging.LogRecord | None] = queue.Queue(MAX_PENDING)
                enqueue = moved[id(handler)] = _Enqueue(pending)
                writer = _Writer(pending, handler, enqueue)
                writer.start()
                atexit.register(writer.stop_within, _EXIT_FLUSH_S)
            logger.handlers[i] = enqueue
