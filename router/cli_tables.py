"""The CLI's tables and one-line summaries: a route's candidates, a finished answer, a
deployment's live estimate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from router.events import DoneEvent, RouteEvent
from router.routing.policy import RouteDecision


def _route_table(candidates: list[tuple[str, bool, str | None, float, float, float]],
                 title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("deployment", "eligible", "reason", "est. cost $", "est. TTFT ms",
                "est. latency ms"):
        table.add_column(col, justify="right" if col.startswith("est") else "left")
    for dep, eligible, reason, cost, ttft, latency in candidates:
        table.add_row(dep, "yes" if eligible else "no", reason or "", f"{cost:.6f}",
                      f"{ttft:.0f}", f"{latency:.0f}")
    return table


def event_table(ev: RouteEvent) -> Table:
    rows = [(c.deployment, c.eligible, c.reason, c.estimated_cost_usd, c.estimated_ttft_ms,
             c.estimated_latency_ms) for c in ev.candidates]
    return _route_table(rows, f"route: {ev.deployment or 'none'} — {ev.reason}")


def decision_table(d: RouteDecision) -> Table:
    chosen = d.chosen
    rows = [(e.deployment.id, e.eligible,
             e.reason if not e.eligible else ("chosen" if e is chosen else "eligible"),
             e.cost_usd, e.ttft_ms, e.latency_ms) for e in d.candidates]
    return _route_table(rows, f"route: {chosen.deployment.id if chosen else 'none'} — {d.reason}")


def summary(done: DoneEvent) -> str:
    lat, u = done.latency, done.usage
    ttft = f"{lat.ttft_ms:.0f} ms" if lat.ttft_ms is not None else "-"
    rate = f"{lat.tokens_per_s:.0f} tok/s" if lat.tokens_per_s else "-"
    est = " (estimated)" if u.estimated else ""
    return (f"{done.deployment} ({done.provider}/{done.model}) · TTFT {ttft} · total "
            f"{lat.total_ms:.0f} ms · {rate} · tokens in {u.input_tokens} / out "
            f"{u.output_tokens}{est} · cost ${done.cost_usd:.6f} · finish {done.finish_reason}"
            f" · attempts {done.attempts}")


def estimate_text(e: Mapping[str, Any]) -> str:
    """One line of a deployment's live estimate: mean and budget-quantile TTFT, error rate,
    evidence (observations, decayed weight, age), requests in flight and the slowdown
    learnt per request in flight."""
    age = "never observed" if e["age_s"] is None else f"{e['age_s']:.0f} s ago"
    read_at = e.get("level")
    level = "" if read_at in (None, e["quantile"]) else f" (read at p{100 * read_at:.0f})"
    return (f"TTFT {e['ttft_ms']:.0f} ms, p{100 * e['quantile']:g} {e['ttft_q_ms']:.0f} ms"
            f"{level}, "
            f"err {100 * e['error_rate']:.1f}%, n={e['samples']} (w {e['weight']:.1f}), "
            f"{age}, {e['inflight']} in flight{_slope_text(e.get('load_slope'))}")


def _slope_text(slope: float | None) -> str:
    return "" if slope is None else f" (+{100 * slope:.0f}% TTFT each)"
