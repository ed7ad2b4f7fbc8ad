"""What the shared event log still owes Redis: the logs whose newest entries could not be
written while Redis was unavailable (they were delivered to this instance's own readers),
kept to be written, in order, when Redis returns.

Nothing is copied: a pending log is remembered with the number of its first entry not
written, and its own (bounded) entries are what is written later. The bound is on the
entries pending over all logs, `state.event_backlog_max`: past it, the logs pending the
longest are given up (oldest first) until the rest fit. A log given up is *lost* to the
shared log: none of its later entries are written either (a hole would look like a whole
stream), and when Redis returns its meta is marked `lost` with the number of its first
entry missing, so a resume or run reader on another instance gets a clear error (410
`events_lost`), never a silent gap. A log whose own bound dropped entries before they were
written is lost the same way. Lost marks wait (bounded too: the oldest are forgotten) until
they are written.
"""

from __future__ import annotations

from collections import OrderedDict

from router.server.eventlog import StreamLog

LogId = tuple[str, str]  # (kind, key)
MAX_LOST = 10_000


class Backlog:
    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        # Pending the longest first: log -> (kind, number of its first entry not written).
        self.pending: OrderedDict[StreamLog, tuple[str, int]] = OrderedDict()
        self.lost: OrderedDict[LogId, int] = OrderedDict()  # given up: first missing
        self.unmarked: OrderedDict[LogId, tuple[int, str | None]] = OrderedDict()
        self.dropped_logs = 0  # logs given up so far (a counter for operators)
        self.owed = 0  # entries pending over all logs (as of each log's last `keep`)
        self._owed: dict[StreamLog, int] = {}

    def __bool__(self) -> bool:
        return bool(self.pending or self.unmarked)

    def start(self, slog: StreamLog) -> int:
        """The number of the first entry of `slog` to write next."""
        held = self.pending.get(slog)
        return held[1] if held is not None else max(slog.flushed, slog.dropped)

    def is_lost(self, kind: str, key: str) -> bool:
        return (kind, key) in self.lost

    def keep(self, slog: StreamLog, kind: str, first: int) -> None:
        """`slog`'s entries from `first` on were not written: keep them for later."""
        if first < slog.dropped:  # its own bound dropped some before they were written
            self.give_up(slog, kind, first)
            return
        held = self.pending.setdefault(slog, (kind, first))
        # A log owes its unwritten entries, and at least its end: so the bound also
        # bounds how many logs are held.
        owed = max(1, slog.next_seq - held[1])
        self.owed += owed - self._owed.get(slog, 0)
        self._owed[slog] = owed

    def written(self, slog: StreamLog) -> None:
        self.pending.pop(slog, None)
        self.owed -= self._owed.pop(slog, 0)

    def enforce(self) -> list[StreamLog]:
        """Give up the logs pending the longest until the rest fit the bound."""
        given_up: list[StreamLog] = []
        while self.owed > self.max_events and self.pending:
            slog, (kind, first) = next(iter(self.pending.items()))
            self.give_up(slog, kind, first)
            given_up.append(slog)
        return given_up

    def give_up(self, slog: StreamLog, kind: str, first: int) -> None:
        """No more of `slog` is shared; Redis is told so (`unmarked`) when it answers."""
        self.disown(slog, kind, first)
        self.unmarked[(kind, slog.key)] = (first, slog.run)
        self.dropped_logs += 1
        while len(self.unmarked) > MAX_LOST:
            self.unmarked.popitem(last=False)

    def disown(self, slog: StreamLog, kind: str, first: int) -> None:
        """No more of `slog` is written from here (another instance writes it now)."""
        self.written(slog)
        self.lost[(kind, slog.key)] = first
        while len(self.lost) > MAX_LOST:
            self.lost.popitem(last=False)

    def marked(self, log_ids: list[LogId]) -> None:
        for log_id in log_ids:
            self.unmarked.pop(log_id, None)
