"""Where the server's streams run: one producer task per routed request, writing its events
into the event log, from which every reader (the SSE response that started it, a resume, a
WebSocket, a run channel) follows.

The producer is decoupled from the client so a `detach`ed stream can outlive its
connection; without `detach`, the connection's end cancels the producer, which closes the
core's stream and with it the upstream provider connection. A stream cut that way ends in
the log with an `error` event of code `cancelled`, so readers and status see its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from router.events import (
    TERMINAL_TYPES,
    ErrorCode,
    ErrorEvent,
    Event,
    encode_event,
)
from router.server.eventlog import Entry, EventLog, StreamLog, owner_hash
from router.server.metrics import OBSERVED_TYPES, ServerMetrics
from router.server.runs import RunError, RunRegistry
from router.serving.takeover import prior_answer

if TYPE_CHECKING:
    from router.server.eventlog_redis import SharedLogs, Snapshot

log = logging.getLogger("router.server")
_HEAD_END = frozenset({"start"}) | TERMINAL_TYPES
_RESUME_HINT = ("retry the request (another instance serves it), or, where instances share "
                "the event log, resume with GET /v1/streams/{}/events and Last-Event-ID")


@dataclass(slots=True)
class Started:
    """A started stream: its log, and the events read before the response began (up to the
    first `start`, or the end: an early `error` can still become an HTTP error status).
    Started with `spawn=False`, the rest is still to be driven through `StreamHub.pump`."""

    log: StreamLog
    head: list[Event]
    gen: AsyncGenerator[Event, None] | None = None
    run: StreamLog | None = None
    t0: float = 0.0

    @property
    def early_error(self) -> ErrorEvent | None:
        last = self.head[-1] if self.head else None
        return last if isinstance(last, ErrorEvent) else None


class StreamHub:
    def __init__(self, router: Any, streams: EventLog, runs: RunRegistry,
                 metrics: ServerMetrics, *, log_prompts: bool = False,
                 shared: SharedLogs | None = None) -> None:
        self.router = router
        self.streams = streams
        self.runs = runs
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.draining = False
        # Tasks that deliver logs to clients (WebSocket forwarders), waited for at shutdown.
        self.readers: set[asyncio.Task[None]] = set()
        # Request tasks rendering a compatible endpoint's stream (`instrument`).
        self.rendered: set[asyncio.Task[Any]] = set()
        # The shared event log (Redis): streams are then always produced by their own task,
        # and readers see events once they are written there.
        self.shared = shared

    async def run_channel(self, run_id: str, owner: str | None) -> StreamLog:
        """The run's log for `owner`; with the shared log, ownership is checked there."""
        run = self.runs.channel(run_id, owner)
        if self.shared is not None:
            found = await self.shared.claim_run(self.runs.qualified(run_id, owner), owner)
            if found and owner is not None and found != owner_hash(owner):
                raise RunError(403, "forbidden", "this run belongs to another API key")
        return run

    async def start(self, input_: Any, kwargs: Mapping[str, Any], *, owner: str | None,
                    detach: bool = False, spawn: bool = True) -> Started:
        """Start `router.stream(input_, **kwargs)`; its run channel is
        `kwargs["metadata"]["run_id"]` when given. With `spawn`, a task produces the rest
        into the log; without, the caller drives it with `pump` (one task less per event
        on the way to its own client)."""
        t0 = time.perf_counter()
        metadata = kwargs.get("metadata") or {}
        run_id = metadata.get("run_id") if isinstance(metadata, Mapping) else None
        # Checked before starting: a refused run channel must not leave a stream running.
        run = await self.run_channel(str(run_id), owner) if run_id is not None else None
        spawn = spawn or self.shared is not None
        gen: AsyncGenerator[Event, None] = self.router.stream(input_, **kwargs)
        head: list[Event] = []
        try:
            # The core emits `route` and `start` before waiting on the network: reading this
            # far costs no latency and still lets budget/validation refusals be HTTP errors.
            async for ev in gen:
                head.append(ev)
                if ev.type in _HEAD_END:
                    break
        except BaseException:
            await gen.aclose()
            raise
        if not head:
            await gen.aclose()
            raise RuntimeError("router.stream() ended without an event")
        rid = head[0].request_id
        slog = self.streams.open(rid, owner)
        slog.detach = detach
        if self.shared is not None:
            if run is not None:  # copied in the same step as the stream is written
                slog.run, run = run.key, None
            self.shared.describe(slog, {
                "owner": owner_hash(owner) if owner else "", "detach": "1" if detach else "0",
                "run": slog.run or "",
                "req": orjson.dumps({"input": input_, "kwargs": kwargs}).decode()})
        self._log_start(rid, owner, input_, kwargs, detach)
        for ev in head:
            self._record(slog, run, ev)
        if head[-1].type in TERMINAL_TYPES:
            await gen.aclose()
            self.streams.close(slog)
            return Started(slog, head)
        if not spawn:
            return Started(slog, head, gen, run, t0)
        slog.task = asyncio.create_task(self._produce(gen, slog, run, t0), name=f"stream-{rid}")
        return Started(slog, head)

    def _record(self, slog: StreamLog, run: StreamLog | None, ev: Event) -> None:
        data = encode_event(ev)
        etype = ev.type
        slog.append(etype, data)
        if run is not None and not run.closed:
            self.runs.copy(run, etype, data)
        if etype in OBSERVED_TYPES:
            self.metrics.observe(ev)

    async def pump(self, started: Started) -> AsyncGenerator[tuple[int, Entry], None]:
        """Drive a stream started with `spawn=False` in the calling task, which becomes the
        stream's task (cancelling it cancels the stream): yields every entry, the head's
        first, each after it is in the log."""
        slog = started.log
        for i, entry in enumerate(list(slog.entries)):
            yield i, entry
        if started.gen is None:
            return
        slog.task = asyncio.current_task()
        async for item in self._pump(started.gen, slog, started.run, started.t0):
            yield item

    async def _produce(self, gen: AsyncGenerator[Event, None], slog: StreamLog,
                       run: StreamLog | None, t0: float) -> None:
        async for _ in self._pump(gen, slog, run, t0):
            pass

    async def _pump(self, gen: AsyncGenerator[Event, None], slog: StreamLog,
                    run: StreamLog | None, t0: float) -> AsyncGenerator[tuple[int, Entry], None]:
        metrics = self.metrics
        metrics.active.inc()
        ended = False
        try:
            # The hot path: per event one encode and one append (plus the run's).
            async for ev in gen:
                data = encode_event(ev)
                etype = ev.type
                seq = slog.append(etype, data)
                if run is not None and not self.runs.copy(run, etype, data):
                    run = None  # the key's run quota is spent: the stream goes on
                if etype in OBSERVED_TYPES:
                    metrics.observe(ev)
                    ended = etype in TERMINAL_TYPES
                yield seq, (etype, data)
        except asyncio.CancelledError:
            last = None if ended else self._on_cancel(slog, run, t0)
            if last is None:
                raise
            yield last
        except Exception:
            log.exception("stream %s failed inside the router", slog.key)
            if not ended:
                yield self._end(slog, run, t0, "provider_error", "internal server error")
        else:
            if not ended:
                yield self._end(slog, run, t0, "protocol_error", "the stream ended without a "
                                "terminal event")
        finally:
            await gen.aclose()
            self.streams.close(slog)
            metrics.active.dec()

    def _on_cancel(self, slog: StreamLog, run: StreamLog | None, t0: float
                   ) -> tuple[int, Entry] | None:
        """End a cancelled stream's log. An explicit cancel then ends the stream normally
        (the entry to deliver to its reader is returned); otherwise None: re-raise."""
        if self.draining:
            last = self._end(slog, run, t0, "cancelled", "the server is shutting down",
                             retryable=True, suggestion=_RESUME_HINT.format(slog.key))
        else:
            last = self._end(slog, run, t0, "cancelled", "the stream was cancelled (client "
                             "disconnected, or cancel requested)")
        task = asyncio.current_task()
        if not slog.cancel_requested or task is None:
            return None
        while task.cancelling():
            task.uncancel()
        return last

    def _end(self, slog: StreamLog, run: StreamLog | None, t0: float, code: ErrorCode,
             message: str, *, retryable: bool | None = None,
             suggestion: str | None = None) -> tuple[int, Entry]:
        ev = ErrorEvent.model_construct(
            request_id=slog.key, seq=slog.next_seq,
            elapsed_ms=(time.perf_counter() - t0) * 1000.0, code=code, message=message,
            retryable=code != "cancelled" if retryable is None else retryable,
            deployment=_last_deployment(slog), status=None, suggestion=suggestion)
        self._record(slog, run, ev)
        return slog.next_seq - 1, slog.entries[-1]

    async def instrument(self, events: AsyncIterator[Event], *, run_id: str | None = None,
                         owner: str | None = None) -> AsyncGenerator[Event, None]:
        """Pass through a stream that an endpoint renders itself (the OpenAI- and
        Anthropic-compatible ones), counting it in the metrics and copying its events into
        run `run_id` when given. Closing the wrapper closes `events`."""
        run = await self.run_channel(run_id, owner) if run_id is not None else None
        metrics = self.metrics
        metrics.active.inc()
        task = asyncio.current_task()
        if task is not None:
            self.rendered.add(task)
        last: Event | None = None
        try:
            async for ev in events:
                last = ev
                etype = ev.type
                if run is not None and (run.closed or not self.runs.copy(
                        run, etype, encode_event(ev))):
                    run = None
                if etype in OBSERVED_TYPES:
                    metrics.observe(ev)
                yield ev
        except asyncio.CancelledError:
            ended = last is not None and last.type in TERMINAL_TYPES
            if not self.draining or task is None or ended:
                raise
            while task.cancelling():  # cut by `shutdown`: the endpoint renders the end
                task.uncancel()
            yield _shutdown_error(getattr(events, "request_id", ""), last)
        finally:
            if task is not None:
                self.rendered.discard(task)
            metrics.active.dec()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def take_over(self, snap: Snapshot) -> bool:
        """Continue here a stream whose instance died (see `router.serving.takeover`): the
        rest of the answer is asked of a deployment with the continuation machinery, and its
        events numbered on from the last one written. True when this instance took it."""
        rid = snap.log.key
        prior = prior_answer(rid, snap.log.next_seq, snap.log.entries)
        request = snap.meta.get("req")
        if (self.shared is None or prior is None or request is None
                or self.streams.get(rid) is not None or not await self.shared.claim(snap)):
            return False
        req = orjson.loads(request)
        slog = self.streams.open(rid, None)
        slog.owner_hash, slog.detach = snap.log.owner_hash, True  # nobody's connection
        slog.entries, slog.dropped = deque(snap.log.entries), snap.log.dropped
        slog.flushed = slog.next_seq
        slog.run = snap.meta.get("run") or None  # the continuation goes on into its run
        log.info("stream %s taken over from instance %s after event %d", rid,
                 snap.meta.get("inst"), slog.next_seq - 1)
        gen = self.router.stream(req["input"], **req["kwargs"], request_id=rid,
                                 resume_from=prior)
        t0 = time.perf_counter() - prior.elapsed_ms / 1000.0
        slog.task = asyncio.create_task(self._produce(gen, slog, None, t0), name=f"stream-{rid}")
        return True

    def cancel(self, slog: StreamLog, *, explicit: bool = True) -> bool:
        """Cancel a running stream (upstream closed at once). False if it had ended.
        `explicit` (a cancel request, not a disconnect): the stream still ends normally
        for its reader, with the `cancelled` event."""
        task = slog.task
        if task is None or task.done() or slog.closed:
            return False
        slog.cancel_requested = explicit
        task.cancel()
        return True

    def cancel_by_id(self, request_id: str) -> bool:
        """Cancel this instance's stream `request_id` (asked by another instance)."""
        slog = self.streams.get(request_id)
        return slog is not None and self.cancel(slog)

    async def shutdown(self, grace_s: float) -> None:
        """Let running streams finish for up to `grace_s`, then end each with a retryable
        `cancelled` error (with the resume hint) that its readers receive before the
        server closes their connections. Idempotent (SIGTERM drains, then the lifespan)."""
        self.draining = True
        running = [s for s in self.streams.active() if s.task is not None and not s.task.done()]
        tasks = [s.task for s in running if s.task] + list(self.rendered)
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        cut = [s for s in running if s.task is not None and not s.task.done()]
        for slog in cut:
            if slog.detach:
                log.warning("stream %s (detached) lost at shutdown: it was still running "
                            "after server.shutdown_grace_s and ends with error cancelled",
                            slog.key)
            self.cancel(slog)  # explicit: the `cancelled` event is still delivered
        rendered = [t for t in self.rendered if not t.done()]
        for task in rendered:  # compatible endpoints' streams: see `instrument`
            task.cancel()
        if cut or rendered:
            await asyncio.wait([s.task for s in cut if s.task] + rendered, timeout=5)
        readers = [t for t in self.readers if not t.done()]
        if readers:  # WebSocket forwarders deliver the terminal events from the logs
            await asyncio.wait(readers, timeout=5)

    def _log_start(self, rid: str, owner: str | None, input_: Any,
                   kwargs: Mapping[str, Any], detach: bool) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        if self.log_prompts:
            log.info("stream %s key=%s task=%s model=%s detach=%s input=%s", rid, owner,
                     kwargs.get("task"), kwargs.get("model"), detach,
                     orjson.dumps(input_).decode())
        else:
            log.info("stream %s key=%s task=%s model=%s detach=%s", rid, owner,
                     kwargs.get("task"), kwargs.get("model"), detach)


def _shutdown_error(request_id: str, last: Event | None) -> ErrorEvent:
    return ErrorEvent.model_construct(
        request_id=last.request_id if last is not None else request_id,
        seq=last.seq + 1 if last is not None else 0,
        elapsed_ms=last.elapsed_ms if last is not None else 0.0, code="cancelled",
        message="the server is shutting down", retryable=True, deployment=None, status=None,
        suggestion="retry the request (another instance serves it)")


def _last_deployment(slog: StreamLog) -> str | None:
    for etype, data in reversed(slog.entries):
        if etype == "start":
            dep = orjson.loads(data).get("deployment")
            return dep if isinstance(dep, str) else None
    return None


def stream_status(slog: StreamLog) -> dict[str, Any]:
    """What a polling client needs: state, deployment, text so far, usage, cost."""
    state, deployment = "running", None
    text: list[str] = []
    reasoning: list[str] = []
    terminal: dict[str, Any] | None = None
    for etype, data in slog.entries:
        if etype == "text":
            text.append(orjson.loads(data)["delta"])
        elif etype == "reasoning":
            reasoning.append(orjson.loads(data)["delta"])
        elif etype == "start":
            deployment = orjson.loads(data)["deployment"]
        elif etype == "fallback" and orjson.loads(data).get("mode") == "restart":
            text.clear()  # the consumer discards the text it has after a restart
        elif etype in TERMINAL_TYPES:
            terminal = orjson.loads(data)
    out: dict[str, Any] = {
        "request_id": slog.key, "state": state, "deployment": deployment,
        "text": "".join(text), "reasoning": "".join(reasoning), "usage": None,
        "cost_usd": None, "cost": None, "latency": None, "finish_reason": None,
        "error": None, "events": slog.next_seq, "last_event_id": slog.next_seq - 1,
        "truncated": slog.dropped > 0, "detached": slog.detach,
    }
    if terminal is not None and terminal["type"] == "done":
        out.update(state="done", deployment=terminal["deployment"], usage=terminal["usage"],
                   cost_usd=terminal["cost_usd"], cost=terminal["cost"],
                   latency=terminal["latency"], finish_reason=terminal["finish_reason"])
    elif terminal is not None:
        out.update(state="cancelled" if terminal["code"] == "cancelled" else "error",
                   error={k: terminal.get(k) for k in ("code", "message", "retryable",
                                                       "status", "suggestion")})
    return out

