"""Admission: at most `max_concurrency` streams in flight per deployment, a bounded FIFO
of waiters behind them, and a clear refusal past that — instead of an unbounded queue in
the HTTP pool whose cost grows with its length.

A request that finds its deployment full waits in that deployment's FIFO for at most
`resilience.admission.queue_timeout_s`; when the FIFO already holds `max_queued` waiters,
or the wait ends, it is refused with `AdmissionRefused` (code `overloaded`): the failover
loop moves on to the next candidate, and with none left the stream ends with an
`overloaded` error event. A refusal is the router's own decision, not the deployment's
failure: its breaker and statistics do not hear of it.

Every operation is O(1): a counter and a deque of futures per deployment. A waiter that
gives up leaves its (cancelled) future in the deque; `release` skips such futures, and
the deque is compacted when dead entries outnumber the live ones, so it stays bounded.
`inflight(deployment_id)` is the plain callable load-aware routing reads.

The failover loop takes a `Slot` *before* it announces an attempt (`start`): a refused
attempt never began, so the caller sees `route`, then `fallback` to the next candidate (or
the `overloaded` error), never a `start` that nothing followed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping

from providers.base import Delta, ProviderError

__all__ = ["Admission", "AdmissionRefused", "Admitted", "Slot", "admitted"]


class AdmissionRefused(ProviderError):
    """The deployment is at its concurrency limit and its queue is full or the wait ended."""

    def __init__(self, message: str) -> None:
        super().__init__("overloaded", message, retryable=True)


class _Gate:
    __slots__ = ("inflight", "limit", "waiters", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.waiting = 0  # live waiters; `waiters` may also hold cancelled futures
        self.waiters: deque[asyncio.Future[None]] = deque()


class Admission:
    """Per-deployment concurrency limits. `limits` maps deployment id -> max in flight;
    a deployment not in it is not limited (and not counted)."""

    def __init__(self, limits: Mapping[str, int], *, max_queued: int,
                 queue_timeout_s: float) -> None:
        self._gates = {dep: _Gate(limit) for dep, limit in limits.items()}
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s

    def inflight(self, deployment_id: str) -> int:
        """Streams holding a slot of `deployment_id` now (0 for an unknown id)."""
        gate = self._gates.get(deployment_id)
        return gate.inflight if gate is not None else 0

    def queued(self, deployment_id: str) -> int:
        """Requests waiting for a slot of `deployment_id` now."""
        gate = self._gates.get(deployment_id)
        return gate.waiting if gate is not None else 0

    async def acquire(self, deployment_id: str) -> None:
        """Take a slot, waiting in FIFO order if needed. Raises `AdmissionRefused`."""
        gate = self._gates.get(deployment_id)
        if gate is None:
            return
        if gate.inflight < gate.limit and not gate.waiting:
            gate.inflight += 1
            return
        if gate.waiting >= self.max_queued:
            raise AdmissionRefused(
                f"deployment {deployment_id!r} is at its concurrency limit ({gate.limit} in "
                f"flight) and {gate.waiting} requests are already queued")
        await self._wait(deployment_id, gate)

    async def slot(self, deployment_id: str) -> Slot:
        """`acquire`, as a `Slot` to give back. Raises `AdmissionRefused`."""
        await self.acquire(deployment_id)
        return Slot(self, deployment_id)

    def try_slot(self, deployment_id: str) -> Slot | None:
        """A slot if one is free now (nobody queued for it), else None: no waiting."""
        gate = self._gates.get(deployment_id)
        if gate is not None:
            if gate.inflight >= gate.limit or gate.waiting:
                return None
            gate.inflight += 1
        return Slot(self, deployment_id)

    async def _wait(self, deployment_id: str, gate: _Gate) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        gate.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release(deployment_id)  # granted as we left: hand the slot on
            else:
                waiter.cancel()
                gate.waiting -= 1
                self._compact(gate)
            if isinstance(exc, TimeoutError):
                raise AdmissionRefused(
                    f"deployment {deployment_id!r} is at its concurrency limit ({gate.limit} "
                    f"in flight): no slot within {self.queue_timeout_s:g} s") from None
            raise

    def release(self, deployment_id: str) -> None:
        """Give a slot back; the oldest live waiter, if any, takes it over."""
        gate = self._gates.get(deployment_id)
        if gate is None:
            return
        waiters = gate.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                gate.waiting -= 1
                waiter.set_result(None)  # the slot passes on: `inflight` is unchanged
                return
        gate.inflight -= 1

    @staticmethod
    def _compact(gate: _Gate) -> None:
        # Amortized O(1): a rebuild after at least as many give-ups as live waiters.
        if len(gate.waiters) > 2 * gate.waiting + 16:
            gate.waiters = deque(w for w in gate.waiters if not w.done())


class Slot:
    """One slot held of a deployment, until `release` (once: later calls do nothing, so
    every owner on every path may call it) or until `holding` hands it to an upstream."""

    __slots__ = ("_admission", "deployment_id")

    def __init__(self, admission: Admission, deployment_id: str) -> None:
        self._admission: Admission | None = admission
        self.deployment_id = deployment_id

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.release(self.deployment_id)

    def holding(self, upstream: AsyncIterator[Delta]) -> Admitted:
        """`upstream` holding this slot from now on (this handle then releases nothing)."""
        admission, self._admission = self._admission, None
        assert admission is not None, "the slot was already given back"
        return Admitted(admission, self.deployment_id, upstream)


class Admitted:
    """`upstream` holding a slot of `deployment_id` that was already acquired, given back
    once, when this iterator is closed (or, as a backstop, garbage collected). Reading
    forwards to `upstream` with no generator in between; the serving loop reads
    `upstream` itself (see `router.serving.attempt`) and closes this one."""

    __slots__ = ("_admission", "_deployment_id", "_upstream")

    def __init__(self, admission: Admission, deployment_id: str,
                 upstream: AsyncIterator[Delta]) -> None:
        self._admission: Admission | None = admission
        self._deployment_id = deployment_id
        self._upstream = upstream

    def __aiter__(self) -> Admitted:
        return self

    @property
    def upstream(self) -> AsyncIterator[Delta]:
        """The stream this one forwards to: a reader may read it directly (one call less
        per chunk) as long as it closes this one."""
        return self._upstream

    def __anext__(self) -> Awaitable[Delta]:
        return self._upstream.__anext__()

    def _release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.release(self._deployment_id)

    async def aclose(self) -> None:
        self._release()
        close = getattr(self._upstream, "aclose", None)
        if close is not None:
            await close()

    def __del__(self) -> None:
        self._release()


async def admitted(admission: Admission, deployment_id: str,
                   upstream: AsyncIterator[Delta]) -> Admitted:
    """Take a slot of `deployment_id` (waiting in its FIFO; `AdmissionRefused`), then
    `upstream` holding it until closed."""
    await admission.acquire(deployment_id)
    return Admitted(admission, deployment_id, upstream)
