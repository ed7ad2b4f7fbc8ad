"""Breakers shared by router instances through Redis, without Redis on the decision path.

Each breaker decides from its own memory (pybreaker's memory storage: no I/O in `admit`,
`failure` or `success`). A background task syncs that memory with Redis, asynchronously
and bounded by the state store's timeouts: every `SYNC_S` (at once after a local change)
it writes the breakers that changed here to `<prefix>breaker|<deployment>` and reads the
others', adopting a state another instance wrote more recently (a trip, a recovery, its
failure count). A trip on one instance therefore reaches the others within about one sync
interval. While Redis is unavailable the breakers are simply per-process; changes made
meanwhile are written when it returns. The half-open probe is one per instance (a probe
slot across instances would need Redis on the decision path).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from router.background import stop_task
from router.state.store import StateUnavailable

if TYPE_CHECKING:
    import pybreaker

    from router.state.redis import RedisState

SYNC_S = 0.5
TTL_S = 86400


def _synced_storage_class() -> type[pybreaker.CircuitMemoryStorage]:
    import pybreaker

    class SyncedStorage(pybreaker.CircuitMemoryStorage):
        """pybreaker's memory storage that stamps each change and tells the sync."""

        def __init__(self, on_change: Callable[[], None],
                     on_read: Callable[[], None]) -> None:
            super().__init__(pybreaker.STATE_CLOSED)
            self.stamp = 0.0  # wall time of the last change, local or adopted
            self.dirty = False
            self._on_change = on_change
            self._on_read = on_read

        def _changed(self) -> None:
            self.stamp = time.time()
            self.dirty = True
            self._on_change()

        @property
        def state(self) -> str:
            # Every decision reads the state: the sync starts at the first one made in a
            # loop, also when the storage was built outside one (a check, no I/O).
            self._on_read()
            return self._state

        @state.setter
        def state(self, state: str) -> None:
            if state != self._state:
                self._state = state
                self._changed()

        def increment_counter(self) -> None:
            super().increment_counter()
            self._changed()

        def reset_counter(self) -> None:
            if self._fail_counter:
                super().reset_counter()
                self._changed()

        @property
        def opened_at(self) -> datetime | None:
            return self._opened_at

        @opened_at.setter
        def opened_at(self, value: datetime) -> None:
            self._opened_at = value
            self._changed()

        def fields(self, origin: str) -> dict[str, str]:
            opened = self._opened_at.timestamp() if self._opened_at else ""
            return {"state": self._state, "counter": str(self._fail_counter),
                    "opened_at": str(opened), "stamp": repr(self.stamp), "origin": origin}

        def adopt(self, fields: dict[str, Any]) -> None:
            """Take another instance's newer state (not marked as a change of ours)."""
            self._state = fields["state"]
            self._fail_counter = int(fields["counter"])
            opened = fields.get("opened_at") or ""
            self._opened_at = datetime.fromtimestamp(float(opened), UTC) if opened else None
            self.stamp = float(fields["stamp"])

    return SyncedStorage


class BreakerSync:
    """The storage factory of shared breakers, and the task that syncs them with Redis."""

    def __init__(self, store: RedisState, prefix: str = "llmr:") -> None:
        self.store = store
        self.prefix = prefix
        self.origin = uuid.uuid4().hex  # this instance
        self._storage_class: Any = _synced_storage_class()
        self._storages: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __call__(self, deployment: str) -> pybreaker.CircuitBreakerStorage:
        storage = self._storages.get(deployment)
        if storage is None:
            storage = self._storages[deployment] = self._storage_class(
                self._changed, self._ensure_running)
            self._ensure_running()
        result: pybreaker.CircuitBreakerStorage = storage
        return result

    def _changed(self) -> None:
        self._wake.set()
        self._ensure_running()

    def start(self) -> None:
        """Start the background sync in the running loop (the server calls it at startup,
        so that its first decisions already see the other instances' breakers)."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (built outside one): the first change inside one starts it
        self._task = loop.create_task(self._run())

    def _key(self, deployment: str) -> str:
        return f"{self.prefix}breaker|{deployment}"

    async def sync_once(self) -> bool:
        """Write the breakers changed here, adopt newer ones; False when Redis is away."""
        deployments = list(self._storages)
        if not deployments:
            return True
        dirty = {d: s for d, s in self._storages.items() if s.dirty}
        for s in dirty.values():
            s.dirty = False
        try:
            if dirty:
                await self.store.write_hashes(
                    {self._key(d): s.fields(self.origin) for d, s in dirty.items()}, TTL_S)
            remote = await self.store.read_hashes([self._key(d) for d in deployments])
        except StateUnavailable:
            for s in dirty.values():
                s.dirty = True  # written once Redis returns
            return False
        for dep, fields in zip(deployments, remote, strict=True):
            storage = self._storages[dep]
            if (fields and fields.get("origin") != self.origin and not storage.dirty
                    and float(fields.get("stamp", 0)) > storage.stamp):
                storage.adopt(fields)
        return True

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.sync_once()  # at once when started: adopt the shared state
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_S):
                    await self._wake.wait()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        await self.store.aclose()
