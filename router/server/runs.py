"""Run channels: one event log per agent run, for UIs that show a whole workflow.

A request that carries `metadata.run_id` has its events copied into that run; agent code
adds its own (`POST /v1/runs/{run_id}/events` or `RunRegistry.publish`): step started or
finished, tool start/end, progress, any JSON object with a `type`. Readers follow a run
with the same replay-then-live rules as a stream; entries are numbered by the run. A
`run_end` event closes the run (readers then stop); a run nobody closes expires
`retention_s` after its last event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from router.events import TERMINAL_TYPES, Event, encode_event
from router.server.auth import ANONYMOUS
from router.server.eventlog import EventLog, StreamLog

RUN_END = "run_end"
ROUTER_TYPES = frozenset({"route", "start", "text", "reasoning", "tool_call", "retry",
                          "fallback", "budget"}) | TERMINAL_TYPES
MAX_TYPE_LEN = 64


class RunError(Exception):
    """A publish the registry refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class RunQuota:
    """What one API key may hold in run channels at once (`server.limits.run_max_*`)."""

    max_bytes: int = 64 * 1024 * 1024
    max_events: int = 200_000
    max_runs: int = 1000


@dataclass(slots=True)
class _Usage:
    runs: int = 0
    bytes: int = 0
    events: int = 0


class RunRegistry:
    """Run channels, namespaced by API key: key B's run `r1` is not key A's `r1`, so no key
    can claim or read another's run id. In-process publishers (`router.publish`, owner
    None) are trusted and address a key's run as `<key name>/<run id>`; on a server without
    keys every run is un-namespaced."""

    def __init__(self, log: EventLog, quota: RunQuota | None = None) -> None:
        self.log = log
        self.quota = quota or RunQuota()
        self._usage: dict[str, _Usage] = {}
        self._held: dict[str, tuple[str, int, int]] = {}  # log key -> (owner, bytes, events)

    @staticmethod
    def qualified(run_id: str, owner: str | None) -> str:
        return run_id if owner in (None, ANONYMOUS) else f"{owner}/{run_id}"

    def get(self, run_id: str, owner: str | None) -> StreamLog | None:
        return self.log.get(self.qualified(run_id, owner))

    def channel(self, run_id: str, owner: str | None) -> StreamLog:
        """The run's log in `owner`'s namespace, opened if new. Raises RunError: 422 for a
        bad id, 429 when the key holds `quota.max_runs` runs already."""
        if not run_id or len(run_id) > 200:
            raise RunError(422, "invalid_run_id", "run_id: expected 1 to 200 characters",
                           "run_id")
        key = self.qualified(run_id, owner)
        log = self.log.get(key)
        if log is not None:
            return log
        usage = self._usage.setdefault(owner or "", _Usage())
        if usage.runs >= self.quota.max_runs:
            raise RunError(429, "run_quota_exceeded", f"this key holds {usage.runs} runs "
                           "(server.limits.run_max_runs_per_key); end some with run_end or "
                           "let them expire", "run_id")
        usage.runs += 1
        self._held[key] = (owner or "", 0, 0)
        return self.log.open(key, owner)

    def publish(self, run_id: str, event: Mapping[str, Any] | Event,
                owner: str | None = None) -> int:
        """Add an event to a run; returns its number in the run. A router event goes in
        as it is; any other event must be a JSON object with a string `type` that is not
        a router event type, and gets a `ts` (Unix seconds) when it has none."""
        log = self.channel(run_id, owner)
        if log.closed:
            raise RunError(409, "run_ended", f"run {run_id!r} has ended")
        if not isinstance(event, Mapping):
            return self.append(log, event.type, encode_event(event))
        etype, data = self.prepare(run_id, event)
        n = self.append(log, etype, data)
        if etype == RUN_END:
            log.close(self.log.clock())
        return n

    def prepare(self, run_id: str, event: Mapping[str, Any]) -> tuple[str, bytes]:
        """An agent's event as a log entry: a JSON object with a string `type` that is not
        a router event type; it gets a `ts` (Unix seconds) when it has none."""
        etype = event.get("type")
        if not isinstance(etype, str) or not etype or len(etype) > MAX_TYPE_LEN:
            raise RunError(422, "invalid_event", "type: expected a non-empty string of at "
                           f"most {MAX_TYPE_LEN} characters", "type")
        if etype in ROUTER_TYPES or not etype.replace("_", "").replace(".", "").replace(
                "-", "").isalnum():
            raise RunError(422, "invalid_event", f"type: {etype!r} is reserved for router "
                           "events or not a plain name (letters, digits, _ . -)", "type")
        body = dict(event)
        body.setdefault("run_id", run_id)
        body.setdefault("ts", time.time())
        try:
            return etype, orjson.dumps(body)
        except TypeError as exc:
            raise RunError(422, "invalid_event", f"event is not JSON: {exc}") from None

    def append(self, log: StreamLog, etype: str, data: bytes) -> int:
        """Add an entry (a stream's event on the hot path: a few integer operations for the
        quota). Raises RunError 413 past the key's byte or event quota."""
        owner, nbytes, nevents = self._held.get(log.key, ("", 0, 0))
        usage = self._usage.setdefault(owner, _Usage())
        size = len(data)
        if usage.bytes + size > self.quota.max_bytes or usage.events >= self.quota.max_events:
            raise RunError(413, "run_quota_exceeded", f"this key's runs hold {usage.events} "
                           f"events, {usage.bytes} bytes (server.limits.run_max_bytes_per_key"
                           ", run_max_events_per_key); end runs with run_end or let them "
                           "expire")
        usage.bytes += size
        usage.events += 1
        self._held[log.key] = (owner, nbytes + size, nevents + 1)
        log.touched_at = self.log.clock()
        return log.append(etype, data)

    def copy(self, log: StreamLog, etype: str, data: bytes) -> bool:
        """`append` for a stream's events: False (and nothing added) past the quota, so
        the stream itself goes on; its readers still have the stream's own log."""
        try:
            self.append(log, etype, data)
        except RunError:
            return False
        return True

    def sweep(self) -> int:
        """Drop expired runs (see `EventLog.sweep`) and give their share back to the key."""
        dropped = self.log.sweep()
        if dropped:
            for key in [k for k in self._held if self.log.get(k) is None]:
                owner, nbytes, nevents = self._held.pop(key)
                usage = self._usage[owner]
                usage.runs -= 1
                usage.bytes -= nbytes
                usage.events -= nevents
        return dropped
