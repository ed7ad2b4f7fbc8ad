"""Breakers: transitions on a fake clock, one probe at a time, client errors not counted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pybreaker
import pytest

from router.config import BreakerConfig
from router.resilience.breaker import BreakerRegistry, Permit
from router.resilience.breaker_sync import BreakerSync
from router.state.redis import RedisState
from router.testing.redis_server import RedisServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def reg(clock: FakeClock, changes: list[tuple[str, str, str]]) -> BreakerRegistry:
    return BreakerRegistry(BreakerConfig(fail_max=3, reset_timeout_s=30), clock=clock,
                           on_change=lambda *c: changes.append(c))


def admit(reg: BreakerRegistry, dep: str = "a") -> Permit:
    permit = reg.admit(dep)
    assert permit is not None
    return permit


def trip(reg: BreakerRegistry, dep: str = "a", n: int = 3) -> None:
    for _ in range(n):
        admit(reg, dep).failure("overloaded")


def test_closed_breaker_opens_after_fail_max_consecutive_failures(reg: BreakerRegistry) -> None:
    trip(reg, n=2)
    assert reg.get("a").state == "closed"
    assert reg.snapshot()["a"].fail_counter == 2
    admit(reg).failure("timeout")
    assert reg.get("a").state == "open"
    assert reg.admit("a") is None
    assert reg.unavailable_reason("a") == "circuit_open"


def test_success_resets_the_consecutive_failure_count(reg: BreakerRegistry) -> None:
    trip(reg, n=2)
    admit(reg).success()
    trip(reg, n=2)
    assert reg.get("a").state == "closed"
    assert reg.snapshot()["a"].fail_counter == 2


@pytest.mark.parametrize("code", ["bad_request", "auth", "context_length", "content_filter"])
def test_client_errors_never_count(reg: BreakerRegistry, code: str) -> None:
    for _ in range(10):
        admit(reg).failure(code)
    assert reg.get("a").state == "closed"
    assert reg.snapshot()["a"].fail_counter == 0


def test_open_until_reset_timeout_then_one_probe_at_a_time(
        reg: BreakerRegistry, clock: FakeClock) -> None:
    trip(reg)
    clock.advance(29.9)
    assert reg.admit("a") is None
    clock.advance(0.2)
    assert reg.unavailable_reason("a") is None  # routable: a probe may go
    probe = admit(reg)
    assert probe.probe
    assert reg.get("a").state == "half_open"
    # Others route elsewhere while the probe is out.
    assert reg.admit("a") is None
    assert reg.unavailable_reason("a") == "circuit_open"
    assert reg.snapshot()["a"].probe_in_flight
    probe.success()
    assert reg.get("a").state == "closed"
    assert reg.snapshot()["a"].fail_counter == 0
    assert not admit(reg).probe


def test_failed_probe_reopens_for_a_full_reset_timeout(
        reg: BreakerRegistry, clock: FakeClock) -> None:
    trip(reg)
    clock.advance(31)
    admit(reg).failure("connection")
    snap = reg.snapshot()["a"]
    assert snap.state == "open"
    assert snap.opened_at == clock.now  # stamped with the injected clock
    assert snap.retry_at == clock.now + timedelta(seconds=30)
    clock.advance(29)
    assert reg.admit("a") is None
    clock.advance(2)
    assert admit(reg).probe


def test_released_probe_frees_the_slot_without_deciding(
        reg: BreakerRegistry, clock: FakeClock) -> None:
    trip(reg)
    clock.advance(30)
    admit(reg).release()  # e.g. the caller left before an outcome
    assert reg.get("a").state == "half_open"
    probe = admit(reg)
    probe.failure("bad_request")  # a client error neither closes nor reopens it
    assert reg.get("a").state == "half_open"
    admit(reg).success()
    assert reg.get("a").state == "closed"


def test_outcomes_of_permits_admitted_before_the_trip_are_ignored(
        reg: BreakerRegistry, clock: FakeClock) -> None:
    early_ok, early_bad = admit(reg), admit(reg)
    trip(reg)
    early_ok.success()  # a long stream that began before the trip
    assert reg.get("a").state == "open"
    clock.advance(30)
    probe = admit(reg)
    early_bad.failure("overloaded")
    assert reg.get("a").state == "half_open"  # only the probe decides
    probe.success()
    assert reg.get("a").state == "closed"


def test_a_permit_resolves_once(reg: BreakerRegistry) -> None:
    permit = admit(reg)
    for _ in range(5):
        permit.failure("overloaded")
    permit.success()
    assert reg.snapshot()["a"].fail_counter == 1


def test_breakers_are_per_deployment(reg: BreakerRegistry) -> None:
    trip(reg, "a")
    assert reg.admit("a") is None
    assert reg.admit("b") is not None
    assert reg.unavailable_reason("never-used") is None


def test_state_changes_are_reported_and_snapshot_is_json(
        reg: BreakerRegistry, clock: FakeClock, changes: list[tuple[str, str, str]]) -> None:
    trip(reg)
    clock.advance(30)
    admit(reg).success()
    assert changes == [("a", "closed", "open"), ("a", "open", "half_open"),
                       ("a", "half_open", "closed")]
    trip(reg)
    doc = json.loads(json.dumps(reg.snapshot()["a"].as_dict()))
    assert doc == {"deployment": "a", "state": "open", "fail_counter": 3, "fail_max": 3,
                   "opened_at": clock.now.isoformat(),
                   "retry_at": (clock.now + timedelta(seconds=30)).isoformat(),
                   "probe_in_flight": False}


def test_manual_reset_closes(reg: BreakerRegistry) -> None:
    trip(reg)
    reg.get("a").reset()
    assert reg.get("a").state == "closed"
    assert reg.admit("a") is not None


def test_shared_storage_is_seen_by_every_registry(clock: FakeClock) -> None:
    """Stand-in for pybreaker's Redis storage: two routers sharing one storage per
    deployment see each other's trips and recoveries."""
    shared: dict[str, pybreaker.CircuitBreakerStorage] = {}

    def storage(dep: str) -> pybreaker.CircuitBreakerStorage:
        return shared.setdefault(dep, pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED))

    cfg = BreakerConfig(fail_max=2, reset_timeout_s=10)
    one = BreakerRegistry(cfg, clock=clock, storage_factory=storage)
    two = BreakerRegistry(cfg, clock=clock, storage_factory=storage)
    admit(one).failure("overloaded")
    admit(two).failure("overloaded")
    assert one.admit("a") is None and two.admit("a") is None
    clock.advance(10)
    admit(two).success()
    assert one.get("a").state == "closed"
    assert one.admit("a") is not None


def test_importing_the_module_does_not_import_pybreaker() -> None:
    code = ("import sys, router.resilience.breaker; "
            "assert 'pybreaker' not in sys.modules, 'pybreaker imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_breakers_of_a_process_without_redis_do_not_load_the_redis_client() -> None:
    # pybreaker imports redis for a storage the router does not use: ~11,000 objects
    # every full garbage collection would walk, and ~160 ms of import.
    code = ("import sys; from router.config import BreakerConfig; "
            "from router.resilience.breaker import BreakerRegistry; "
            "r = BreakerRegistry(BreakerConfig(fail_max=2, reset_timeout_s=10)); "
            "r.admit('a').failure('overloaded'); r.admit('a').failure('overloaded'); "
            "assert r.admit('a') is None, 'the breaker did not trip'; "
            "assert 'pybreaker' in sys.modules and 'redis' not in sys.modules, 'redis loaded'; "
            "import redis")  # and redis itself is still importable afterwards
    subprocess.run([sys.executable, "-c", code], check=True)


def shared_registry(redis_url: str, clock: FakeClock, fail_max: int,
                    prefix: str) -> tuple[BreakerRegistry, BreakerSync]:
    sync = BreakerSync(RedisState(redis_url), prefix)
    cfg = BreakerConfig(fail_max=fail_max, reset_timeout_s=30)
    return BreakerRegistry(cfg, clock=clock, storage_factory=sync, shared=True), sync


async def test_shared_breakers_sync_trips_and_recoveries_between_routers(
        redis_url: str) -> None:
    """Two router instances on one Redis: a trip on one reaches the other at its next sync,
    and so does the recovery; no Redis call is made while deciding."""
    clock = FakeClock()
    prefix = f"test-{time.monotonic_ns()}:"
    one, sync_one = shared_registry(redis_url, clock, 2, prefix)
    two, sync_two = shared_registry(redis_url, clock, 2, prefix)
    try:
        admit(two)  # both instances know the deployment
        admit(one).failure("overloaded")
        admit(one).failure("overloaded")
        assert one.unavailable_reason("a") == "circuit_open"
        assert await sync_one.sync_once() and await sync_two.sync_once()
        assert two.unavailable_reason("a") == "circuit_open"
        assert two.snapshot(("a",))["a"].opened_at == clock.now
        assert two.unavailable_reason("never-used-here") is None
        clock.advance(31)
        probe = admit(one)
        assert probe.probe
        probe.success()
        assert await sync_one.sync_once() and await sync_two.sync_once()
        assert two.get("a").state == "closed" and two.admit("a") is not None
    finally:
        await sync_one.aclose()
        await sync_two.aclose()


async def test_shared_breakers_decide_alone_while_redis_is_down(redis_server: RedisServer) -> None:
    clock = FakeClock()
    one, sync = shared_registry(redis_server.url, clock, 1, "t:")
    try:
        redis_server.kill()
        admit(one).failure("timeout")
        assert one.unavailable_reason("a") == "circuit_open"  # per process meanwhile
        assert not await sync.sync_once()
        redis_server.start()
        # The trip made meanwhile is written once Redis answers (the background task may
        # be the one to write it: poll, with a deadline).
        deadline = time.monotonic() + 10
        while not (await sync.store.ping() and await sync.sync_once()):
            assert time.monotonic() < deadline
        other, other_sync = shared_registry(redis_server.url, clock, 1, "t:")
        other.get("a")
        assert await other_sync.sync_once()
        assert other.unavailable_reason("a") == "circuit_open"
        await other_sync.aclose()
    finally:
        await sync.aclose()


# --- the failure-rate trip -----------------------------------------------------------------


def rate_registry(clock: FakeClock, changes: list[tuple[str, str, str]]) -> BreakerRegistry:
    cfg = BreakerConfig(fail_max=100, reset_timeout_s=30, failure_rate=0.5, min_calls=10,
                        window_s=60)
    return BreakerRegistry(cfg, clock=clock, on_change=lambda *c: changes.append(c))


def test_alternating_failures_trip_the_rate_not_the_consecutive_count(
        clock: FakeClock, changes: list[tuple[str, str, str]]) -> None:
    reg = rate_registry(clock, changes)
    for i in range(9):  # a 50% brown-out never fails twice in a row
        permit = admit(reg)
        permit.failure("overloaded") if i % 2 == 0 else permit.success()
        clock.advance(1)
    assert reg.get("a").state == "closed"  # 9 calls < min_calls
    admit(reg).success()  # the 10th call: 5 of 10 failed
    assert reg.get("a").state == "open"
    assert changes == [("a", "closed", "open")]
    assert reg.snapshot()["a"].opened_at == clock.now  # the injected clock, not the wall


def test_the_rate_window_forgets_old_failures(clock: FakeClock,
                                              changes: list[tuple[str, str, str]]) -> None:
    reg = rate_registry(clock, changes)
    for _ in range(9):  # fewer than min_calls
        admit(reg).failure("overloaded")
    clock.advance(61)  # they leave the window
    for i in range(10):
        permit = admit(reg)
        permit.failure("overloaded") if i % 3 == 0 else permit.success()
    # 4 of the window's 10 failed (40%); 13 of 19 (68%) had the old ones counted.
    assert reg.get("a").state == "closed"
    assert changes == []


def test_a_429_is_not_a_breaker_failure(reg: BreakerRegistry) -> None:
    for _ in range(10):
        admit(reg).failure("rate_limited")
    assert reg.get("a").state == "closed"
    assert reg.snapshot()["a"].fail_counter == 0


async def test_a_breaker_built_outside_the_loop_still_syncs(redis_url: str) -> None:
    """The server builds every breaker before its event loop runs (the metrics collector
    takes a health snapshot at registration): the sync must still start once decisions are
    made in a loop, and adopt another instance's trip without any local change here."""
    clock = FakeClock()
    prefix = f"test-{time.monotonic_ns()}:"
    one, sync_one = shared_registry(redis_url, clock, 2, prefix)
    two, sync_two = shared_registry(redis_url, clock, 2, prefix)
    try:
        await asyncio.to_thread(two.get, "a")  # no running loop in that thread
        admit(one).failure("overloaded")
        admit(one).failure("overloaded")
        assert await sync_one.sync_once()
        deadline = time.monotonic() + 5
        while two.unavailable_reason("a") != "circuit_open":  # no sync_once on two
            assert time.monotonic() < deadline, "two never adopted one's trip"
            await asyncio.sleep(0.05)
    finally:
        await sync_one.aclose()
        await sync_two.aclose()
