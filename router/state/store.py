"""The async state interface for shared mutable state, with a memory and a Redis backend.

Spend is what lives here today: integer counters in nano-USD (1e-9 USD, so sums are exact),
grouped in hashes (`field -> int`; the field `*` holds the total, other fields a breakdown
such as per deployment), in-flight reservations per scope, and once-only flags.

A reservation is a **lease**: it has its own id and deadline, and every reserve first sweeps
the expired leases of the keys it checks (in the same atomic step), so a router that died
mid-request holds a budget for one lease time at most. A settle names its lease and an
idempotency key (`once`): replaying it (a journal flushed after an outage) books nothing
twice. Every
operation that reads and then writes is one atomic step: one synchronous block in memory,
one Lua script in Redis, so concurrent routers can never both pass the same check.

Keys expire (TTL) so that finished windows clean themselves up; the memory backend expires
them lazily against an injectable clock.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class StateUnavailable(Exception):  # a condition, as in "the state is unavailable"
    """The state store did not answer within its timeouts (or refused the connection).
    `store` names it without credentials, e.g. `redis 127.0.0.1:6379/0`."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"state store {store} unavailable: {reason}")
        self.store = store
        self.reason = reason


NANO = 1_000_000_000  # nano-USD per USD
TOTAL = "*"  # the hash field that holds a counter's total


def to_nano(usd: float) -> int:
    """USD to nano-USD, rounded up: spend is never under-counted."""
    return math.ceil(usd * NANO - 1e-6) if usd > 0 else 0


def to_usd(nano: int) -> float:
    return nano / NANO


class LimitCheck(NamedTuple):
    """One limit to check on reserve: the spend in `spent_keys` (their totals) plus the
    in-flight reservations in `held_key`, plus the new amount, must stay within `limit`."""

    held_key: str
    spent_keys: tuple[str, ...]
    limit: int


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a reserve: `failed` is the index of the first check that could not
    cover the amount (None: `reserved` was reserved on every check). `spent` and `held` are
    per check, as they were before this reservation."""

    failed: int | None
    spent: tuple[int, ...]
    held: tuple[int, ...]
    reserved: int = 0
    lease: str = ""


class Booking(NamedTuple):
    """Add `amount` to the total of hash `key` and to its field `field`."""

    key: str
    field: str
    amount: int
    ttl_s: int


class Watch(NamedTuple):
    """After booking, read the spend in `spent_keys`; when it is at least `threshold`, set
    the flag `flag_key` (once: the first settle to find it crossed is told so)."""

    spent_keys: tuple[str, ...]
    threshold: int | None
    flag_key: str
    ttl_s: int


@dataclass(frozen=True, slots=True)
class WatchResult:
    spent: int
    crossed: bool


class StateBackend(Protocol):
    name: str  # the store, for messages (no credentials)

    @property
    def available(self) -> bool:
        """False while the store is known not to answer (calls would fail at once)."""
        ...

    async def reserve(self, checks: Sequence[LimitCheck], amount: int, hold_ttl_s: float,
                      up_to: int | None = None, *, lease: str | None = None) -> Admission:
        """Atomically: sweep the expired leases of every held key, then, if every check can
        cover `amount`, lease as much as every check can cover up to `up_to` (at least
        `amount`) on each distinct held key, for `hold_ttl_s` seconds. `lease` names the
        lease (a fresh id otherwise); the admission carries it."""
        ...

    async def settle(self, held_keys: Sequence[str], amount: int, bookings: Sequence[Booking],
                     watches: Sequence[Watch], *, lease: str | None = None,
                     once: str | None = None, final: bool = True) -> list[WatchResult]:
        """Atomically: unless `once` was seen before (then only the watches are read), take
        `amount` off lease `lease` on each held key (`final`: end the lease), apply the
        bookings (amounts may be negative: a correction), evaluate the watches."""
        ...

    async def totals(self, keys: Sequence[str]) -> list[int]:
        """The total of each hash (0 when absent)."""
        ...

    async def held(self, keys: Sequence[str]) -> list[int]:
        """The unexpired leases of each held key, summed."""
        ...

    async def scan_held(self, prefix: str) -> list[str]:
        """The held keys starting with `prefix`."""
        ...

    async def scan(self, prefix: str, suffix: str) -> dict[str, dict[str, int]]:
        """Every counter hash whose key starts with `prefix` and ends with `suffix`."""
        ...

    async def aclose(self) -> None: ...


ONCE_TTL_S = 7 * 86400  # how long a settle's idempotency key is remembered


def new_lease() -> str:
    """A fresh lease id: 128 random bits in 32 hex digits (a uuid4's randomness without
    building a UUID, once per request)."""
    return os.urandom(16).hex()


class MemoryState:
    """State in this process. Each operation runs without an await, hence atomically."""

    name = "memory"
    available = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._hashes: dict[str, dict[str, int]] = {}
        self._ints: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._leases: dict[str, dict[str, list[float]]] = {}  # held key -> id -> [n, deadline]
        self._ops = 0

    def _alive(self, key: str) -> bool:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self.clock():
            self._hashes.pop(key, None)
            self._ints.pop(key, None)
            del self._expires[key]
            return False
        return True

    def _total(self, key: str) -> int:
        if not self._alive(key):
            return 0
        return self._hashes.get(key, {}).get(TOTAL, 0)

    def _sum(self, keys: Sequence[str]) -> int:
        # Rolling windows sum ~60 mostly absent buckets: the fast path skips them.
        hashes, total = self._hashes, 0
        for key in keys:
            if key in hashes and self._alive(key):
                total += hashes[key].get(TOTAL, 0)
        return total

    def _int(self, key: str) -> int:
        return self._ints.get(key, 0) if self._alive(key) else 0

    def _held(self, key: str, now: float) -> int:
        leases = self._leases.get(key)
        if not leases:
            return 0
        for lid in [lid for lid, (_, deadline) in leases.items() if deadline <= now]:
            del leases[lid]
        if not leases:
            del self._leases[key]
        return int(sum(n for n, _ in leases.values()))

    def _purge(self) -> None:
        # Lazy expiry only touches keys that are read; sweep now and then to bound memory.
        self._ops += 1
        if self._ops % 1024 == 0:
            now = self.clock()
            for key in [k for k, t in self._expires.items() if t <= now]:
                self._alive(key)
            for key in list(self._leases):
                self._held(key, now)

    async def reserve(self, checks: Sequence[LimitCheck], amount: int, hold_ttl_s: float,
                      up_to: int | None = None, *, lease: str | None = None) -> Admission:
        now = self.clock()
        spent: list[int] = []
        held: list[int] = []
        failed: int | None = None
        reserved = max(amount, up_to or 0)
        for i, check in enumerate(checks):
            s = self._sum(check.spent_keys)
            h = self._held(check.held_key, now)
            spent.append(s)
            held.append(h)
            if failed is None and s + h + amount > check.limit:
                failed = i
            reserved = min(reserved, check.limit - s - h)
        if failed is not None:
            return Admission(failed, tuple(spent), tuple(held))
        lid = lease or new_lease()
        for key in {c.held_key for c in checks}:
            self._leases.setdefault(key, {})[lid] = [reserved, now + hold_ttl_s]
        return Admission(None, tuple(spent), tuple(held), reserved, lid)

    def _release(self, held_keys: Sequence[str], amount: int, lease: str | None,
                 final: bool) -> None:
        for key in set(held_keys):
            leases = self._leases.get(key, {})
            entry = leases.get(lease or "")
            if entry is None:
                continue
            entry[0] -= amount
            if final or entry[0] <= 0:
                del leases[lease or ""]

    async def settle(self, held_keys: Sequence[str], amount: int, bookings: Sequence[Booking],
                     watches: Sequence[Watch], *, lease: str | None = None,
                     once: str | None = None, final: bool = True) -> list[WatchResult]:
        self._purge()
        now = self.clock()
        fresh = once is None or not self._int(once)
        if fresh:
            if once is not None:
                self._ints[once] = 1
                self._expires[once] = now + ONCE_TTL_S
            if held_keys:
                self._release(held_keys, amount, lease, final)
            for b in bookings:
                self._alive(b.key)  # an expired window starts again from zero
                h = self._hashes.setdefault(b.key, {})
                h[TOTAL] = h.get(TOTAL, 0) + b.amount
                h[b.field] = h.get(b.field, 0) + b.amount
                self._expires[b.key] = now + b.ttl_s
        out: list[WatchResult] = []
        for w in watches:
            s = self._sum(w.spent_keys)
            crossed = False
            if w.threshold is not None and s >= w.threshold and not self._int(w.flag_key):
                self._ints[w.flag_key] = 1
                self._expires[w.flag_key] = now + w.ttl_s
                crossed = True
            out.append(WatchResult(s, crossed))
        return out

    async def totals(self, keys: Sequence[str]) -> list[int]:
        return [self._total(k) for k in keys]

    async def held(self, keys: Sequence[str]) -> list[int]:
        now = self.clock()
        return [self._held(k, now) for k in keys]

    async def scan_held(self, prefix: str) -> list[str]:
        now = self.clock()
        return [k for k in list(self._leases) if k.startswith(prefix) and self._held(k, now)]

    async def scan(self, prefix: str, suffix: str) -> dict[str, dict[str, int]]:
        least = len(prefix) + len(suffix)  # prefix and suffix do not overlap (as in Redis)
        return {k: dict(v) for k, v in list(self._hashes.items())
                if len(k) >= least and k.startswith(prefix) and k.endswith(suffix)
                and self._alive(k)}

    async def aclose(self) -> None:
        return None
