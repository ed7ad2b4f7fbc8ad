"""The server's log handlers are written from threads fed by bounded queues
(router/server/background_log.py): a log call never waits for a slow reader, a full queue
drops lines and the writer says how many once it catches up, and the records reach the
handler unformatted (uvicorn's access formatter reads their args)."""

from __future__ import annotations

import logging
import threading

import pytest

from router.server import background_log


class GatedHandler(logging.Handler):
    """Holds every write until `gate` is set, like a pipe nobody reads; keeps the lines."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.lines: list[str] = []
        self.saw_last = threading.Event()
        self.writing = threading.Event()  # the writer holds a record, waiting at the gate

    def emit(self, record: logging.LogRecord) -> None:
        self.writing.set()
        self.gate.wait()
        self.lines.append(record.getMessage())
        if record.getMessage() == "last":
            self.saw_last.set()


def test_a_slow_reader_costs_dropped_lines_not_a_blocked_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background_log, "MAX_PENDING", 5)
    logger = logging.getLogger("test.background_log.slow")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = GatedHandler()
    logger.addHandler(handler)
    background_log.write_logs_in_background(("test.background_log.slow",))
    assert handler not in logger.handlers  # the logger now only enqueues

    logger.info("line 0")
    assert handler.writing.wait(10)  # line 0 is in the handler's hands: the queue is empty
    caller = threading.Thread(target=lambda: [logger.info("line %d", i) for i in range(1, 50)])
    caller.start()
    caller.join(10)  # a blocked caller would still be waiting on the gate
    assert not caller.is_alive()

    handler.gate.set()
    logger.handlers[0].queue.join()  # type: ignore[attr-defined]  # the backlog written
    logger.info("last")
    assert handler.saw_last.wait(10)
    kept = [line for line in handler.lines if line.startswith("line ")]
    notices = [line for line in handler.lines if "log lines dropped" in line]
    # The oldest kept, in order: one in the handler's hands, five queued.
    assert kept == [f"line {i}" for i in range(6)]
    assert notices == ["44 log lines dropped: the log output was not read fast enough"]
    assert handler.lines[-1] == "last"


def test_records_reach_the_handler_with_their_args() -> None:
    logger = logging.getLogger("test.background_log.args")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    seen: list[tuple[object, ...]] = []
    done = threading.Event()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert isinstance(record.args, tuple)
            seen.append(record.args)
            done.set()

    logger.addHandler(Keep())
    background_log.write_logs_in_background(("test.background_log.args",))
    background_log.write_logs_in_background(("test.background_log.args",))  # idempotent
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/healthz", "1.1", 200)
    assert done.wait(10)
    assert seen == [("127.0.0.1:5", "GET", "/healthz", "1.1", 200)]
    assert len(logger.handlers) == 1
