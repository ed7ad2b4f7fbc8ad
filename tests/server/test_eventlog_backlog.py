"""The shared event log's backlog while Redis is unavailable: what each log still owes,
the bound over all logs (oldest given up first, and remembered as lost), and logs whose own
bound dropped entries before they were written."""

from __future__ import annotations

from router.server.eventlog import StreamLog
from router.server.eventlog_backlog import Backlog
from router.server.eventlog_writer import RUN, STREAM


def _log(key: str, entries: int, max_events: int = 100) -> StreamLog:
    slog = StreamLog(key, None, max_events, 0.0)
    for i in range(entries):
        slog.append("text", b'{"delta":"%d"}' % i)
    return slog


def test_a_pending_log_owes_what_it_appended_since_its_first_unwritten_entry() -> None:
    backlog = Backlog(max_events=100)
    slog = _log("a", 5)
    backlog.keep(slog, STREAM, 2)
    assert backlog.start(slog) == 2 and backlog.owed == 3
    slog.append("done", b"{}")
    backlog.keep(slog, STREAM, 4)  # a later failed write: it still owes from 2
    assert backlog.start(slog) == 2 and backlog.owed == 4
    backlog.written(slog)
    assert not backlog and backlog.owed == 0 and backlog.start(slog) == max(slog.flushed, 0)


def test_past_the_bound_the_logs_pending_longest_are_given_up_and_marked_lost() -> None:
    backlog = Backlog(max_events=10)
    old, middle, young = _log("old", 6), _log("middle", 4), _log("young", 3)
    backlog.keep(old, STREAM, 0)
    backlog.keep(middle, RUN, 0)
    backlog.keep(young, STREAM, 0)
    assert [s.key for s in backlog.enforce()] == ["old"]  # 13 > 10; 7 fit
    assert backlog.is_lost(STREAM, "old") and not backlog.is_lost(RUN, "middle")
    assert list(backlog.unmarked) == [(STREAM, "old")] and backlog.owed == 7
    backlog.marked([(STREAM, "old")])
    assert not backlog.unmarked and backlog.is_lost(STREAM, "old")  # still not written


def test_an_ended_log_with_nothing_left_still_counts_against_the_bound() -> None:
    backlog = Backlog(max_events=2)
    logs = [_log(f"s{i}", 1) for i in range(3)]
    for slog in logs:
        slog.close(0.0)
        backlog.keep(slog, STREAM, 1)  # only its end is owed
    assert [s.key for s in backlog.enforce()] == ["s0"] and backlog.owed == 2


def test_a_log_whose_bound_dropped_unwritten_entries_is_lost_not_written_with_a_hole() -> None:
    backlog = Backlog(max_events=100)
    slog = _log("tiny", 8, max_events=4)  # entries 0..3 dropped from memory
    backlog.keep(slog, STREAM, 2)
    assert backlog.is_lost(STREAM, "tiny") and backlog.unmarked[(STREAM, "tiny")] == (2, None)
