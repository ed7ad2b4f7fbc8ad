"""Circuit breakers: one per deployment, on pybreaker's state machine and storages.

pybreaker's `call` records an outcome when a synchronous call returns, and `call_async`
needs Tornado; a stream's outcome is known only when it ends, possibly mid-answer minutes
later. So admission is decided here and outcomes are fed to pybreaker's state machine
through its public API when they are known:

- `admit()` returns a `Permit` (or None: route elsewhere). Closed admits everyone. Open
  admits no one until `reset_timeout_s` has passed; then the breaker goes half-open and
  admits **one** probe at a time, the others route elsewhere.
- `permit.failure(code)` counts a failure wherever it happened (connect, before the first
  token, mid-stream, a timeout); client errors (`CLIENT_ERROR_CODES`) do not count.
  `permit.success()` at the end of a complete stream resets the count, and a probe's
  success closes the breaker. `permit.release()` records nothing (the caller left, a hedge
  lost) and frees the probe slot. A permit resolves once; later calls are no-ops.
- Outcomes of permits admitted before the breaker tripped are ignored while it is open or
  half-open: only the probe decides.

pybreaker stamps `opened_at` with the wall clock; it is re-stamped here with the injectable
clock (the same wall clock in production), so tests never sleep. pybreaker imports redis at
import time (~100 ms or more): it is imported only when the first breaker is built.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from providers.base import CLIENT_ERROR_CODES
from router.config.schema import BreakerConfig

if TYPE_CHECKING:
    import pybreaker

Clock = Callable[[], datetime]
StorageFactory = Callable[[str], "pybreaker.CircuitBreakerStorage"]
StateChange = Callable[[str, str, str], None]  # deployment, old state, new state
Outcome = Callable[[str, bool], None]  # deployment, failed: one outcome a closed breaker took
BreakerState = Literal["closed", "open", "half_open"]

# pybreaker's state names -> ours (snake case, as in events and health).
_STATE: dict[str, BreakerState] = {"closed": "closed", "open": "open", "half-open": "half_open"}


def utc_now() -> datetime:
    return datetime.now(UTC)


def load_pybreaker() -> None:
    """Import pybreaker without the redis client when redis is not loaded yet. pybreaker
    imports redis only for its own Redis storage, which the router does not use (shared
    breaker state goes through `router.state`); redis, with the OpenTelemetry packages it
    imports, is ~11,000 objects (in the library benchmark's process) that every full
    collection walks, and ~160 ms of import. A process that uses Redis has loaded it
    already: no change. While pybreaker is imported, `import redis` fails in every
    thread: breakers are built on the loop's thread at a deployment's first request,
    where nothing else imports."""
    if "pybreaker" in sys.modules or "redis" in sys.modules:
        return
    sys.modules["redis"] = None  # type: ignore[assignment]  # `import redis` fails
    try:
        import pybreaker  # noqa: F401
    finally:
        del sys.modules["redis"]


def memory_storage(name: str) -> pybreaker.CircuitBreakerStorage:
    """pybreaker's in-process storage (the default)."""
    load_pybreaker()
    import pybreaker

    return pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)


class _Failed(Exception):
    """Raised inside `CircuitBreaker.call` so that pybreaker counts a failure."""


def _raise_failed() -> None:
    raise _Failed


def _succeed() -> None:
    return None


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """One breaker's state, as `router.health()` shows it."""

    deployment: str
    state: BreakerState
    fail_counter: int
    fail_max: int
    opened_at: datetime | None
    retry_at: datetime | None  # when an open breaker will admit a probe
    probe_in_flight: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "state": self.state,
            "fail_counter": self.fail_counter,
            "fail_max": self.fail_max,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "probe_in_flight": self.probe_in_flight,
        }


class Permit:
    """Leave to make one attempt on one deployment; report its outcome exactly once."""

    __slots__ = ("_breaker", "probe", "resolved")

    def __init__(self, breaker: Breaker, probe: bool) -> None:
        self._breaker = breaker
        self.probe = probe
        self.resolved = False

    def success(self) -> None:
        if not self.resolved:
            self.resolved = True
            self._breaker._record(self.probe, failed=False)

    def failure(self, code: str) -> None:
        """A failed attempt; `code` is the error code (client errors are not counted)."""
        if not self.resolved:
            self.resolved = True
            # A 429 is a quota answer, not an outage: routing cools the deployment for its
            # retry-after instead (`StatsRegistry.observe_outcome`).
            if code in CLIENT_ERROR_CODES or code == "rate_limited":
                self._breaker._release(self.probe)
            else:
                self._breaker._record(self.probe, failed=True)

    def release(self) -> None:
        """No outcome to report: the caller left, a hedge lost, or nothing was sent."""
        if not self.resolved:
            self.resolved = True
            self._breaker._release(self.probe)


class Breaker:
    """The breaker of one deployment."""

    def __init__(self, deployment: str, cfg: BreakerConfig, clock: Clock,
                 storage: pybreaker.CircuitBreakerStorage,
                 on_change: StateChange | None = None,
                 on_outcome: Callable[[], Outcome | None] | None = None) -> None:
        load_pybreaker()
        import pybreaker

        self.deployment = deployment
        self._clock = clock
        self._storage = storage
        self._on_change = on_change
        self._reset = timedelta(seconds=cfg.reset_timeout_s)
        # The failure-rate trip (resilience4j's): outcomes of the last `window_s`. With
        # shared state the other instances' outcomes join it (`learn_remote`) through the
        # routing statistics' sync, and ours leave through `on_outcome`.
        self._on_outcome = on_outcome
        self._rate, self._min_calls = cfg.failure_rate, cfg.min_calls
        self._window = timedelta(seconds=cfg.window_s)
        self._outcomes: deque[tuple[datetime, bool]] = deque()
        # throw_new_error_on_trip=False: a failure that trips it re-raises our _Failed.
        self._cb = pybreaker.CircuitBreaker(
            fail_max=cfg.fail_max, reset_timeout=cfg.reset_timeout_s, state_storage=storage,
            name=deployment, throw_new_error_on_trip=False,
        )
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        return _STATE[self._cb.current_state]

    def _ready_to_probe(self) -> bool:
        opened_at = self._storage.opened_at
        return opened_at is None or self._clock() >= opened_at + self._reset

    def admit(self) -> Permit | None:
        """A permit for one attempt, or None when the deployment must be skipped."""
        state = self.state
        if state == "closed":
            return Permit(self, probe=False)
        if state == "open":
            if not self._ready_to_probe():
                return None
            self._cb.half_open()
            self._notify("open", "half_open")
            self._probe_in_flight = False
        if self._probe_in_flight:
            return None
        claim = getattr(self._storage, "claim_probe", None)
        if claim is not None and not claim(self._reset.total_seconds()):
            return None  # another instance holds the probe
        self._probe_in_flight = True
        return Permit(self, probe=True)

    def unavailable_reason(self) -> str | None:
        """`circuit_open` while `admit()` would refuse, for routing; None otherwise."""
        state = self.state
        if state == "closed":
            return None
        if state == "open":
            return None if self._ready_to_probe() else "circuit_open"
        return "circuit_open" if self._probe_in_flight else None

    def _end_probe(self) -> None:
        self._probe_in_flight = False
        release = getattr(self._storage, "release_probe", None)
        if release is not None:
            release()

    def _record(self, probe: bool, failed: bool) -> None:
        before = self.state
        if not (failed or probe or self._storage.counter or self._cb.listeners) and (
                before == "closed" and self._rate is None):
            return  # all pybreaker would do: reset a failure count that is already 0
        if probe:
            self._end_probe()
            if before != "half_open":
                # The breaker moved on meanwhile (another instance, a manual reset): only a
                # closed breaker still takes the outcome.
                probe = False
        if before != "closed" and not probe:
            return  # admitted before the trip: only the probe decides now
        try:
            self._cb.call(_raise_failed if failed else _succeed)
        except _Failed as exc:
            # Its traceback holds pybreaker's frames, one of which holds it: a cycle (with
            # every caller's frame above) that only the cyclic collector would free.
            exc.__traceback__ = None
        if before == "closed" and self._rate is not None and self._on_outcome is not None:
            share = self._on_outcome()
            if share is not None:
                share(self.deployment, failed)
        if before == "closed" and self.state == "closed" and self._rate_exceeded(failed):
            self._cb.open()
        self._stamp_and_notify(before)

    def learn_remote(self, failed: bool) -> None:
        """Another instance's outcome on this deployment, for the failure-rate window only
        (the consecutive count is shared by the breaker storage itself)."""
        before = self.state
        if before == "closed" and self._rate_exceeded(failed):
            self._cb.open()
            self._stamp_and_notify(before)

    def _stamp_and_notify(self, before: BreakerState) -> None:
        after = self.state
        if after == "open" and before != "open":
            # pybreaker stamped the wall clock: use ours, so time is injectable.
            self._storage.opened_at = self._clock()
        if after != before:
            self._notify(before, after)

    def _rate_exceeded(self, failed: bool) -> bool:
        """Record one outcome of a closed breaker; True when the window's failure rate has
        reached `failure_rate` over at least `min_calls` calls."""
        if self._rate is None:
            return False
        now = self._clock()
        outcomes = self._outcomes
        outcomes.append((now, failed))
        while outcomes and outcomes[0][0] <= now - self._window:
            outcomes.popleft()
        if len(outcomes) < self._min_calls:
            return False
        failures = sum(1 for _, f in outcomes if f)
        if failures < self._rate * len(outcomes):
            return False
        outcomes.clear()  # a fresh window after the breaker closes again
        return True

    def _release(self, probe: bool) -> None:
        if probe:
            self._end_probe()

    def _notify(self, old: str, new: str) -> None:
        if self._on_change is not None:
            self._on_change(self.deployment, old, new)

    def reset(self) -> None:
        """Close the breaker by hand (an operator knows the deployment is back)."""
        before = self.state
        self._cb.close()
        self._outcomes.clear()
        self._end_probe()
        if before != "closed":
            self._notify(before, "closed")

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        opened_at = self._storage.opened_at if state != "closed" else None
        retry_at = opened_at + self._reset if state == "open" and opened_at else None
        return BreakerSnapshot(
            deployment=self.deployment, state=state, fail_counter=self._cb.fail_counter,
            fail_max=self._cb.fail_max, opened_at=opened_at, retry_at=retry_at,
            probe_in_flight=self._probe_in_flight,
        )


class BreakerRegistry:
    """Every deployment's breaker, built on first use from `resilience.breaker`.

    `storage_factory(deployment)` returns the pybreaker storage of one breaker: memory by
    default; `router.resilience.breaker_sync.BreakerSync` keeps it in memory too and syncs
    it with the other router instances through Redis in the background (no Redis call on
    the decision path)."""

    def __init__(self, cfg: BreakerConfig, *, clock: Clock = utc_now,
                 storage_factory: StorageFactory = memory_storage,
                 on_change: StateChange | None = None, shared: bool = False) -> None:
        self._cfg = cfg
        # Set by `router.state.stats_sync`: where local outcomes go for the other instances.
        self.on_outcome: Outcome | None = None
        self._shared = shared  # state may change elsewhere: always ask the storage
        self._clock = clock
        self._storage_factory = storage_factory
        self._on_change = on_change
        self._by_id: dict[str, Breaker] = {}

    def get(self, deployment: str) -> Breaker:
        breaker = self._by_id.get(deployment)
        if breaker is None:
            breaker = self._by_id[deployment] = Breaker(
                deployment, self._cfg, self._clock, self._storage_factory(deployment),
                self._on_change, lambda: self.on_outcome,
            )
        return breaker

    def admit(self, deployment: str) -> Permit | None:
        return self.get(deployment).admit()

    def unavailable_reason(self, deployment: str) -> str | None:
        breaker = self._by_id.get(deployment)
        if breaker is None and self._shared:
            breaker = self.get(deployment)
        # Unshared, a deployment never used has a closed breaker: no need to build one (or
        # import pybreaker) just to route.
        return None if breaker is None else breaker.unavailable_reason()

    def snapshot(self, deployments: tuple[str, ...] = ()) -> dict[str, BreakerSnapshot]:
        """Breakers built so far, and those of `deployments` when the state is shared."""
        if self._shared:
            for dep in deployments:
                self.get(dep)
        return {dep: b.snapshot() for dep, b in self._by_id.items()}
