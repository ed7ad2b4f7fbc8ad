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
from typing import Any

import orjson

from router.events import TERMINAL_TYPES, Event, encode_event
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


class RunRegistry:
    def __init__(self, log: EventLog) -> None:
        self.log = log

    def channel(self, run_id: str, owner: str | None) -> StreamLog:
        """The run's log, opened for `owner` if new. Raises RunError (403) when another key
        owns it, (409) when it has ended."""
        if not run_id or len(run_id) > 200:
            raise RunError(422, "invalid_run_id", "run_id: expected 1 to 200 characters",
                           "run_id")
        log = self.log.open(run_id, owner)
        if log.owner is not None and owner is not None and log.owner != owner:
            raise RunError(403, "forbidden", "this run belongs to another API key")
        return log

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
        log.touched_at = self.log.clock()
        return log.append(etype, data)
