"""Spend reports: per scope and deployment in the current UTC hour/day/month, scope filters,
budget states with in-flight reservations, and the rendered tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from router.budgets.manager import BudgetManager, BudgetReservation
from router.budgets.spend import build_report, report_tables
from router.config import BudgetConfig
from router.state.store import MemoryState

T0 = datetime(2026, 5, 20, 10, 30, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Req:
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str | None = None


def manager(clock: Clock, *budgets: dict[str, Any]) -> BudgetManager:
    return BudgetManager([BudgetConfig(**b) for b in budgets], MemoryState(clock), clock=clock)


async def book(m: BudgetManager, by_dep: dict[str, float], **meta: str) -> None:
    res = await m.reserve(Req(dict(meta), "qualification"), 0.0, sum(by_dep.values()))  # type: ignore[arg-type]
    assert isinstance(res, BudgetReservation)
    await res.settle(sum(by_dep.values()), False, by_dep)


async def test_report_splits_spend_by_scope_and_deployment() -> None:
    clock = Clock()
    m = manager(clock)
    await book(m, {"fast": 0.25, "strong": 1.0}, user="ann", key="k1")
    await book(m, {"fast": 0.5}, user="bob")
    report = await build_report(m, window="day")
    assert (report.window, report.period, report.total_usd) == ("day", "2026-05-20", 1.75)
    rows = {r.scope: (r.spent_usd, r.by_deployment) for r in report.scopes}
    assert rows == {
        "global": (1.75, {"fast": 0.75, "strong": 1.0}),
        "key:k1": (1.25, {"fast": 0.25, "strong": 1.0}),
        "task:qualification": (1.75, {"fast": 0.75, "strong": 1.0}),
        "user:k1/ann": (1.25, {"fast": 0.25, "strong": 1.0}),
        "user:bob": (0.5, {"fast": 0.5}),
    }
    users = await build_report(m, scope="user")
    # A keyed request's user is the key's own (user:<key>/<user>); `user:k1` selects them.
    assert [r.scope for r in users.scopes] == ["user:bob", "user:k1/ann"]
    ann = await build_report(m, scope="user:k1/ann")
    assert [r.scope for r in ann.scopes] == ["user:k1/ann"]
    assert [r.scope for r in (await build_report(m, scope="user:k1")).scopes] == [
        "user:k1/ann"]
    assert (await build_report(m, scope="user:an")).scopes == []


async def test_report_windows_follow_the_utc_calendar() -> None:
    clock = Clock()
    m = manager(clock)
    await book(m, {"fast": 0.1})
    clock.now += 3600  # 11:30: a new hour, the same day and month
    await book(m, {"fast": 0.2})
    hour, day, month = [await build_report(m, window=w) for w in ("hour", "day", "month")]
    assert (hour.period, hour.total_usd) == ("2026-05-20T11", pytest.approx(0.2))
    assert (day.period, day.total_usd) == ("2026-05-20", pytest.approx(0.3))
    assert (month.period, month.total_usd) == ("2026-05", pytest.approx(0.3))


async def test_budget_states_show_spend_reservations_and_headroom() -> None:
    clock = Clock()
    m = manager(clock, {"scope": "user", "limit_usd": 2.0, "window": "day", "warn_at": 0.5},
                {"scope": "global", "limit_usd": 100, "window": "rolling:1h"})
    await book(m, {"fast": 0.5}, user="ann")
    in_flight = await m.reserve(Req({"user": "ann"}), 0.1, 0.3)  # type: ignore[arg-type]
    assert isinstance(in_flight, BudgetReservation)
    report = await build_report(m)
    states = {(b.scope, b.window): b for b in report.budgets}
    ann = states[("user:ann", "day")]
    assert (ann.limit_usd, ann.spent_usd, ann.reserved_usd, ann.warn_at) == (2.0, 0.5, 0.3, 0.5)
    assert ann.remaining_usd == pytest.approx(1.2)
    glob = states[("global", "rolling:1h")]
    assert (glob.spent_usd, glob.reserved_usd) == (0.5, 0.3)
    clock.now += 3600 + 61  # the rolling hour has passed; the calendar day has not
    later = {(b.scope, b.window): b for b in (await build_report(m)).budgets}
    assert later[("global", "rolling:1h")].spent_usd == 0
    assert later[("user:ann", "day")].spent_usd == 0.5


async def test_tables_show_every_scope_deployment_and_budget() -> None:
    clock = Clock()
    m = manager(clock, {"scope": "user", "limit_usd": 2.0})
    await book(m, {"fast": 0.5, "strong": 0.25}, user="ann")
    console = Console(record=True, width=200)
    for table in report_tables(await build_report(m, scope="user")):
        console.print(table)
    text = console.export_text()
    assert "spend day 2026-05-20 (UTC): total $0.750000" in text
    for cell in ("user:ann", "fast", "0.500000", "strong", "0.250000", "2.00", "38%"):
        assert cell in text
