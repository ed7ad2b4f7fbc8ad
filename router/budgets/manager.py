"""Budgets per scope and window: reserve at request start, settle to the actual cost at the end.

A budget is `{scope, limit_usd, window, warn_at}`. Its scope is `key`, `user` or `session`
(read from the request's `metadata`), `task:<name>` or `global`; each distinct value
(`user:alice`, `user:bob`) has its own spend. Windows are calendar-aligned in UTC (`hour`,
`day`, `month`: spend starts again from zero at the top of the hour, at midnight UTC, on the
1st) or rolling (`rolling:24h`: the spend of the last 24 hours, kept in 60 buckets, so a
cent drops out at most 1/60 of the window late — never early).

At start a request reserves its cap (or, without one, its estimated cost) against every
budget it falls under; when one cannot cover it (spend plus in-flight reservations plus
this request would pass the limit) the request is refused with `budget_exceeded`. An
uncapped request holds more than its estimate when there is room: up to twice the worst
case of its candidates (input plus its output limit). The stream may spend what it holds
and no more (stopped within one chunk), so concurrent requests never pass a limit
together; a stream stopped by a budget ends with `finish_reason: budget` and a `budget`
event `exceeded`. At the end the reservation is released and the actual cost booked, per
deployment, in one atomic step; the first settle that takes a budget past `warn_at` gets
the `warning`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.budgets.gate import BudgetNotice, Refusal, Reservation
from router.budgets.windows import HOUR, Window
from router.config.schema import StateConfig
from router.state.store import (
    Booking,
    LimitCheck,
    StateBackend,
    Watch,
    create_state,
    to_nano,
    to_usd,
)

METADATA_SCOPES = ("key", "user", "session")
UNATTRIBUTED = "(unattributed)"

if TYPE_CHECKING:
    from router.config.schema import BudgetConfig, Deployment, LoadedConfig
    from router.request import PreparedRequest

@dataclass(frozen=True, slots=True)
class Budget:
    """A configured budget, parsed."""

    scope: str
    limit: int  # nano-USD
    window: Window
    window_text: str
    warn_at: float | None

    @property
    def ident(self) -> str:
        return f"{self.scope}/{self.window_text}/{self.limit}"

    def scope_value(self, scopes: Mapping[str, str]) -> str | None:
        """The value of this budget's scope for a request (`user:alice`), or None when the
        request does not fall under it."""
        if self.scope.startswith("task:"):
            return self.scope if scopes.get("task") == self.scope else None
        return scopes.get(self.scope)


def request_scopes(request: PreparedRequest) -> dict[str, str]:
    """Scope kind -> value for a request: `global`, and `key`/`user`/`session` from its
    metadata, `task` from its task."""
    scopes = {"global": "global"}
    meta = request.metadata
    for kind in METADATA_SCOPES:
        value = meta.get(kind)
        if value is not None and value != "":
            scopes[kind] = f"{kind}:{value}"
    if request.task:
        scopes["task"] = f"task:{request.task}"
    return scopes


@dataclass(frozen=True, slots=True)
class Line:
    """One budget a request falls under."""

    budget: Budget
    scope: str  # e.g. user:alice

    @property
    def label(self) -> str:
        return f"{self.scope}/{self.budget.window_text}"


class BudgetManager:
    """The budget gate for configured budgets; also books every request's spend for
    reporting (per scope, UTC hour and deployment), budgets or not."""

    def __init__(self, budgets: Sequence[BudgetConfig] = (), state: StateBackend | None = None,
                 *, prefix: str = "llmr:", clock: Callable[[], float] = time.time,
                 hold_ttl_s: int = 3600,
                 deployments: Mapping[str, Deployment] | None = None) -> None:
        self.budgets = [
            Budget(b.scope, to_nano(b.limit_usd), Window.parse(b.window), b.window, b.warn_at)
            for b in budgets]
        self.state: StateBackend = state or create_state(StateConfig(), clock)
        self.prefix = prefix
        self.clock = clock
        # In-flight reservations expire after this long should a router die mid-request.
        self.hold_ttl_s = hold_ttl_s
        # Prices and output limits, for an uncapped request's worst case (see `reserve`).
        self.deployments = deployments

    @classmethod
    def from_config(cls, loaded: LoadedConfig,
                    clock: Callable[[], float] = time.time) -> BudgetManager:
        cfg = loaded.config
        return cls(cfg.budgets, create_state(cfg.state, clock), prefix=cfg.state.prefix,
                   clock=clock, deployments=loaded.deployments)

    # --- keys ---------------------------------------------------------------------------

    def spend_key(self, scope: str, bucket: str) -> str:
        return f"{self.prefix}spend|{scope}|{bucket}"

    def held_key(self, scope: str) -> str:
        return f"{self.prefix}held|{scope}"

    def _spent_keys(self, line: Line, now: float) -> tuple[str, ...]:
        return tuple(self.spend_key(line.scope, b) for b in line.budget.window.spent_buckets(now))

    # --- the gate -----------------------------------------------------------------------

    def lines(self, scopes: Mapping[str, str]) -> list[Line]:
        out = []
        for budget in self.budgets:
            value = budget.scope_value(scopes)
            if value is not None:
                out.append(Line(budget, value))
        return out

    async def reserve(self, request: PreparedRequest, estimate_usd: float,
                      cap_usd: float | None) -> Reservation | Refusal:
        scopes = request_scopes(request)
        lines = self.lines(scopes)
        amount = to_nano(cap_usd if cap_usd is not None else estimate_usd)
        if not lines:
            return BudgetReservation(self, scopes, [], 0, cap_usd, None)
        now = self.clock()
        checks = [LimitCheck(self.held_key(ln.scope), self._spent_keys(ln, now), ln.budget.limit)
                  for ln in lines]
        # Without a cap, hold the worst case (twice the most any candidate can bill for the
        # request's input and output limit) as far as the budgets have room for it, and at
        # least the estimate: the stream may spend what it holds and no more, so concurrent
        # requests can never together pass a limit.
        worst = None if cap_usd is not None else self._worst_case(request, estimate_usd)
        adm = await self.state.reserve(checks, amount, self.hold_ttl_s,
                                       None if worst is None else to_nano(worst))
        if adm.failed is not None:
            ln = lines[adm.failed]
            spent, held = adm.spent[adm.failed], adm.held[adm.failed]
            return Refusal(ln.label, (
                f"budget {ln.label}: spent ${to_usd(spent):.6f} of ${to_usd(ln.budget.limit):.6f}"
                f" (${to_usd(held):.6f} more reserved by requests in flight); this request "
                f"needs ${to_usd(amount):.6f}"))
        if cap_usd is not None:
            return BudgetReservation(self, scopes, lines, adm.reserved, cap_usd, None)
        # The budget with the least room is the one that stops the stream, if one does.
        tight = min(range(len(lines)), key=lambda i: lines[i].budget.limit - adm.spent[i]
                    - adm.held[i])
        return BudgetReservation(self, scopes, lines, adm.reserved, to_usd(adm.reserved),
                                 lines[tight].label)

    def _worst_case(self, request: PreparedRequest, estimate_usd: float) -> float | None:
        if self.deployments is None:
            return None
        from router.routing.cost import estimate_cost  # not at the top: config imports this module

        c = request.constraints
        worst = estimate_usd
        for dep_id in c.candidates:
            dep = self.deployments.get(dep_id)
            if dep is None:
                continue
            out = request.max_tokens or dep.default_max_tokens
            if dep.max_output_tokens is not None:
                out = min(out, dep.max_output_tokens)
            worst = max(worst, estimate_cost(dep.price, c.input_tokens, out))
        # Twice: until usage arrives, output is counted at ~4 characters a token, which
        # overcounts short words; the hold must not stop an answer within its max_tokens.
        return 2 * worst

    async def settle(self, res: BudgetReservation, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None) -> list[BudgetNotice]:
        now = self.clock()
        parts = {k: to_nano(v) for k, v in (by_deployment or {}).items() if v > 0}
        if not parts and cost_usd > 0:
            parts = {UNATTRIBUTED: to_nano(cost_usd)}
        # Every scope's UTC hour (reports sum hours into days and months), and the window
        # of each budget the request falls under.
        hour, hour_ttl = HOUR.booking(now)
        targets = {self.spend_key(scope, hour): hour_ttl for scope in res.scopes.values()}
        for ln in res.lines:
            if ln.budget.window != HOUR:
                bucket, ttl = ln.budget.window.booking(now)
                targets[self.spend_key(ln.scope, bucket)] = ttl
        bookings = [Booking(key, dep, n, ttl) for key, ttl in targets.items()
                    for dep, n in parts.items()]
        watches = []
        for ln in res.lines:
            flag, ttl = ln.budget.window.flag(now)
            warn = ln.budget.warn_at
            watches.append(Watch(
                self._spent_keys(ln, now),
                None if warn is None else math.ceil(ln.budget.limit * warn),
                f"{self.prefix}warned|{ln.budget.ident}|{ln.scope}|{flag}", ttl))
        held = [self.held_key(ln.scope) for ln in res.lines]
        results = await self.state.settle(held, res.amount, bookings, watches)
        notices = []
        for ln, r in zip(res.lines, results, strict=True):
            limit = to_usd(ln.budget.limit)
            if r.crossed:
                notices.append(BudgetNotice(ln.label, to_usd(r.spent), limit, "warning"))
            if stopped and ln.label == res.limit_scope:
                notices.append(BudgetNotice(ln.label, to_usd(r.spent), limit, "exceeded"))
        return notices

    async def aclose(self) -> None:
        await self.state.aclose()


class BudgetReservation:
    """What one request holds against its budgets until it settles (once)."""

    __slots__ = ("amount", "limit_scope", "limit_usd", "lines", "manager", "scopes", "settled")

    def __init__(self, manager: BudgetManager, scopes: Mapping[str, str], lines: list[Line],
                 amount: int, limit_usd: float | None, limit_scope: str | None) -> None:
        self.manager = manager
        self.scopes = scopes
        self.lines = lines
        self.amount = amount
        self.limit_usd = limit_usd
        self.limit_scope = limit_scope
        self.settled = False

    async def settle(self, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None = None) -> Sequence[BudgetNotice]:
        if self.settled:
            return ()
        self.settled = True
        return await self.manager.settle(self, cost_usd, stopped, by_deployment)
