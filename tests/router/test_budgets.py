"""Budgets: config and windows, reserve/settle on an injected clock (warning once, refusal,
roll-over, 200 concurrent requests), and through `Router.stream()` on the simulated provider
and a scripted one: the per-request cap (property-based), a budget stopping a stream, and
the cost of cancelled, failed-over and hedged attempts in `done.cost_usd` and in spend."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.base import (
    Delta,
    FinishDelta,
    ProviderError,
    ProviderRequest,
    TextDelta,
    UsageDelta,
    estimate_tokens,
)
from router.budgets.gate import Refusal
from router.budgets.manager import BudgetManager, BudgetReservation
from router.budgets.windows import Window, calendar_bucket, parse_duration
from router.config import BudgetConfig, StateConfig, parse_config
from router.core import Router
from router.errors import ConfigError
from router.events import BudgetEvent, DoneEvent, ErrorEvent, Event, TextEvent
from router.request import StreamParams, prepare
from router.routing.cost import cost_of
from router.state.store import MemoryState, to_nano, to_usd

T0 = datetime(2026, 3, 14, 23, 0, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Req:
    """What the gate reads of a request."""

    metadata: dict[str, Any] = field(default_factory=lambda: {"user": "ann"})
    task: str | None = "general"


def manager(*budgets: dict[str, Any], clock: Clock | None = None) -> BudgetManager:
    clock = clock or Clock()
    return BudgetManager([BudgetConfig(**b) for b in budgets], MemoryState(clock), clock=clock)


async def reserve(m: BudgetManager, cap: float | None = None, estimate: float = 0.01,
                  **req: Any) -> BudgetReservation | Refusal:
    res = await m.reserve(Req(**req), estimate, cap)  # type: ignore[arg-type]
    assert isinstance(res, BudgetReservation | Refusal)
    return res


async def spend(m: BudgetManager, cost: float, **req: Any) -> list[Any]:
    res = await reserve(m, cost, **req)
    assert isinstance(res, BudgetReservation), res
    return list(await res.settle(cost, False, {"d": cost}))


# --- config and windows ---------------------------------------------------------------------

BASE: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated"}},
    "deployments": [{"id": "a", "provider": "sim", "model": "m",
                     "price": {"input_per_mtok": 1, "output_per_mtok": 2}}],
    "tasks": {"qualification": {"candidates": ["a"]}},
}


@pytest.mark.parametrize(("budget", "message"), [
    ({"scope": "team", "limit_usd": 5}, "budgets[0].scope: Value error, invalid scope 'team'"),
    ({"scope": "user", "limit_usd": 0}, "budgets[0].limit_usd: Input should be greater than 0"),
    ({"scope": "user", "limit_usd": 5, "window": "week"},
     "budgets[0].window: Value error, invalid window 'week'"),
    ({"scope": "user", "limit_usd": 5, "window": "rolling:0h"},
     "budgets[0].window: Value error, invalid duration '0h'"),
    ({"scope": "user", "limit_usd": 5, "warn_at": 1.5},
     "budgets[0].warn_at: Input should be less than or equal to 1"),
    ({"scope": "task:nope", "limit_usd": 5},
     "budgets[0].scope: unknown task 'nope' (expected one of: qualification)"),
    ({"scope": "user", "limit": 5}, "budgets[0].limit: unknown key 'limit'"),
])
def test_budget_config_errors_name_the_path(budget: dict[str, Any], message: str) -> None:
    data = {**copy.deepcopy(BASE), "budgets": [budget]}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "router.yaml", env={})
    assert "router.yaml: " + message in str(exc.value).splitlines()[-1] or str(
        exc.value).startswith("router.yaml: " + message)


def test_the_issue_example_config_loads() -> None:
    budgets = [{"scope": "key", "limit_usd": 50, "window": "day", "warn_at": 0.8},
               {"scope": "user", "limit_usd": 5, "window": "hour"},
               {"scope": "task:qualification", "limit_usd": 200, "window": "month"},
               {"scope": "global", "limit_usd": 1000, "window": "rolling:30d"}]
    loaded = parse_config({**copy.deepcopy(BASE), "budgets": budgets}, "r.yaml", env={})
    assert [b.window for b in loaded.config.budgets] == ["day", "hour", "month", "rolling:30d"]


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90s", "30m", "24h", "7d", "1h30m")] == [
        90, 1800, 86400, 604800, 5400]
    for bad in ("", "10", "h", "1w", "1h 30m", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_calendar_windows_are_utc_aligned() -> None:
    t = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert calendar_bucket("hour", t) == ("h2026-12-31T23", t + 1)
    assert calendar_bucket("day", t) == ("d2026-12-31", t + 1)
    assert calendar_bucket("month", t) == ("m2026-12", t + 1)
    assert calendar_bucket("month", t + 1)[0] == "m2027-01"
    feb = datetime(2028, 2, 10, tzinfo=UTC).timestamp()
    assert calendar_bucket("month", feb)[1] == datetime(2028, 3, 1, tzinfo=UTC).timestamp()


@given(st.floats(1e9, 2e9), st.integers(1, 40 * 86400))
def test_rolling_buckets_cover_the_whole_window(now: float, seconds: int) -> None:
    w = Window("rolling", seconds)
    buckets = w.spent_buckets(now)
    b = w.bucket_s
    first, last = (int(x.split(":")[1]) for x in (buckets[0], buckets[-1]))
    assert first * b <= now - seconds and (last + 1) * b > now  # never forgets early
    assert len(buckets) <= 62
    assert w.booking(now)[0] == buckets[-1]


# --- reserve and settle ---------------------------------------------------------------------


async def test_warning_is_emitted_exactly_once_at_the_threshold() -> None:
    clock = Clock()
    m = manager({"scope": "user", "limit_usd": 1.0, "window": "day", "warn_at": 0.8},
                clock=clock)
    assert await spend(m, 0.3) == []
    assert await spend(m, 0.3) == []
    notices = await spend(m, 0.25)  # 0.85: crosses 0.8
    assert [(n.scope, n.level, n.limit_usd) for n in notices] == [("user:ann/day", "warning", 1.0)]
    assert notices[0].spent_usd == pytest.approx(0.85)
    assert await spend(m, 0.1) == []
    assert await spend(m, 0.05, metadata={"user": "bob"}) == []  # bob has his own budget
    clock.now += 3600  # a new UTC day: a new window, a new warning
    assert await spend(m, 0.5) == []
    assert [n.level for n in await spend(m, 0.4)] == ["warning"]


async def test_refusal_when_exhausted_names_scope_spent_and_limit() -> None:
    m = manager({"scope": "user", "limit_usd": 1.0, "window": "hour"})
    await spend(m, 0.9)
    held = await reserve(m, 0.05)
    assert isinstance(held, BudgetReservation)
    refused = await reserve(m, 0.06)
    assert isinstance(refused, Refusal)
    assert refused.scope == "user:ann/hour"
    assert refused.message == (
        "budget user:ann/hour: spent $0.900000 of $1.000000 ($0.050000 more reserved by "
        "requests in flight); this request needs $0.060000")
    assert isinstance(await reserve(m, 0.05, metadata={"user": "bob"}), BudgetReservation)
    assert isinstance(await reserve(m, None, estimate=0.06), Refusal)  # no cap: the estimate


async def test_day_window_rolls_over_at_midnight_utc() -> None:
    clock = Clock(datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC).timestamp())
    m = manager({"scope": "global", "limit_usd": 1.0, "window": "day"}, clock=clock)
    await spend(m, 1.0)
    assert isinstance(await reserve(m, 0.01), Refusal)
    clock.now += 1
    assert isinstance(await reserve(m, 1.0), BudgetReservation)


async def test_rolling_window_forgets_spend_only_after_its_duration() -> None:
    clock = Clock()
    m = manager({"scope": "user", "limit_usd": 1.0, "window": "rolling:1h"}, clock=clock)
    await spend(m, 0.8)
    clock.now += 3599
    assert isinstance(await reserve(m, 0.3), Refusal)
    clock.now += 60 + 1  # one bucket (60 s) later than the hour: gone
    assert isinstance(await reserve(m, 1.0), BudgetReservation)


async def test_scopes_come_from_metadata_task_and_global() -> None:
    m = manager({"scope": "key", "limit_usd": 1}, {"scope": "session", "limit_usd": 1},
                {"scope": "task:qualification", "limit_usd": 1}, {"scope": "global",
                                                                  "limit_usd": 1})
    res = await reserve(m, 0.1, metadata={"key": "k1", "session": "s9"}, task="qualification")
    assert isinstance(res, BudgetReservation)
    assert sorted(ln.label for ln in res.lines) == [
        "global/day", "key:k1/day", "session:k1/s9/day", "task:qualification/day"]
    other = await reserve(m, 0.1, metadata={}, task="general")
    assert isinstance(other, BudgetReservation)
    assert [ln.label for ln in other.lines] == ["global/day"]


async def test_user_budgets_of_one_key_do_not_spend_another_keys() -> None:
    # Key A spending as user ann must not exhaust key B's ann (issue 13, item 8).
    m = manager({"scope": "user", "limit_usd": 0.10})
    await spend(m, 0.10, metadata={"key": "A", "user": "ann"})
    assert isinstance(await reserve(m, 0.01, metadata={"key": "A", "user": "ann"}), Refusal)
    b = await reserve(m, 0.05, metadata={"key": "B", "user": "ann"})
    assert isinstance(b, BudgetReservation)
    assert [ln.scope for ln in b.lines] == ["user:B/ann"]


async def test_a_trusted_single_tenant_can_share_users_across_keys() -> None:
    clock = Clock()
    m = BudgetManager([BudgetConfig(scope="user", limit_usd=0.10)], MemoryState(clock),
                      clock=clock, settings=StateConfig(user_scopes="shared"))
    await spend(m, 0.10, metadata={"key": "A", "user": "ann"})
    assert isinstance(await reserve(m, 0.01, metadata={"key": "B", "user": "ann"}), Refusal)


async def test_stream_limit_is_what_the_request_holds() -> None:
    m = manager({"scope": "user", "limit_usd": 1.0, "window": "hour"},
                {"scope": "global", "limit_usd": 10.0})
    await spend(m, 0.7)
    capped = await reserve(m, 0.2)
    assert isinstance(capped, BudgetReservation)
    assert (capped.limit_usd, capped.limit_scope, capped.amount) == (0.2, None, to_nano(0.2))
    # No cap and no prices known: the estimate is held, and is the limit.
    uncapped = await reserve(m, None, estimate=0.05)
    assert isinstance(uncapped, BudgetReservation)
    assert uncapped.limit_usd == pytest.approx(0.05)
    assert uncapped.limit_scope == "user:ann/hour"


async def test_uncapped_requests_hold_their_worst_case_within_the_headroom() -> None:
    data = {**copy.deepcopy(FLEET), "budgets": [{"scope": "user", "limit_usd": 1.0}]}
    loaded = parse_config(data, "t.yaml", env={})
    m = BudgetManager(loaded.config.budgets, deployments=loaded.deployments)
    req = prepare(StreamParams("Qualify this lead", max_tokens=100, metadata={"user": "ann"}),
                  loaded)
    # The worst case: the dearest candidate ("a": $100 in, $1000 out per Mtok) at 100
    # output tokens, doubled for the 4-characters-a-token count.
    worst = 2 * (req.constraints.input_tokens * 100e-6 + 100 * 1000e-6)
    held = await m.reserve(req, 0.01, None)
    assert isinstance(held, BudgetReservation)
    assert held.limit_usd == pytest.approx(worst, abs=1e-9)
    big = prepare(StreamParams("Qualify this lead", max_tokens=2000, metadata={"user": "ann"}),
                  loaded)
    rest = await m.reserve(big, 0.01, None)  # 4 USD worst case: held up to the headroom
    assert isinstance(rest, BudgetReservation)
    assert rest.limit_usd == pytest.approx(1.0 - worst, abs=1e-9)
    assert rest.limit_scope == "user:ann/day"
    assert isinstance(await m.reserve(req, 0.01, None), Refusal)  # nothing left to hold
    await rest.settle(0.1, False)
    assert isinstance(await m.reserve(req, 0.01, None), BudgetReservation)


async def test_settlement_is_exact_and_happens_once() -> None:
    m = manager({"scope": "user", "limit_usd": 5.0})
    costs = [0.123456789, 0.000000001, 0.5, 0.0]
    for cost in costs:
        res = await reserve(m, 1.0)
        assert isinstance(res, BudgetReservation)
        await res.settle(cost, False, {"a": cost * 0.25, "b": cost * 0.75} if cost else {})
        assert await res.settle(cost, False) == ()  # a second settle books nothing
    report_state = m.state
    assert await report_state.held([m.held_key("user:ann")]) == [0]
    day = calendar_bucket("day", T0)[0]
    total = (await report_state.totals([m.spend_key("user:ann", day)]))[0]
    expected = sum(to_nano(c * 0.25) + to_nano(c * 0.75) for c in costs)
    assert total == expected
    assert abs(to_usd(total) - sum(costs)) < 1e-8


async def test_an_in_memory_store_keeps_nothing_per_finished_request() -> None:
    # Its settles are never replayed (only a store that can be unavailable has a journal),
    # so they leave no once-only key behind: memory, and the periodic expiry sweep over
    # every key, would otherwise grow with every request served for a week.
    m = manager({"scope": "user", "limit_usd": 100.0})
    state = m.state
    assert isinstance(state, MemoryState)
    for _ in range(10):
        await spend(m, 0.01)
    keys = len(state._expires) + len(state._ints)
    for _ in range(100):
        await spend(m, 0.01)
    assert len(state._expires) + len(state._ints) == keys
    assert to_usd((await state.totals([m.spend_key("user:ann", calendar_bucket(
        "day", T0)[0])]))[0]) == pytest.approx(1.10)


async def test_200_concurrent_requests_never_overspend_beyond_reservations() -> None:
    m = manager({"scope": "user", "limit_usd": 0.05, "window": "hour"})
    rng = random.Random(11)
    overspend = 0.0
    admitted = 0

    async def one() -> None:
        nonlocal overspend, admitted
        cap = rng.choice([None, rng.uniform(0.0005, 0.004)])
        res = await reserve(m, cap, estimate=rng.uniform(0.0005, 0.002))
        if isinstance(res, Refusal):
            return
        admitted += 1
        await asyncio.sleep(0)
        assert res.limit_usd is not None
        cost = rng.uniform(0, res.limit_usd)  # the stream stops at its limit
        overspend += max(0.0, cost - to_usd(res.amount))
        await res.settle(cost, False, {"d": cost})

    await asyncio.gather(*(one() for _ in range(200)))
    day_spent = (await m.state.totals([m.spend_key("user:ann", calendar_bucket("hour", T0)[0])]))
    assert 5 < admitted < 200
    assert await m.state.held([m.held_key("user:ann")]) == [0]
    # A stream spends at most what it holds, so the limit is never passed.
    assert overspend == 0
    assert to_usd(day_spent[0]) <= 0.05


# --- through the router -------------------------------------------------------------------

FLEET: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated", "options": {"seed": 1, "output_tokens": 80}},
                  "script": {"kind": "simulated"}},
    "deployments": [
        {"id": "a", "provider": "sim", "model": "m-a",
         "price": {"input_per_mtok": 100, "output_per_mtok": 1000}, "quality": 0.9},
        {"id": "b", "provider": "sim", "model": "m-b",
         "price": {"input_per_mtok": 50, "output_per_mtok": 500}, "quality": 0.5},
        {"id": "s", "provider": "script", "model": "m-s",
         "price": {"input_per_mtok": 10, "output_per_mtok": 1000}},
    ],
    "tasks": {"general": {"candidates": ["a", "b"], "prefer": "quality"},
              "brief": {"candidates": ["a"], "expected_output_tokens": 5},
              "scripted": {"candidates": ["s"]}},
    "defaults": {"task": "general", "max_tokens": 200},
    "resilience": {"retry": {"attempts": 1, "initial_backoff_ms": 0, "max_backoff_ms": 0}},
}


def router(budgets: list[dict[str, Any]] | None = None, clock: Clock | None = None,
           **top: Any) -> Router:
    data = {**copy.deepcopy(FLEET), **top}
    loaded = parse_config(data, "test.yaml", env={})
    clock = clock or Clock()
    gate = BudgetManager([BudgetConfig(**b) for b in budgets or []], MemoryState(clock),
                         clock=clock, deployments=loaded.deployments)
    return Router(loaded, budgets=gate)


class Chunks:
    """A provider streaming given text chunks, then usage; counts open streams."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.open = 0
        self.settings: Any = None

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Delta]:
        self.open += 1
        try:
            for c in self.chunks:
                yield TextDelta(c)
            # Usage as the router estimates it (about 4 characters a token).
            tokens = sum((len(c) + 3) // 4 for c in self.chunks)
            yield UsageDelta(input_tokens=10, output_tokens=tokens)
            yield FinishDelta("stop")
        finally:
            self.open -= 1

    async def aclose(self) -> None:
        return None


async def events_of(r: Router, input: str = "Qualify this lead", **options: Any) -> list[Event]:
    return [ev async for ev in r.stream(input, **options)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cap=st.floats(1e-4, 0.2), sizes=st.lists(st.integers(1, 60), min_size=1, max_size=300))
async def test_cap_stops_the_stream_within_one_chunk(cap: float, sizes: list[int]) -> None:
    r = router()
    provider = Chunks(["x" * n for n in sizes])
    r.set_provider("script", provider)  # type: ignore[arg-type]
    evs = await events_of(r, task="scripted", max_cost_usd=cap, max_tokens=1)
    await r.aclose()
    done = evs[-1]
    if not isinstance(done, DoneEvent):  # the input alone would pass the cap: refused
        assert done.type == "error" and done.code == "no_route"
        return
    out_price = 1000e-6
    biggest_chunk = max((n + 3) // 4 for n in sizes) * out_price
    assert done.cost_usd <= cap + biggest_chunk + 1e-12
    assert provider.open == 0  # the upstream is closed
    full = done.cost.input_usd + sum((n + 3) // 4 for n in sizes) * out_price
    if full > cap + 1e-12:
        assert done.finish_reason == "budget" and done.usage.estimated
    spent = (await r.spend()).total_usd
    assert spent == pytest.approx(done.cost_usd, abs=1e-8)


async def test_a_budget_stops_a_running_stream_with_exceeded() -> None:
    r = router([{"scope": "user", "limit_usd": 0.03, "window": "day"}])
    first = await events_of(r, metadata={"user": "ann"}, max_tokens=10)
    assert isinstance(first[-1], DoneEvent) and first[-1].finish_reason == "length"
    # Estimated at 5 output tokens, the answer has 80: the budget's headroom stops it.
    evs = await events_of(r, metadata={"user": "ann"}, task="brief")
    done = evs[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "budget"
    budget = [e for e in evs if isinstance(e, BudgetEvent)]
    assert [(b.scope, b.level, b.limit_usd) for b in budget] == [("user:ann/day", "exceeded",
                                                                  0.03)]
    assert evs.index(budget[0]) == len(evs) - 2  # just before `done`
    report = await r.spend(scope="user:ann")
    total = first[-1].cost_usd + done.cost_usd
    assert report.budgets[0].spent_usd == pytest.approx(total, abs=1e-8)
    assert report.budgets[0].spent_usd <= 0.03 + 1000e-6 * 3  # within one chunk
    refused = (await events_of(r, metadata={"user": "ann"}))[-1]
    assert refused.type == "error" and refused.code == "budget_exceeded"
    await r.aclose()


async def test_warning_event_comes_once_through_the_stream() -> None:
    r = router([{"scope": "global", "limit_usd": 10, "window": "month", "warn_at": 0.003}])
    levels = []
    for _ in range(4):
        evs = await events_of(r, max_tokens=20)
        levels.append([e.level for e in evs if isinstance(e, BudgetEvent)])
    assert levels == [[], ["warning"], [], []]
    await r.aclose()


async def test_cancelled_stream_is_settled_exactly() -> None:
    """A caller that stops after its 7th chunk pays for the input and those 7 chunks,
    counted as the ledger counts a cut stream (about 4 characters a token, at least 1 a
    chunk). Once, the chunk the caller stopped at was shown but not billed."""
    r = router([{"scope": "user", "limit_usd": 5}])
    provider = r.provider("sim")
    whole = (await events_of(r, metadata={"user": "bob"}, max_tokens=100))[-1]
    assert isinstance(whole, DoneEvent)
    stream = r.stream("Qualify this lead", metadata={"user": "ann"}, max_tokens=100)
    shown: list[str] = []
    async for ev in stream:
        if isinstance(ev, TextEvent):
            shown.append(ev.delta)
            if len(shown) == 7:
                break
    await stream.aclose()
    assert getattr(provider, "open_streams", 0) == 0
    report = await r.spend(scope="user:ann")
    assert report.budgets[0].reserved_usd == 0
    output = sum(estimate_tokens(d) or 1 for d in shown)
    expected = cost_of(r.loaded.deployments["a"].price, whole.usage.input_tokens, 0, output)
    assert report.budgets[0].spent_usd == pytest.approx(expected.total_usd, abs=1e-9)
    assert report.scopes[0].by_deployment.keys() == {"a"}
    await r.aclose()


async def test_failed_over_attempts_are_in_done_cost_and_in_spend() -> None:
    data = copy.deepcopy(FLEET)
    data["providers"]["cut"] = {"kind": "simulated",
                                "options": {"seed": 1, "output_tokens": 80,
                                            "fail_after_tokens": 12}}
    data["deployments"][0]["provider"] = "cut"
    gate = BudgetManager([BudgetConfig(scope="global", limit_usd=5)])
    r2 = Router(parse_config(data, "t.yaml", env={}), budgets=gate)
    evs = await events_of(r2, max_tokens=100)
    done = evs[-1]
    assert isinstance(done, DoneEvent) and done.attempts == 2
    report = await r2.spend()
    by_dep = report.scopes[0].by_deployment
    assert by_dep.keys() == {"a", "b"} and by_dep["a"] > 0
    assert sum(by_dep.values()) == pytest.approx(done.cost_usd, abs=1e-8)
    assert report.total_usd == pytest.approx(done.cost_usd, abs=1e-8)
    await r2.aclose()


async def test_the_losing_hedge_is_paid_for() -> None:
    data = copy.deepcopy(FLEET)
    data["providers"]["slow"] = {"kind": "simulated",
                                 "options": {"seed": 1, "output_tokens": 40, "ttft_ms": 2000}}
    data["deployments"][0]["provider"] = "slow"
    data["resilience"]["hedge"] = {"enabled": True, "after_ms": 5}
    r = Router(parse_config(data, "t.yaml", env={}), budgets=BudgetManager())
    evs = await events_of(r, max_tokens=50)
    done = evs[-1]
    assert isinstance(done, DoneEvent) and done.deployment == "b"
    report = await r.spend()
    by_dep = report.scopes[0].by_deployment
    assert by_dep.keys() == {"a", "b"} and by_dep["a"] > 0  # the loser's input counts
    assert report.total_usd == pytest.approx(done.cost_usd, abs=1e-8)
    await r.aclose()


def test_router_builds_its_budget_manager_from_config() -> None:
    data = {**copy.deepcopy(FLEET), "budgets": [{"scope": "user", "limit_usd": 2}]}
    r = Router(parse_config(data, "t.yaml", env={}))
    assert isinstance(r.budgets, BudgetManager)
    assert [(b.scope, to_usd(b.limit)) for b in r.budgets.budgets] == [("user", 2.0)]



# --- the cap across failover with continuation ---------------------------------------------


class Script:
    """A provider of given chunks, cut after `cut_at` (ProviderError). It bills its input
    as the router estimates it (every message: the partial answer of a continuation too),
    up front when `usage_first` (as Anthropic does); asked to continue, it first repeats
    the last `repeat` characters of the partial answer (which the router's splice drops)."""

    def __init__(self, chunks: list[str], cut_at: int | None = None, usage_first: bool = False,
                 repeat: int = 0) -> None:
        self.chunks, self.cut_at = chunks, cut_at
        self.usage_first, self.repeat = usage_first, repeat
        self.calls = 0
        self.open = 0
        self.biggest = 0  # the largest chunk streamed, in tokens (shown or not)
        self.settings: Any = None

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        return self._gen(request)

    async def _gen(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        self.calls += 1
        self.open += 1
        try:
            input_tokens = sum(4 + (len(str(m.get("content") or "")) + 3) // 4
                               for m in request.messages)
            if self.usage_first:
                yield UsageDelta(input_tokens=input_tokens, output_tokens=0)
            partial = next((str(m["content"]) for m in reversed(request.messages)
                            if m["role"] == "assistant"), "")
            chunks = ([partial[-self.repeat:]] if partial and self.repeat else []) + self.chunks
            for i, chunk in enumerate(chunks):
                if i == self.cut_at:
                    raise ProviderError("provider_error", "cut")
                self.biggest = max(self.biggest, (len(chunk) + 3) // 4)
                yield TextDelta(chunk)
                await asyncio.sleep(0)
            tokens = sum((len(c) + 3) // 4 for c in chunks)
            yield UsageDelta(input_tokens=input_tokens, output_tokens=tokens)
            yield FinishDelta("stop")
        finally:
            self.open -= 1

    async def aclose(self) -> None:
        return None


def two_scripts(first: Script, second: Script, in2: float = 50.0) -> Router:
    data = {
        "providers": {"p1": {"kind": "simulated"}, "p2": {"kind": "simulated"}},
        "deployments": [
            {"id": "d1", "provider": "p1", "model": "m1",
             "price": {"input_per_mtok": 1, "output_per_mtok": 100}},
            {"id": "d2", "provider": "p2", "model": "m2",
             "price": {"input_per_mtok": in2, "output_per_mtok": 100}}],
        "tasks": {"t": {"candidates": ["d1", "d2"], "prefer": "cost",
                        "expected_output_tokens": 10}},
        "defaults": {"task": "t"},
        "resilience": {"retry": {"attempts": 1, "initial_backoff_ms": 0, "max_backoff_ms": 0}},
    }
    r = Router(parse_config(data, "t.yaml", env={}), budgets=BudgetManager())
    r.set_provider("p1", first)  # type: ignore[arg-type]
    r.set_provider("p2", second)  # type: ignore[arg-type]
    return r


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cap=st.floats(0.002, 0.05), sizes=st.lists(st.integers(1, 40), min_size=2, max_size=80),
       cut=st.integers(1, 79), usage_first=st.booleans(), repeat=st.sampled_from([0, 30, 300]),
       in2=st.floats(1, 200))
async def test_cap_holds_within_one_chunk_across_failover(
        cap: float, sizes: list[int], cut: int, usage_first: bool, repeat: int,
        in2: float) -> None:
    chunks = ["".join(random.Random(n).choices("abcdefgh ", k=n)) for n in sizes]
    first = Script(chunks, cut_at=min(cut, len(chunks) - 1))
    second = Script(chunks, usage_first=usage_first, repeat=repeat)
    r = two_scripts(first, second, in2)
    evs = await events_of(r, max_cost_usd=cap)
    await r.aclose()
    last = evs[-1]
    if isinstance(last, ErrorEvent) and last.code == "no_route":
        return  # the estimate alone is above the cap
    spent = (await r.spend()).total_usd  # also what a failed request cost
    if isinstance(last, DoneEvent):
        assert spent == pytest.approx(last.cost_usd, abs=1e-8)
    # One chunk: the largest the caller got (a splice may join several) or the provider sent
    # (a repeat the splice dropped is billed unseen).
    shown = max(((len(e.delta) + 3) // 4 for e in evs if isinstance(e, TextEvent)), default=0)
    chunk = max(shown, first.biggest, second.biggest)
    assert spent <= cap + chunk * 100e-6 + 1e-12


async def test_a_resume_the_cap_cannot_pay_for_is_not_started() -> None:
    first = Script(["abcd"] * 80, cut_at=60)
    second = Script(["abcd"] * 80)
    r = two_scripts(first, second, in2=100.0)
    evs = await events_of(r, max_cost_usd=0.01)
    await r.aclose()
    done = evs[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "budget"
    assert [e.type for e in evs].count("start") == 1 and second.calls == 0
    assert done.cost_usd <= 0.01


@pytest.mark.parametrize(("cap", "starts"), [(0.1, 1), (0.15, 1), (0.2, 2), (0.3, 2)])
async def test_a_hedge_starts_only_when_the_cap_can_pay_both_inputs(cap: float,
                                                                   starts: int) -> None:
    price = {"input_per_mtok": 500, "output_per_mtok": 100}
    data = {
        "providers": {"slow": {"kind": "simulated",
                               "options": {"seed": 1, "output_tokens": 200, "ttft_ms": 150}},
                      "fast": {"kind": "simulated", "options": {"seed": 1, "output_tokens": 200}}},
        "deployments": [{"id": "a", "provider": "slow", "model": "m", "price": price},
                        {"id": "b", "provider": "fast", "model": "m", "price": price}],
        "tasks": {"t": {"candidates": ["a", "b"], "prefer": "quality",
                        "expected_output_tokens": 10}},
        "defaults": {"task": "t"},
        "resilience": {"hedge": {"enabled": True, "after_ms": 5}, "retry": {"attempts": 1}},
    }
    loaded = parse_config(data, "h.yaml", env={})
    r = Router(loaded, budgets=BudgetManager(deployments=loaded.deployments))
    # ~180 input tokens at $500/Mtok: each attempt bills ~$0.09 before its first token.
    evs = await events_of(r, input="Qualify this lead with a long prompt " * 20,
                          max_cost_usd=cap)
    await r.aclose()
    done = evs[-1]
    assert isinstance(done, DoneEvent)
    assert [e.type for e in evs].count("start") == starts
    shown = max((len(e.delta) + 3) // 4 for e in evs if isinstance(e, TextEvent))
    assert done.cost_usd <= cap + shown * 100e-6 + 1e-12
