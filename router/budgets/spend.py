"""Spend reports: what `Router.spend()` returns and `llm-router spend` prints.

Spend is booked at the end of every request (budgets configured or not) for each scope the
request falls under (`global`, `key:…`, `user:…`, `session:…`, `task:…`), in the UTC hour
it ended in (kept 400 days; days and months are sums of hours), split per deployment.
Failed, retried, cancelled and hedged attempts are included: it is the same number as
`done.cost_usd`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from router.budgets.manager import BudgetManager, Line
from router.budgets.windows import calendar_bucket
from router.state.store import TOTAL, to_usd

if TYPE_CHECKING:
    from rich.table import Table


ReportWindow = Literal["hour", "day", "month"]


class ScopeSpend(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    scope: str
    spent_usd: float
    by_deployment: dict[str, float]


class BudgetStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    scope: str  # e.g. user:alice
    window: str  # as configured: day, rolling:24h, …
    limit_usd: float
    spent_usd: float
    reserved_usd: float  # held by requests in flight
    remaining_usd: float
    warn_at: float | None


class SpendReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    window: ReportWindow
    period: str  # the calendar window reported, e.g. 2026-11-22 (UTC)
    total_usd: float  # the global scope's spend in the period
    scopes: list[ScopeSpend]
    budgets: list[BudgetStatus]


def _matches(scope: str, wanted: str | None) -> bool:
    """`user` selects every user, `user:alice` one of them, `user:<key>` the key's users."""
    return wanted is None or scope == wanted or scope.startswith((wanted + ":", wanted + "/"))


async def build_report(manager: BudgetManager, scope: str | None = None,
                       window: ReportWindow = "day") -> SpendReport:
    now = manager.clock()
    bucket, _ = calendar_bucket(window, now)
    head = manager.spend_key("", "")[:-1]  # "<prefix>spend|"
    counters = await manager.state.scan(head, "")
    # (scope, bucket) -> counter fields
    parsed: dict[tuple[str, str], dict[str, int]] = {}
    for key, fields in counters.items():
        sc, _, bk = key[len(head):].rpartition("|")
        parsed[(sc, bk)] = fields
    # Spend is booked per UTC hour: a day or a month is the sum of its hours.
    hours = "h" + bucket[1:]
    sums: dict[str, dict[str, int]] = {}
    for (sc, bk), fields in parsed.items():
        if bk.startswith(hours) and _matches(sc, scope):
            acc = sums.setdefault(sc, {})
            for f, n in fields.items():
                acc[f] = acc.get(f, 0) + n
    rows = [
        ScopeSpend(scope=sc, spent_usd=to_usd(fields.get(TOTAL, 0)),
                   by_deployment={d: to_usd(n) for d, n in sorted(fields.items()) if d != TOTAL})
        for sc, fields in sorted(sums.items())
    ]
    total = sum(fields.get(TOTAL, 0) for (sc, bk), fields in parsed.items()
                if sc == "global" and bk.startswith(hours))
    budgets = await _budget_statuses(manager, parsed, scope, now)
    return SpendReport(window=window, period=bucket[1:], total_usd=to_usd(total), scopes=rows,
                       budgets=budgets)


async def _budget_statuses(manager: BudgetManager, parsed: dict[tuple[str, str], dict[str, int]],
                           scope: str | None, now: float) -> list[BudgetStatus]:
    lines: list[tuple[Line, tuple[str, ...]]] = []
    # Scopes with requests in flight have a row too, spend or not.
    head = manager.held_key("")
    leased = {k[len(head):] for k in await manager.state.scan_held(head)} if (
        manager.budgets) else set()
    for budget in manager.budgets:
        buckets = budget.window.spent_buckets(now)
        kind = budget.scope
        values = {sc for sc, bk in parsed if bk in buckets and (
            sc == kind or sc.startswith(kind + ":"))}
        values |= {sc for sc in leased if sc == kind or sc.startswith(kind + ":")}
        if kind in ("global",) or kind.startswith("task:"):
            values.add(kind)
        for value in sorted(values):
            if _matches(value, scope):
                lines.append((Line(budget, value), buckets))
    held = await manager.state.held([manager.held_key(ln.scope) for ln, _ in lines])
    out = []
    for (ln, buckets), h in zip(lines, held, strict=True):
        spent = sum(parsed.get((ln.scope, b), {}).get(TOTAL, 0) for b in buckets)
        limit = ln.budget.limit
        out.append(BudgetStatus(
            scope=ln.scope, window=ln.budget.window_text, limit_usd=to_usd(limit),
            spent_usd=to_usd(spent), reserved_usd=to_usd(h),
            remaining_usd=to_usd(max(0, limit - spent - h)), warn_at=ln.budget.warn_at))
    return out


def report_tables(report: SpendReport) -> list[Table]:
    """The report as tables: spend per scope and deployment, then the budgets."""
    from rich.table import Table  # only the CLI renders: keeps `import router` light

    spend = Table(title=f"spend {report.window} {report.period} (UTC): total "
                  f"${report.total_usd:.6f}", title_justify="left", min_width=72)
    for col in ("scope", "deployment", "spent $"):
        spend.add_column(col, justify="right" if col.endswith("$") else "left")
    for row in report.scopes:
        spend.add_row(row.scope, "(all)", f"{row.spent_usd:.6f}")
        for dep, usd in row.by_deployment.items():
            spend.add_row("", dep, f"{usd:.6f}")
    tables = [spend]
    if report.budgets:
        budgets = Table(title="budgets", title_justify="left")
        for col in ("scope", "window", "limit $", "spent $", "reserved $", "remaining $",
                    "used", "warn at"):
            budgets.add_column(col, justify="left" if col in ("scope", "window") else "right")
        for b in report.budgets:
            budgets.add_row(b.scope, b.window, f"{b.limit_usd:.2f}", f"{b.spent_usd:.6f}",
                            f"{b.reserved_usd:.6f}", f"{b.remaining_usd:.6f}",
                            f"{b.spent_usd / b.limit_usd:.0%}",
                            "-" if b.warn_at is None else f"{b.warn_at:.0%}")
        tables.append(budgets)
    return tables


__all__ = ["BudgetStatus", "ScopeSpend", "SpendReport", "build_report",
           "report_tables"]
